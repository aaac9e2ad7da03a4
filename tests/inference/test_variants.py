"""Zero-shot variant scoring: window construction, the LLR against a direct computation, the VCF/TSV
outputs on committed lambda fixtures, bad records, and the 194 real chr20 indels."""
from __future__ import annotations

import math
import os

import numpy as np
import pysam
import pytest
import torch

from dnamamba import alphabet
from dnamamba.data.fasta import FastaFile
from dnamamba.errors import InputError
from dnamamba.inference.variants import (ScoreVariantsConfig, Window, allele_window, classify_alt, flank_lengths,
                                         match_case, plan_record, score_vcf, score_windows,
                                         shared_prefix_log_likelihoods, window_log_likelihoods, window_span)

from support import LAMBDA, VCF_FIXTURES, shared_file, tiny_model

# Status of each allele of tests/fixtures/vcf/lambda_variants.vcf, in file order.
LAMBDA_STATUSES = [
    ("first_base_snv", "A", "ok"), ("snv", "G", "ok"), ("monomorphic", ".", "no_alt"), ("mnv", "CAT", "ok"),
    ("insertion", "CTTA", "ok"), ("deletion", "G", "ok"),
    ("multiallelic", "C", "ok"), ("multiallelic", "G", "ok"), ("multiallelic", "TA", "ok"),
    ("symbolic_del", "<DEL>", "symbolic"), ("star", "C", "ok"), ("star", "*", "symbolic"),
    ("breakend", "T[chrZ:5[", "symbolic"), ("ref_mismatch", "G", "ref_mismatch"),
    ("deletion_to_end", "A", "ok"), ("last_base_snv", "T", "ok"), ("past_end", "G", "outside_contig"),
    ("missing_contig", "C", "missing_contig"),
]


def test_flanks_make_an_snv_window_exactly_window_bases():
    assert flank_lengths(10) == (5, 4)
    assert flank_lengths(11) == (5, 5)
    assert flank_lengths(1) == (0, 0)
    # REF of 3 at 20: 5 bases before, REF, 4 after; cut at both contig ends.
    assert window_span(20, 3, 100, 10) == (15, 27)
    assert window_span(2, 1, 100, 10) == (0, 7)
    assert window_span(97, 1, 100, 10) == (92, 100)


def test_window_builder_hand_checked():
    ref = b"ACGTACGTACGTAAAACCCC"  # 0-based positions 0..19
    # Deletion REF "AC" -> ALT "A" at 0-based 8 (VCF POS 9), window 8: left 4 bases, right 3 bases.
    lo, hi = window_span(8, 2, len(ref), 8)
    assert (lo, hi) == (4, 13)
    ctx = ref[lo:hi]
    assert allele_window(ctx, lo, 8, 2, b"AC") == Window(b"ACGT" + b"AC" + b"GTA", left=4, right=3)
    assert allele_window(ctx, lo, 8, 2, b"A") == Window(b"ACGT" + b"A" + b"GTA", left=4, right=3)
    # Insertion REF "A" -> "ATT" at 8: the right flank starts after the 1-base REF.
    lo, hi = window_span(8, 1, len(ref), 8)
    assert allele_window(ref[lo:hi], lo, 8, 1, b"ATT") == Window(b"ACGT" + b"ATT" + b"CGT", left=4, right=3)
    # Contig edges: a variant at the first base has no left flank, at the last base no right flank.
    lo, hi = window_span(0, 1, len(ref), 8)
    assert allele_window(ref[lo:hi], lo, 0, 1, b"T") == Window(b"T" + b"CGT", left=0, right=3)
    lo, hi = window_span(19, 1, len(ref), 8)
    assert allele_window(ref[lo:hi], lo, 19, 1, b"G") == Window(b"ACCC" + b"G", left=4, right=0)
    # The reverse complement swaps the flanks: the complemented right flank becomes the shared prefix.
    assert Window(b"ACGTAcGTA", 4, 3).reverse_complement() == Window(b"TACgTACGT", 3, 4)


