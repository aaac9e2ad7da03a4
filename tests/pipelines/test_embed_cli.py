"""`dnamamba embed` end to end in a subprocess: outputs, one-line errors, nothing half-written."""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from dnamamba.data.fasta import demo_genome_path
from dnamamba.inference.embed import EmbedConfig
from dnamamba.model import save_export
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
