"""`dnamamba embed` end to end in a subprocess: outputs, one-line errors, nothing half-written."""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from safetensors import safe_open

from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.inference.embed import EmbedConfig, embed_tokens
from dnamamba.model import load_export, save_export
from support import LAMBDA, REPO, assert_one_line_error, run_cli, tiny_model



@pytest.fixture(scope="module")
def export(tmp_path_factory) -> str:
    return save_export(tiny_model(), tmp_path_factory.mktemp("cli") / "export")


@pytest.fixture
def bed(tmp_path) -> Path:
    path = tmp_path / "regions.bed"
    path.write_text(f"{LAMBDA}\t0\t300\tstart\n{LAMBDA}\t48202\t48502\tend\n")
    return path


def embed(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("embed", cwd, "device=cpu", *overrides)


def test_yaml_and_schema_have_the_same_keys():
    yaml = OmegaConf.load(REPO / "conf" / "embed.yaml")
    assert set(yaml) - {"defaults", "hydra"} == {f.name for f in dataclasses.fields(EmbedConfig)}


def test_embeds_bed_intervals_and_writes_nothing_else(tmp_path, export, bed):
    work = tmp_path / "work"
    proc = embed(work, f"model={export}", f"fasta={demo_genome_path()}", f"bed={bed}", "out=emb.npy",
                 "pooling=none", "rc_average=true", "chunk_size=97", "layer=0")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(work)) == ["emb.npy", "emb.tsv"]  # no outputs/, .hydra/ or logs
    assert np.load(work / "emb.npy").shape == (2, 300, 32)
    assert (work / "emb.tsv").read_text().splitlines()[1] == f"start\t{LAMBDA}\t0\t300\t300"
    assert proc.stderr.strip().splitlines()[-1].startswith("dnamamba: embedded 2 intervals")


BAD_INPUTS = {
    "missing_fasta": (["fasta={tmp}/absent.fa"], ["absent.fa", "not found"]),
    "export_without_config": (["model={tmp}"], ["config.json is missing"]),
    "bad_output_extension": (["out={tmp}/emb.csv"], ["emb.csv", "output must end in .npy or .safetensors"]),
    "interval_past_contig_end": (["bed={tmp}/past.bed"], ["past.bed", f"record {LAMBDA}", "past the end"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, export, bed, case):
    (tmp_path / "past.bed").write_text(f"{LAMBDA}\t48000\t48600\n")
    changes, expected = BAD_INPUTS[case]
    settings = {"model": export, "fasta": demo_genome_path(), "bed": str(bed), "out": str(tmp_path / "out" / "emb.npy")}
    for change in changes:
        key, value = change.format(tmp=tmp_path).split("=", 1)
        settings[key] = value
    work = tmp_path / "work"
    before = sorted(os.listdir(tmp_path))
    proc = embed(work, *(f"{k}={v}" for k, v in settings.items()))
    assert_one_line_error(proc, *expected)
    assert os.listdir(work) == []
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["work"])


def test_several_layers_in_one_pass_match_one_layer_at_a_time(tmp_path, export, bed):
    work = tmp_path / "work"
    layers = [0, -1, 1]
    proc = embed(work, f"model={export}", f"fasta={demo_genome_path()}", f"bed={bed}", "out=multi.npy",
                 f"layers=[{','.join(map(str, layers))}]", "chunk_size=97")
    assert proc.returncode == 0, proc.stderr
    multi = np.load(work / "multi.npy")
    assert multi.shape == (2, 3, 32)  # (items, layers, d_model)
    proc = embed(work, f"model={export}", f"fasta={demo_genome_path()}", f"bed={bed}", "out=pos.safetensors",
                 "layers=[1,0]", "pooling=none")
    assert proc.returncode == 0, proc.stderr
    model = load_export(export)
    with FastaFile(demo_genome_path()) as fasta:
        seqs = [fasta.fetch_tokens(LAMBDA, 0, 300), fasta.fetch_tokens(LAMBDA, 48202, 48502)]
    with safe_open(str(work / "pos.safetensors"), "np") as f:
        assert f.metadata()["layers"] == "1,0"
        per_position = [f.get_tensor(str(i)) for i in range(2)]
    for k, layer in enumerate(layers):
        alone = embed_tokens(model, seqs, layer=layer)
        for i in range(2):
            np.testing.assert_allclose(multi[i, k], alone[i], rtol=0, atol=1e-5)
    for j, layer in enumerate([1, 0]):
        alone = embed_tokens(model, seqs, layer=layer, pooling="none")
        for i in range(2):
            assert per_position[i].shape == (2, 300, 32)
            np.testing.assert_allclose(per_position[i][j], alone[i], rtol=0, atol=1e-5)


def test_item_table_as_parquet(tmp_path, export, bed):
    work = tmp_path / "work"
    proc = embed(work, f"model={export}", f"fasta={demo_genome_path()}", f"bed={bed}", "out=emb.npy",
                 "table=parquet")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(work)) == ["emb.npy", "emb.parquet"]
    table = pq.read_table(work / "emb.parquet")
    assert table.column_names == ["name", "contig", "start", "end", "length"]
    assert table.to_pylist() == [
        {"name": "start", "contig": LAMBDA, "start": 0, "end": 300, "length": 300},
        {"name": "end", "contig": LAMBDA, "start": 48202, "end": 48502, "length": 300}]
    assert str(table.schema.field("start").type) == "int64"