@pytest.mark.parametrize("alt, reason", [
    ("A", None), ("ACGTN", None), ("acgt", None), ("<DEL>", "symbolic"), ("<INS:ME>", "symbolic"),
    ("*", "symbolic"), ("G]chr2:100]", "symbolic"), ("[chr2:100[G", "symbolic"), (".G", "symbolic"),
    ("G.", "symbolic"), ("AXT", "invalid_allele"), (None, "no_alt"),
])
def test_classify_alt(alt, reason):
    assert classify_alt(alt) == reason


def test_match_case_keeps_soft_masking():
    assert match_case(b"TTA", b"a") == b"tta"
    assert match_case(b"tta", b"A") == b"TTA"


@torch.no_grad()
def _direct_log_likelihood(model, seq: bytes, first: int) -> float:
    """sum_{i >= first, i >= 1, seq_i in ACGT} log softmax(model(seq)[i-1])[seq_i], straight from logits."""
    tokens = alphabet.encode(seq)[None]  # (1, L)
    logp = torch.log_softmax(model(tokens)[0].double(), -1)  # (L, vocab)
    return sum(float(logp[i - 1, tokens[0, i]]) for i in range(max(first, 1), len(seq))
               if chr(seq[i]) in "ACGTacgt")


def _lambda_windows(lambda_fasta, start: int, ref_len: int, alt: bytes, window: int):
    lo, hi = window_span(start, ref_len, lambda_fasta.lengths[LAMBDA], window)
    ctx = lambda_fasta.fetch(LAMBDA, lo, hi)
    return (allele_window(ctx, lo, start, ref_len, ctx[start - lo:start - lo + ref_len]),
            allele_window(ctx, lo, start, ref_len, alt))


def test_snv_llr_equals_direct_computation(lambda_fasta):
    model = tiny_model()
    ref_w, alt_w = _lambda_windows(lambda_fasta, 999, 1, b"G", 101)  # VCF POS 1000, A>G
    assert len(ref_w.seq) == len(alt_w.seq) == 101 and ref_w.seq[50:51] == b"A" and alt_w.seq[50:51] == b"G"
    expected = _direct_log_likelihood(model, alt_w.seq, 50) - _direct_log_likelihood(model, ref_w.seq, 50)
    got = score_windows(model, [(ref_w, alt_w)])[0]
    assert got == pytest.approx(expected, abs=1e-4)
    assert abs(expected) > 1e-3  # the variant does change the likelihood
    # Left-flank positions are the same in both windows and cancel: summing from position 1 agrees.
    from_start = _direct_log_likelihood(model, alt_w.seq, 1) - _direct_log_likelihood(model, ref_w.seq, 1)
    assert from_start == pytest.approx(expected, abs=1e-4)


def test_rc_average_is_the_mean_of_both_strands(lambda_fasta):
    model = tiny_model()
    ref_w, alt_w = _lambda_windows(lambda_fasta, 4999, 1, b"CTTA", 64)  # insertion
    fwd = score_windows(model, [(ref_w, alt_w)])[0]
    r, a = ref_w.reverse_complement(), alt_w.reverse_complement()
    rc = _direct_log_likelihood(model, a.seq, a.left) - _direct_log_likelihood(model, r.seq, r.left)
    assert score_windows(model, [(ref_w, alt_w)], rc_average=True)[0] == pytest.approx((fwd + rc) / 2, abs=1e-4)


def test_identical_windows_score_zero(lambda_fasta):
    model = tiny_model()
    ref_w, _ = _lambda_windows(lambda_fasta, 999, 1, b"G", 64)
    scores = score_windows(model, [(ref_w, ref_w)] * 3, rc_average=True)
    assert np.all(np.abs(scores) < 1e-6)


