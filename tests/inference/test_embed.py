"""Embeddings: chunked with carried state equals one pass, strands, batching, and the written files."""
from __future__ import annotations

import os

import numpy as np
import pytest
from support import LAMBDA, tiny_model
from safetensors import safe_open

from dnamamba import alphabet
from dnamamba.errors import InputError
from dnamamba.inference.embed import EmbedConfig, embed_fasta, embed_tokens


@pytest.fixture
def lambda_seqs(lambda_fasta):
    """Real lambda DNA of unequal lengths, none a multiple of anything the model or the test uses."""
    spans = [(1234, 1934), (20011, 20524), (47000, 47389)]
    return [alphabet.encode(lambda_fasta.fetch(LAMBDA, s, e)) for s, e in spans]


@pytest.mark.parametrize("layer", [-1, 0])
def test_chunked_equals_one_pass_float64(lambda_seqs, layer):
    model = tiny_model().double()
    one = embed_tokens(model, lambda_seqs, layer=layer, pooling="none", chunk_size=1 << 20)
    chunked = embed_tokens(model, lambda_seqs, layer=layer, pooling="none", chunk_size=157)
    for a, b, seq in zip(one, chunked, lambda_seqs):
        assert a.shape == b.shape == (len(seq), 32)
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10)
    mean_one = embed_tokens(model, lambda_seqs, layer=layer, chunk_size=1 << 20)
    mean_chunked = embed_tokens(model, lambda_seqs, layer=layer, chunk_size=157)
    for a, b, full in zip(mean_one, mean_chunked, one):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)  # float32 output
        np.testing.assert_allclose(a, full.mean(0), rtol=0, atol=1e-6)


def test_several_layers_in_one_chunked_pass_equal_each_layer_alone_float64(lambda_seqs):
    model = tiny_model().double()
    layers = [1, 0, -1]
    both = embed_tokens(model, lambda_seqs, layer=layers, pooling="none", rc_average=True, chunk_size=157)
    means = embed_tokens(model, lambda_seqs, layer=layers, chunk_size=157)
    for k, layer in enumerate(layers):
        alone = embed_tokens(model, lambda_seqs, layer=layer, pooling="none", rc_average=True, chunk_size=1 << 20)
        alone_mean = embed_tokens(model, lambda_seqs, layer=layer, chunk_size=1 << 20)
        for seq, b, a, m, am in zip(lambda_seqs, both, alone, means, alone_mean):
            assert b.shape == (3, len(seq), 32) and m.shape == (3, 32)
            np.testing.assert_allclose(b[k], a, rtol=0, atol=1e-10)
            np.testing.assert_allclose(m[k], am, rtol=0, atol=1e-6)  # float32 output


def test_chunked_equals_one_pass_float32(lambda_seqs):
    model = tiny_model()
    one = embed_tokens(model, lambda_seqs, pooling="none", chunk_size=1 << 20)
    chunked = embed_tokens(model, lambda_seqs, pooling="none", chunk_size=517)
    for a, b in zip(one, chunked):
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-5)


def test_batch_rows_do_not_see_each_other(lambda_seqs):
    model = tiny_model()
    batched = embed_tokens(model, lambda_seqs, pooling="none", chunk_size=400)
    for seq, b in zip(lambda_seqs, batched):
        alone = embed_tokens(model, [seq], pooling="none", chunk_size=1 << 20)[0]
        np.testing.assert_allclose(b, alone, rtol=0, atol=2e-5)


def test_rc_average_realigns_positions(lambda_seqs):
    model = tiny_model()
    seqs = lambda_seqs[1:]
    fwd = embed_tokens(model, seqs, pooling="none")
    rc = embed_tokens(model, [alphabet.reverse_complement(s) for s in seqs], pooling="none")
    both = embed_tokens(model, seqs, pooling="none", rc_average=True, chunk_size=333)
    for f, r, b in zip(fwd, rc, both):
        np.testing.assert_allclose(b, (f + r[::-1]) / 2, rtol=0, atol=2e-5)
        assert not np.allclose(f, r[::-1], atol=1e-3)  # the strands do differ
    means = embed_tokens(model, seqs, rc_average=True)
    for f, r, m in zip(fwd, rc, means):
        np.testing.assert_allclose(m, (f.mean(0) + r.mean(0)) / 2, rtol=0, atol=2e-5)