def _cached_index(fasta: Path) -> Path:
    """The .fai of `fasta` in the test cache ($DNAMAMBA_CACHE, set by conftest, shared by the session: give
    `fasta` a name no other test uses)."""
    (fai,) = Path(os.environ["DNAMAMBA_CACHE"]).glob(f"fasta/*-{fasta.name}/{fasta.name}.fai")
    return fai


def _two_records(tmp_path: Path) -> Path:
    """Two records of the same length and line width, each ending in a short line: a damaged index can
    point one at the other."""
    with FastaFile(demo_genome_path()) as fasta:
        a, b = fasta.fetch(LAMBDA, 1000, 1590).decode(), fasta.fetch(LAMBDA, 30000, 30590).decode()
    path = tmp_path / f"{tmp_path.name}.fa"
    path.write_text("".join(f">{name}\n" + "".join(seq[i:i + 60] + "\n" for i in range(0, 590, 60))
                            for name, seq in (("a", a), ("b", b))))
    return path


def test_damaged_cached_index_is_rebuilt_not_trusted(tmp_path, export):
    fasta = _two_records(tmp_path)
    work = tmp_path / "work"
    first = embed(work, f"model={export}", f"fasta={fasta}", "out=first.npy")
    assert first.returncode == 0, first.stderr
    fai = _cached_index(fasta)
    rows = [line.split("\t") for line in fai.read_text().splitlines()]
    rows[0][2], rows[1][2] = rows[1][2], rows[0][2]  # swap the records' offsets: a valid-looking index
    fai.write_text("".join("\t".join(r) + "\n" for r in rows))
    second = embed(work, f"model={export}", f"fasta={fasta}", "out=second.npy")
    assert second.returncode == 0, second.stderr
    np.testing.assert_array_equal(np.load(work / "second.npy"), np.load(work / "first.npy"))
    assert "does not match its checksum; rebuilding it" in second.stderr


def test_stale_index_error_names_the_cache_entry(tmp_path, export):
    fasta = tmp_path / f"{tmp_path.name}.fa"
    fasta.write_text(">r\nACGTACGTAC\nACGTACGTAC\nACGTAC\n")
    work = tmp_path / "work"
    assert embed(work, f"model={export}", f"fasta={fasta}", "out=first.npy").returncode == 0
    # Edited in place with the same size and modification time: the cache cannot see the change.
    stat = fasta.stat()
    fasta.write_text(">r\nACGTACGTAC\nACGTACGTAC\n\n\n\n\n\n\n\n")
    os.utime(fasta, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    proc = embed(work, f"model={export}", f"fasta={fasta}", "out=second.npy")
    assert_one_line_error(proc, str(fasta), "record r", str(_cached_index(fasta).parent))
    assert sorted(os.listdir(work)) == ["first.npy", "first.tsv"]


def test_crlf_fasta_with_a_trailing_blank_line_embeds_like_lf(tmp_path, export):
    lf = _two_records(tmp_path)
    text = lf.read_text() + "\n"  # a short last line, then a blank one: LF files may end so
    crlf = tmp_path / "crlf.fa"
    crlf.write_bytes(text.replace("\n", "\r\n").encode())
    lf.write_text(text)
    work = tmp_path / "work"
    for name, path in (("lf", lf), ("crlf", crlf)):
        proc = embed(work, f"model={export}", f"fasta={path}", f"out={name}.npy")
        assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(np.load(work / "crlf.npy"), np.load(work / "lf.npy"))
    assert (work / "crlf.tsv").read_text() == (work / "lf.tsv").read_text()