def test_padding_and_batching_do_not_change_log_likelihoods(lambda_fasta):
    model = tiny_model()
    seq = lambda_fasta.fetch(LAMBDA, 2000, 2300)
    windows = [Window(seq[:n], left=k, right=0) for n, k in ((300, 0), (57, 10), (211, 3), (1, 0), (130, 129))]
    batched = window_log_likelihoods(model, windows, batch_size=8)
    one_by_one = [window_log_likelihoods(model, [w], batch_size=1)[0] for w in windows]
    assert np.allclose(batched, one_by_one, atol=1e-4)
    assert batched[3] == 0.0 and batched[4] != 0.0  # a 1-base window predicts nothing; the last one predicts 1


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_shared_prefix_equals_whole_windows(lambda_fasta, batch_size):
    """The fast path (prefix once, state carried into each window) against the plain per-window reference,
    over SNVs, an MNV, indels, a multi-allelic record and windows cut at both contig ends."""
    model = tiny_model()
    n = lambda_fasta.lengths[LAMBDA]
    variants = [(0, 1, [b"A", b"TTG"]), (2, 1, [b"C"]), (999, 1, [b"G", b"C", b"AGG"]), (2999, 3, [b"CAT"]),
                (7999, 5, [b"G"]), (n - 3, 3, [b"A"]), (n - 1, 1, [b"T", b"GAC"])]
    groups = []
    for start, ref_len, alts in variants:
        lo, hi = window_span(start, ref_len, n, 40)
        ctx = lambda_fasta.fetch(LAMBDA, lo, hi)
        ref = allele_window(ctx, lo, start, ref_len, ctx[start - lo:start - lo + ref_len])
        groups.append([ref] + [allele_window(ctx, lo, start, ref_len, a) for a in alts])
    for strand in (groups, [[w.reverse_complement() for w in g] for g in groups]):
        fast = shared_prefix_log_likelihoods(model, strand, batch_size=batch_size)
        for g, got in zip(strand, fast):
            np.testing.assert_allclose(got, window_log_likelihoods(model, g), rtol=0, atol=1e-4)
            assert np.all(got < 0)


def test_soft_masked_reference_gives_no_case_penalty(tmp_path):
    fasta_path = tmp_path / "soft.fa"
    fasta_path.write_text(">c\nACGTACGTAC" + "gattacagattaca" + "ACGTACGTAC\n")
    vcf = pysam.VariantHeader()
    vcf.add_line("##contig=<ID=c,length=34>")
    rec = vcf.new_record(contig="c", start=13, alleles=("T", "T"))  # ALT == REF, in the lowercase run
    with FastaFile(fasta_path, cache_dir=tmp_path / "cache") as fasta:
        pairs: list = []
        plan_record(rec, fasta, 20, "keep", pairs)
        (ref_w, alt_w), = pairs
        assert ref_w.seq == alt_w.seq and b"t" in ref_w.seq[ref_w.left:ref_w.left + 1]
        assert score_windows(tiny_model(), pairs)[0] == 0.0
        pairs = []
        plan_record(rec, fasta, 20, "upper", pairs)
        assert pairs[0][0].seq == pairs[0][0].seq.upper()


def _cfg(tmp_path, export, fasta, vcf, out, **kw) -> ScoreVariantsConfig:
    return ScoreVariantsConfig(model=str(export), fasta=str(fasta), vcf=str(vcf), out=str(tmp_path / out),
                               device="cpu", progress=False, **kw)