@pytest.fixture
def small_bed(tmp_path):
    bed = tmp_path / "regions.bed"
    bed.write_text(f"{LAMBDA}\t100\t700\tfirst\n{LAMBDA}\t30000\t30257\n{LAMBDA}\t48100\t48502\tlast\n")
    return bed


def _cfg(tmp_path, export, fasta, out, **kw) -> EmbedConfig:
    return EmbedConfig(model=str(export), fasta=str(fasta), out=str(tmp_path / out), device="cpu", progress=False, **kw)


def test_embed_bed_mean_npy(tmp_path, tiny_export, lambda_path, lambda_fasta, small_bed):
    summary = embed_fasta(_cfg(tmp_path, tiny_export, lambda_path, "emb.npy", bed=str(small_bed), chunk_size=200))
    emb = np.load(tmp_path / "emb.npy")
    assert emb.shape == (3, 32) and emb.dtype == np.float32 and summary["items"] == 3
    lines = (tmp_path / "emb.tsv").read_text().splitlines()
    assert lines[0] == "name\tcontig\tstart\tend\tlength"
    assert lines[1:] == [f"first\t{LAMBDA}\t100\t700\t600", f"{LAMBDA}:30000-30257\t{LAMBDA}\t30000\t30257\t257",
                         f"last\t{LAMBDA}\t48100\t48502\t402"]
    model = tiny_model()
    direct = embed_tokens(model, [alphabet.encode(lambda_fasta.fetch(LAMBDA, 30000, 30257))])[0]
    np.testing.assert_allclose(emb[1], direct, rtol=0, atol=2e-5)
    assert sorted(os.listdir(tmp_path)) == ["emb.npy", "emb.tsv", "regions.bed"]


def test_embed_per_position_npy_and_safetensors_agree(tmp_path, tiny_export, lambda_path, small_bed):
    common = dict(bed=str(small_bed), pooling="none", rc_average=True, layer=1)
    embed_fasta(_cfg(tmp_path, tiny_export, lambda_path, "pos.npy", **common))
    embed_fasta(_cfg(tmp_path, tiny_export, lambda_path, "pos.safetensors", **common))
    padded = np.load(tmp_path / "pos.npy")
    assert padded.shape == (3, 600, 32)
    lengths = [int(line.split("\t")[4]) for line in (tmp_path / "pos.tsv").read_text().splitlines()[1:]]
    assert lengths == [600, 257, 402]
    with safe_open(str(tmp_path / "pos.safetensors"), "np") as f:
        assert sorted(f.keys()) == ["0", "1", "2"]
        assert f.metadata()["pooling"] == "none" and f.metadata()["layer"] == "1"
        for i, n in enumerate(lengths):
            item = f.get_tensor(str(i))
            assert item.shape == (n, 32)
            np.testing.assert_array_equal(padded[i, :n], item)
            assert not padded[i, n:].any()  # zero padding after the item's length


def test_embed_records_safetensors(tmp_path, tiny_export):
    fasta = tmp_path / "two.fa"
    fasta.write_text(">a\nACGTTGCAACGTAGCTAGCTAGGATCGA\n>b desc\nggggACGTACGTNNNNACGT\n")
    embed_fasta(_cfg(tmp_path, tiny_export, fasta, "rec.safetensors", records=["b", "a"], soft_mask="upper"))
    with safe_open(str(tmp_path / "rec.safetensors"), "np") as f:
        assert f.get_tensor("embeddings").shape == (2, 32)
    assert [line.split("\t")[0] for line in (tmp_path / "rec.tsv").read_text().splitlines()] == ["name", "b", "a"]


@pytest.mark.parametrize("change, match", [
    (dict(out="emb.txt"), "output must end in"),
    (dict(records=["nope"]), "no such record"),
    (dict(layer=3), "layer=3 is out of range"),
    (dict(pooling="max"), "pooling='max' is not one of"),
    (dict(records=["x"], bed="some.bed"), "either bed= or records="),
])
def test_embed_bad_settings(tmp_path, tiny_export, lambda_path, change, match):
    kw = {"out": "emb.npy", **change}
    out = kw.pop("out")
    with pytest.raises(InputError, match=match):
        embed_fasta(_cfg(tmp_path, tiny_export, lambda_path, out, **kw))
    assert os.listdir(tmp_path) == []
