"""The shared-context engine against the plain definition: every REF and ALT window read whole.

Stretches of real lambda phage DNA with single sites (the default context: one variant, its REF and
ALT rows continued from one stop) and with several sites (a shared reference pass with stops every
few bases), SNVs, MNVs, insertions, deletions, N alleles, sites at a stretch's first and last bases,
and batch sizes that cut the work into single rows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dnamamba.inference import llr
from dnamamba.inference.llr import Site, Stretch, Window, plain_log_likelihoods, stretch_log_likelihoods

from support import LAMBDA, tiny_model


def _whole(model, stretches):
    return plain_log_likelihoods(model, stretches).result()


def _assert_same(got, expected):
    assert len(got) == len(expected)
    for g_sites, e_sites in zip(got, expected):
        assert len(g_sites) == len(e_sites)
        for g, e in zip(g_sites, e_sites):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-4)
            assert np.all(g <= 0)


@pytest.fixture(scope="module")
def stretches():
    from dnamamba.data.fasta import FastaFile, demo_genome_path

    with FastaFile(demo_genome_path()) as fasta:
        seq = fasta.fetch(LAMBDA, 20000, 20600)
        tail = fasta.fetch(LAMBDA, fasta.lengths[LAMBDA] - 90, fasta.lengths[LAMBDA])
    return [
        Stretch(seq[:81], [Site(40, 1, [b"A", b"TTG"], 81)]),  # one SNV and an insertion at one site
        Stretch(seq[:50], [Site(0, 1, [b"C"], 50)]),  # no left context at all
        Stretch(seq[:30], [Site(29, 1, [b"G", b"NA"], 30)]),  # the last base: the ALT alone is scored
        Stretch(seq[100:180], [Site(20, 5, [b"G"], 80), Site(20, 1, [b"T"], 60)]),  # two records, one start
        Stretch(seq, [Site(5, 1, [b"G"], 60), Site(100, 3, [b"A", b"CATG"], 200), Site(101, 1, [b"T"], 150),
                      Site(390, 2, [b"G"], 400), Site(0, 1, [b"T"], 30), Site(597, 3, [b"ACG"], 600)]),
        Stretch(seq[:300], [Site(120, 1, [b"g"], 300), Site(260, 1, [b"N"], 300), Site(299, 1, [b"A"], 300)]),
        Stretch(tail, [Site(10, 1, [b"C"], 90), Site(80, 10, [b"A"], 90)]),  # a deletion to the contig end
    ]


@pytest.mark.parametrize("batch_size, stop_every", [(64, 16), (1, 7), (3, 64), (5, 1), (2, 1000)])
def test_shared_equals_whole_windows(stretches, batch_size, stop_every):
    model = tiny_model()
    got = stretch_log_likelihoods(model, stretches, batch_size=batch_size, stop_every=stop_every)
    _assert_same(got, _whole(model, stretches))


def test_reverse_strand_stretches(stretches):
    """The same on reverse-complemented stretches, where the shared prefix is the complemented right flank."""
    model = tiny_model(seed=1)
    rc = []
    for s in stretches:
        n = len(s.seq)
        rc.append(Stretch(llr.reverse_complement(s.seq),
                          [Site(n - site.start - site.ref_len, site.ref_len,
                                [llr.reverse_complement(a) for a in site.alts], n) for site in s.sites]))
    _assert_same(stretch_log_likelihoods(model, rc, batch_size=4, stop_every=32), _whole(model, rc))


def test_a_long_pass_is_read_in_pieces(monkeypatch, lambda_fasta):
    """A reference pass longer than one call's share is cut into several calls with the state carried."""
    monkeypatch.setattr(llr, "_PIECE_TOKENS", 97)
    monkeypatch.setattr(llr, "_LOGSOFTMAX_POSITIONS", 50)  # and the fp32 log-softmax in many row chunks
    seq = lambda_fasta.fetch(LAMBDA, 0, 1500)
    stretch = [Stretch(seq, [Site(700, 1, [b"A"], 1400), Site(1200, 1, [b"C", b"GT"], 1500)]),
               Stretch(seq[:900], [Site(850, 1, [b"T"], 900)])]
    model = tiny_model()
    _assert_same(stretch_log_likelihoods(model, stretch, batch_size=2, stop_every=100), _whole(model, stretch))


def test_fused_path_states_carry_too(monkeypatch, stretches):
    """On the fused path (the GPU default; here its Triton kernels under TRITON_INTERPRET=1) the states the
    engine saves, gathers and continues from give the sums of whole windows."""
    from dnamamba.model import MambaConfig, MambaLM

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=8, fused=True)).eval()
    few = [stretches[0], stretches[1], Stretch(stretches[4].seq[:120], [Site(5, 1, [b"G"], 60),
                                                                        Site(70, 3, [b"A"], 120)])]
    _assert_same(stretch_log_likelihoods(model, few, batch_size=4, stop_every=16), _whole(model, few))


def test_the_row_a_site_continues_from(stretches):
    """Rows start at the stop before their site: exactly one base before it for a single-site stretch,
    at a multiple of stop_every in a shared pass, and at the stretch start with no context."""
    plan, _ = llr._plan_pass(Stretch(b"ACGTACGTAC", [Site(6, 1, [b"T"], 10)]), 0, 4)
    assert plan.stops == {5: [0]} and plan.length == 5 and not plan.ref_slots
    assert plan.rows == [(5, b"CGTAC", 1, 0), (5, b"CTTAC", 1, 1)]  # REF row, then ALT row
    plan, _ = llr._plan_pass(Stretch(b"ACGTACGTAC", [Site(6, 1, [b"T"], 10), Site(0, 2, [b"G"], 9)]), 10, 4)
    assert plan.stops == {4: [0], 0: [1]} and plan.length == 9
    assert plan.ref_slots == [(6, 10, 10), (1, 9, 12)]  # REF windows from the pass: slots 10 and 12
    assert plan.rows == [(4, b"ACTTAC", 2, 11), (0, b"GGTACGTA", 1, 13)]  # ALT scored from its first base


def test_window_reverse_complement_swaps_flanks():
    assert Window(b"ACGTAcGTA", 4, 3).reverse_complement() == Window(b"TACgTACGT", 3, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision, atol", [("fp32", 2e-3), ("bf16", 0.5)])
def test_cuda_shared_equals_whole_windows(stretches, precision, atol):
    """On CUDA (Triton scan, pinned uploads, no syncs until the result) against whole windows."""
    model = tiny_model().cuda()
    got = stretch_log_likelihoods(model, stretches, batch_size=3, stop_every=16, precision=precision)
    expected = plain_log_likelihoods(model, stretches, precision=precision).result()
    for g_sites, e_sites in zip(got, expected):
        for g, e in zip(g_sites, e_sites):
            np.testing.assert_allclose(g, e, rtol=0, atol=atol)