def test_lambda_fixture_tsv(tmp_path, tiny_export, lambda_path, capsys):
    cfg = _cfg(tmp_path, tiny_export, lambda_path, VCF_FIXTURES / "lambda_variants.vcf", "out.tsv", window=64)
    summary = score_vcf(cfg)
    lines = (tmp_path / "out.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["chrom", "pos", "id", "ref", "alt", "score", "status"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[2], r[4], r[6]) for r in rows] == LAMBDA_STATUSES
    for r in rows:
        assert (r[5] == "NA") == (r[6] != "ok")
        if r[6] == "ok":
            assert math.isfinite(float(r[5]))
    assert summary["records"] == 15 and summary["alleles"] == 18 and summary["scored"] == 11
    assert summary["skipped"] == {"missing_contig": 1, "outside_contig": 1, "ref_mismatch": 1, "symbolic": 3,
                                  "no_alt": 1}
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("dnamamba: scored 11 of 18 alleles in 15 records")
    assert "symbolic or structural-variant allele 3" in err[-1] and "REF does not match the FASTA 1" in err[-1]


def test_lambda_fixture_vcf_gz_keeps_every_record(tmp_path, tiny_export, lambda_path):
    src = VCF_FIXTURES / "lambda_variants.vcf"
    cfg = _cfg(tmp_path, tiny_export, lambda_path, src, "out.vcf.gz", window=64)
    score_vcf(cfg)
    out = tmp_path / "out.vcf.gz"
    with open(out, "rb") as f:
        assert f.read(4) == b"\x1f\x8b\x08\x04"  # BGZF: gzip with the extra field
    assert (tmp_path / "out.vcf.gz.tbi").exists()
    tsv = {}
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, src, "out.tsv", window=64))
    for line in (tmp_path / "out.tsv").read_text().splitlines()[1:]:
        r = line.split("\t")
        tsv.setdefault(r[2], []).append(None if r[5] == "NA" else float(r[5]))
    with pysam.VariantFile(str(out)) as scored, pysam.VariantFile(str(src)) as original:
        info = scored.header.info["DNAMAMBA_LLR"]
        assert (info.number, info.type) == ("A", "Float")
        assert "window 64" in info.description and os.path.abspath(tiny_export) in info.description
        pairs = list(zip(original, scored))
        assert len(pairs) == 15
        for a, b in pairs:
            assert (a.chrom, a.pos, a.id, a.ref, a.alts, a.info["CASE"]) == \
                   (b.chrom, b.pos, b.id, b.ref, b.alts, b.info["CASE"])
            expected = tsv[a.id]
            if all(s is None for s in expected):
                assert "DNAMAMBA_LLR" not in b.info
            else:
                got = b.info["DNAMAMBA_LLR"]
                assert len(got) == len(a.alts)
                for g, e in zip(got, expected):
                    assert (g is None) if e is None else g == pytest.approx(e, rel=1e-5, abs=1e-5)
        # The index works: fetch a region.
        assert [r.id for r in scored.fetch(LAMBDA, 9000, 15001)] == ["multiallelic", "symbolic_del"]


@pytest.mark.parametrize("fixture, reason, record", [
    ("lambda_ref_mismatch.vcf", "REF does not match the FASTA", f"{LAMBDA}:21001"),
    ("lambda_symbolic.vcf", "symbolic or structural-variant allele", f"{LAMBDA}:15000"),
])
def test_strict_fails_naming_file_and_record(tmp_path, tiny_export, lambda_path, fixture, reason, record):
    cfg = _cfg(tmp_path, tiny_export, lambda_path, VCF_FIXTURES / fixture, "out.vcf", strict=True)
    with pytest.raises(InputError) as e:
        score_vcf(cfg)
    assert e.value.path == str(VCF_FIXTURES / fixture) and e.value.record == record
    assert reason in str(e.value) and "\n" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_header_only_vcf_is_an_error(tmp_path, tiny_export, lambda_path):
    cfg = _cfg(tmp_path, tiny_export, lambda_path, VCF_FIXTURES / "lambda_header_only.vcf", "out.vcf")
    with pytest.raises(InputError, match="header only"):
        score_vcf(cfg)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("out", ["out.txt", "out.vcf.zip", ".vcf"])
def test_bad_output_extension(tmp_path, tiny_export, lambda_path, out):
    cfg = _cfg(tmp_path, tiny_export, lambda_path, VCF_FIXTURES / "lambda_symbolic.vcf", out)
    with pytest.raises(InputError, match="output must end in"):
        score_vcf(cfg)


@pytest.fixture(scope="module")
def chr20():
    return shared_file("hs37_chr20.fa.gz"), shared_file("hs37_chr20_indels.vcf.gz")


def test_chr20_real_indels(tmp_path, tiny_export, chr20):
    """The 194 real indels (plain-gzip VCF, plain-gzip FASTA): every REF matches, every allele is scored."""
    fasta, vcf = chr20
    summary = score_vcf(_cfg(tmp_path, tiny_export, fasta, vcf, "indels.vcf.gz", window=48, batch_size=194))
    assert summary["records"] == 194 and summary["scored"] == 194 and summary["skipped"] == {}
    assert summary["nonfinite_scores"] == 0
    with pysam.VariantFile(str(tmp_path / "indels.vcf.gz")) as scored:
        records = list(scored)
    assert len(records) == 194 and all(len(r.ref) != len(r.alts[0]) for r in records)  # all indels
    scores = np.array([r.info["DNAMAMBA_LLR"][0] for r in records])
    assert np.isfinite(scores).all() and len(set(scores.round(6))) > 150  # distinct windows, distinct scores


def test_chr20_contig_edges(tmp_path, tiny_export, chr20):
    fasta_path, _ = chr20
    with FastaFile(fasta_path) as fasta:
        n = fasta.lengths["20"]
        first, last = fasta.fetch("20", 0, 1).decode(), fasta.fetch("20", n - 1, n).decode()
        mid = fasta.fetch("20", 421807, 421808).decode()  # a real base, next to the first indel
    vcf = tmp_path / "edges.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##contig=<ID=20,length=63025520>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"20\t1\tfirst\t{first}\tA\t.\t.\t.\n"
                   f"20\t421808\tmid\t{mid}\t{'C' if mid.upper() != 'C' else 'G'}\t.\t.\t.\n"
                   f"20\t{n}\tlast\t{last}\tA\t.\t.\t.\n")
    summary = score_vcf(_cfg(tmp_path, tiny_export, fasta_path, vcf, "edges.tsv", window=128))
    assert summary["scored"] == 3 and summary["nonfinite_scores"] == 0
    rows = [line.split("\t") for line in (tmp_path / "edges.tsv").read_text().splitlines()[1:]]
    # chr20 starts and ends in N. At the first base the ALT has no context and is not scored, and the
    # Ns after it are not A/C/G/T: the score is exactly 0. At the last base the ALT A is scored.
    assert first.upper() == last.upper() == "N"
    assert [r[2] for r in rows] == ["first", "mid", "last"]
    assert float(rows[0][5]) == 0.0
    assert float(rows[1][5]) != 0.0 and float(rows[2][5]) != 0.0


def test_undeclared_contigs_and_tags_are_kept(tmp_path, tiny_export, lambda_path):
    """htslib adds header lines for a contig, INFO or FORMAT tag a VCF never declared; the output keeps the
    records, their samples and tags (a translation between headers would end the process instead)."""
    vcf = tmp_path / "bare.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ts1\n"
                   f"{LAMBDA}\t1000\ta\tA\tG,T\t.\tq10\tDP=3\tGT:AD\t0/1:3,2,0\n"
                   "chrZ\t5\tb\tA\tG\t.\t.\t.\tGT\t1/1\n")
    summary = score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, "out.bcf", window=16))
    assert summary["scored"] == 2 and summary["skipped"] == {"missing_contig": 1}
    with pysam.VariantFile(str(tmp_path / "out.bcf")) as out:
        recs = list(out)
        assert list(out.header.samples) == ["s1"]
    assert [r.id for r in recs] == ["a", "b"]
    assert recs[0].samples["s1"]["GT"] == (0, 1) and recs[1].samples["s1"]["GT"] == (1, 1)
    assert list(recs[0].filter) == ["q10"] and recs[0].info["DP"] == "3"
    assert len(recs[0].info["DNAMAMBA_LLR"]) == 2 and "DNAMAMBA_LLR" not in recs[1].info


def test_existing_info_field_of_another_type_is_an_error(tmp_path, tiny_export, lambda_path):
    vcf = tmp_path / "taken.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n##INFO=<ID=DNAMAMBA_LLR,Number=1,Type=String,Description=\"x\">\n"
                   f"##contig=<ID={LAMBDA},length=48502>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{LAMBDA}\t1000\ta\tA\tG\t.\t.\tDNAMAMBA_LLR=x\n")
    with pytest.raises(InputError, match="INFO/DNAMAMBA_LLR already exists"):
        score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, "out.vcf"))
    assert sorted(os.listdir(tmp_path)) == ["taken.vcf"]
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, "out.vcf", info_field="LLR2", window=16))
    with pysam.VariantFile(str(tmp_path / "out.vcf")) as out:
        rec = next(iter(out))
    assert rec.info["DNAMAMBA_LLR"] == "x" and len(rec.info["LLR2"]) == 1


def test_unsorted_output_is_not_indexed_and_a_stale_index_goes(tmp_path, tiny_export, lambda_path, capsys):
    vcf = tmp_path / "unsorted.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={LAMBDA},length=48502>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{LAMBDA}\t3000\tb\tT\tG\t.\t.\t.\n{LAMBDA}\t1000\ta\tA\tG\t.\t.\t.\n")
    (tmp_path / "out.vcf.gz.tbi").write_bytes(b"an index of an earlier output")
    summary = score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, "out.vcf.gz", window=16))
    assert summary["scored"] == 2
    assert sorted(os.listdir(tmp_path)) == ["out.vcf.gz", "unsorted.vcf"]
    assert "out.vcf.gz not indexed" in capsys.readouterr().err
    with pysam.VariantFile(str(tmp_path / "out.vcf.gz")) as out:
        assert [r.id for r in out] == ["b", "a"]  # records stay in input order


def test_bcf_output_reads_back_as_input(tmp_path, tiny_export, lambda_path):
    """A BCF written here (symbolic records and their END included) is valid input and scores the same."""
    src = VCF_FIXTURES / "lambda_variants.vcf"
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, src, "first.bcf", window=32))
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, src, "first.tsv", window=32))
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, tmp_path / "first.bcf", "second.tsv", window=32,
                   info_field="AGAIN"))
    assert (tmp_path / "first.tsv").read_text() == (tmp_path / "second.tsv").read_text()


def _tsv_scores(path) -> dict:
    """(id or pos, alt) -> score (None when not scored) from a TSV output."""
    out = {}
    for line in path.read_text().splitlines()[1:]:
        r = line.split("\t")
        out[(r[2] if r[2] != "." else r[1], r[4])] = None if r[5] == "NA" else float(r[5])
    return out


@pytest.mark.parametrize("context, rc_average, reduce", [
    ("window", False, "sum"), ("window", True, "mean"), ("tile", False, "mean"), ("tile", True, "sum"),
])
def test_shared_method_equals_plain_on_the_lambda_fixture(tmp_path, tiny_export, lambda_path, context, rc_average,
                                                          reduce):
    """method=shared (context read once, state carried) gives the scores of method=plain (every window
    whole) for SNVs, an MNV, indels, three ALTs of one record and variants at both contig ends; under
    context=tile the variants at 15000/15002 and 48500/48502 share one reference pass."""
    scores = {}
    for method in ("plain", "shared"):
        score_vcf(_cfg(tmp_path, tiny_export, lambda_path, VCF_FIXTURES / "lambda_variants.vcf", f"{method}.tsv",
                       window=64, context=context, tile_size=48, rc_average=rc_average, reduce=reduce,
                       method=method, batch_size=3))
        scores[method] = _tsv_scores(tmp_path / f"{method}.tsv")
    assert scores["plain"].keys() == scores["shared"].keys()
    assert sum(v is not None for v in scores["plain"].values()) == 11
    for key, plain in scores["plain"].items():
        shared = scores["shared"][key]
        assert (plain is None) == (shared is None)
        if plain is not None:
            assert shared == pytest.approx(plain, rel=1e-5, abs=2e-5), key  # the TSV keeps 6 digits


def test_chr20_indels_shared_equals_plain(tmp_path, tiny_export, chr20):
    """The 194 real indels and variants at chr20's first and last bases (N runs), both contexts."""
    fasta, vcf = chr20
    for context in ("window", "tile"):
        got = {}
        for method in ("plain", "shared"):
            out = tmp_path / f"{context}_{method}.tsv"
            summary = score_vcf(_cfg(tmp_path, tiny_export, fasta, vcf, out.name, window=64, context=context,
                                     tile_size=300, method=method, batch_size=64))
            assert summary["scored"] == 194
            got[method] = np.array([float(line.split("\t")[5]) for line in out.read_text().splitlines()[1:]])
        np.testing.assert_allclose(got["shared"], got["plain"], rtol=1e-5, atol=2e-5)
    edges = tmp_path / "edges.vcf"
    with FastaFile(fasta) as f:
        n = f.lengths["20"]
        mid = f.fetch("20", 60010, 60013).decode()
    edges.write_text("##fileformat=VCFv4.2\n##contig=<ID=20,length=63025520>\n"
                     "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                     f"20\t1\tfirst\tN\tA,NNC\t.\t.\t.\n20\t60011\tgap_end\t{mid}\tA\t.\t.\t.\n"
                     f"20\t{n - 1}\tlast\tNN\tA\t.\t.\t.\n")
    for context in ("window", "tile"):
        got = {}
        for method in ("plain", "shared"):
            score_vcf(_cfg(tmp_path, tiny_export, fasta, edges, f"e_{method}.tsv", window=128, context=context,
                           rc_average=True, method=method))
            got[method] = _tsv_scores(tmp_path / f"e_{method}.tsv")
        assert len(got["plain"]) == 4
        for key, value in got["plain"].items():
            assert got["shared"][key] == pytest.approx(value, rel=1e-5, abs=2e-5), key


def test_reduce_mean_divides_each_window_by_its_scored_bases(lambda_fasta):
    model = tiny_model()
    ref_w, alt_w = _lambda_windows(lambda_fasta, 4999, 1, b"CTTA", 64)  # an insertion: 3 more ALT positions
    n_ref = sum(chr(b) in "ACGTacgt" for b in ref_w.seq[ref_w.left:])
    n_alt = sum(chr(b) in "ACGTacgt" for b in alt_w.seq[alt_w.left:])
    assert n_alt == n_ref + 3
    expected = (_direct_log_likelihood(model, alt_w.seq, alt_w.left) / n_alt
                - _direct_log_likelihood(model, ref_w.seq, ref_w.left) / n_ref)
    assert score_windows(model, [(ref_w, alt_w)], reduce="mean")[0] == pytest.approx(expected, abs=1e-5)


def test_tile_context_reads_from_before_the_tile(tmp_path, tiny_export, lambda_path, lambda_fasta):
    """context=tile: the windows of a variant at 0-based s start window//2 bases before s's tile
    (s // tile_size * tile_size), straight from the definition, for an SNV and a deletion."""
    from dnamamba.model import load_export

    model = load_export(tiny_export, "cpu")
    window, tile = 40, 100
    left, right = flank_lengths(window)
    cases = [(1234, "A", 1), (1260, "G", 4)]  # (0-based start, ALT, REF length); one tile, [1200, 1300)
    vcf = tmp_path / "tile.vcf"
    lines = []
    for s, alt, r in cases:
        ref = lambda_fasta.fetch(LAMBDA, s, s + r).decode()
        alt = alt if alt != ref[0] else "C"
        lines.append((s, ref, alt if r == 1 else ref[0]))
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={LAMBDA},length=48502>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n" +
                   "".join(f"{LAMBDA}\t{s + 1}\t.\t{ref}\t{alt}\t.\t.\t.\n" for s, ref, alt in lines))
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, "tile.tsv", window=window, context="tile",
                   tile_size=tile))
    got = [float(line.split("\t")[5]) for line in (tmp_path / "tile.tsv").read_text().splitlines()[1:]]
    for (s, ref, alt), score in zip(lines, got):
        a = s // tile * tile - left
        assert a == 1180
        ref_seq = lambda_fasta.fetch(LAMBDA, a, s + len(ref) + right)
        alt_seq = ref_seq[:s - a] + alt.encode() + ref_seq[s - a + len(ref):]
        expected = _direct_log_likelihood(model, alt_seq, s - a) - _direct_log_likelihood(model, ref_seq, s - a)
        assert score == pytest.approx(expected, rel=1e-5, abs=2e-5)  # the TSV keeps 6 digits


def test_symbolic_record_with_undeclared_end_is_written_through(tmp_path, tiny_export, lambda_path):
    """A symbolic ALT with INFO/END that the header never declares: kept, unscored, END as written."""
    vcf = tmp_path / "end.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={LAMBDA},length=48502>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{LAMBDA}\t1000\tsnv\tA\tG\t.\t.\t.\n{LAMBDA}\t15000\tdel\tG\t<DEL>\t.\t.\tEND=15100\n")
    for out in ("out.vcf", "out.bcf"):
        summary = score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, out, window=16))
        assert summary["scored"] == 1 and summary["skipped"] == {"symbolic": 1}
        with pysam.VariantFile(str(tmp_path / out)) as scored:
            records = list(scored)
        assert [r.id for r in records] == ["snv", "del"]
        assert records[1].stop == 15100  # pysam reads INFO/END as the record's stop
        assert "DNAMAMBA_LLR" not in records[1].info and len(records[0].info["DNAMAMBA_LLR"]) == 1
    assert "\tEND=15100\n" in (tmp_path / "out.vcf").read_text()


def test_end_declared_as_string_is_one_error_naming_the_record(tmp_path, tiny_export, lambda_path):
    vcf = tmp_path / "end_string.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##INFO=<ID=END,Number=1,Type=String,Description=\"e\">\n"
                   f"##contig=<ID={LAMBDA},length=48502>\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{LAMBDA}\t15000\tdel\tG\t<DEL>\t.\t.\tEND=15100\n")
    with pytest.raises(InputError) as e:
        score_vcf(_cfg(tmp_path, tiny_export, lambda_path, vcf, "out.vcf", window=16))
    assert e.value.record == f"{LAMBDA}:15000" and "Type=String" in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["end_string.vcf"]


def test_no_contig_in_the_fasta_is_an_error_with_a_chr_hint(tmp_path, tiny_export, lambda_fasta):
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">20\n" + lambda_fasta.fetch(LAMBDA, 0, 600).decode() + "\n")
    vcf = tmp_path / "chr.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "chr20\t100\t.\tA\tG\t.\t.\t.\nchr20\t200\t.\tA\tG\t.\t.\t.\n")
    with pytest.raises(InputError) as e:
        score_vcf(_cfg(tmp_path, tiny_export, fasta, vcf, "out.tsv"))
    assert "'chr' prefix" in str(e.value) and "'chr20' here, '20' in the FASTA" in str(e.value)
    assert e.value.path == str(vcf) and not (tmp_path / "out.tsv").exists()
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nY\t1\t.\tA\tG\t.\t.\t.\n")
    with pytest.raises(InputError, match="none of its contigs \\('Y'\\)"):
        score_vcf(_cfg(tmp_path, tiny_export, fasta, vcf, "out.tsv"))
