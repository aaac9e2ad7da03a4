"""What every command owes the user's files, in a subprocess: no output over an input, unreadable
inputs as one line, stop signals as one line with the shell's exit status, and no temporary file left."""
from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pysam
import pytest

from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.model import save_export
from support import LAMBDA, VCF_FIXTURES, assert_one_line_error, run_cli, start_cli, tiny_model


@pytest.fixture(scope="module")
def saved_export(tmp_path_factory) -> str:
    return save_export(tiny_model(), tmp_path_factory.mktemp("cli") / "export")


@pytest.fixture
def export(tmp_path, saved_export) -> str:
    """The test's own copy: a command that wrongly wrote into it spoils no other test."""
    return str(shutil.copytree(saved_export, tmp_path / "export"))


@pytest.fixture
def inputs(tmp_path) -> Path:
    """A plain copy of the lambda genome, a VCF against it and a BED, in their own folder."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    with gzip.open(demo_genome_path(), "rb") as src:
        (folder / "lambda.fa").write_bytes(src.read())
    shutil.copy(VCF_FIXTURES / "lambda_variants.vcf", folder / "calls.vcf")
    (folder / "regions.bed").write_text(f"{LAMBDA}\t0\t300\tstart\n{LAMBDA}\t48202\t48502\tend\n")
    return folder


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def bgzip_copy(src: Path, dst: Path) -> Path:
    pysam.tabix_compress(str(src), str(dst), force=True)
    return dst


# Each case: the command, its settings (inputs from the `inputs` folder), and how `out` is made to be an input.
OVERWRITES = {
    "vcf_same_path": ("score-variants", "out={i}/calls.vcf"),
    "vcf_relative_path": ("score-variants", "out=../inputs/./calls.vcf"),
    "vcf_bgzip_same_path": ("score-variants", "vcf={i}/calls.vcf.gz out={i}/calls.vcf.gz"),
    "vcf_gzip_same_path": ("score-variants", "vcf={i}/plain.vcf.gz out={i}/plain.vcf.gz"),
    "vcf_through_symlink": ("score-variants", "out={i}/link.vcf"),
    "vcf_hard_link": ("score-variants", "out={i}/hard.vcf"),
    "fasta_as_tsv_output": ("score-variants", "fasta={i}/ref.tsv out={i}/ref.tsv"),
    "embed_table_is_the_bed": ("embed", "bed={i}/regions.tsv out={i}/regions.npy"),
    "embed_out_is_the_weights": ("embed", "out={model}/model.safetensors"),
    "pretrain_run_dir_is_the_fasta": ("pretrain", "run_dir={i}/lambda.fa"),
}


@pytest.mark.parametrize("case", list(OVERWRITES))
def test_an_output_that_is_an_input_is_refused(tmp_path, inputs, export, case):
    command, changes = OVERWRITES[case]
    bgzip_copy(inputs / "calls.vcf", inputs / "calls.vcf.gz")
    with gzip.open(inputs / "plain.vcf.gz", "wb") as f:  # plain gzip, not bgzip
        f.write((inputs / "calls.vcf").read_bytes())
    os.symlink(inputs / "calls.vcf", inputs / "link.vcf")
    os.link(inputs / "calls.vcf", inputs / "hard.vcf")
    shutil.copy(inputs / "lambda.fa", inputs / "ref.tsv")
    shutil.copy(inputs / "regions.bed", inputs / "regions.tsv")
    settings = {"model": export, "fasta": f"{inputs}/lambda.fa"}
    if command == "score-variants":
        settings.update(vcf=f"{inputs}/calls.vcf", window="16", device="cpu")
    elif command == "embed":
        settings.update(bed=f"{inputs}/regions.bed", out=f"{tmp_path}/emb.npy", device="cpu")
    else:
        settings = {"data.fasta": f"{inputs}/lambda.fa", "trainer.max_steps": "2"}
    for change in changes.split():
        key, value = change.split("=", 1)
        settings[key] = value.format(i=inputs, model=export)
    before, model_before = snapshot(inputs), snapshot(Path(export))
    proc = run_cli(command, tmp_path / "work", *(f"{k}={v}" for k, v in settings.items()))
    assert_one_line_error(proc, "would overwrite an input")
    assert snapshot(inputs) == before and snapshot(Path(export)) == model_before


@pytest.mark.parametrize("command", ["embed", "score-variants", "pretrain"])
def test_unreadable_fasta_is_one_line(tmp_path, inputs, export, command):
    fasta = inputs / "lambda.fa"
    fasta.chmod(0)
    settings = {"embed": [f"model={export}", f"fasta={fasta}", "out=emb.npy", "device=cpu"],
                "score-variants": [f"model={export}", f"fasta={fasta}", f"vcf={inputs}/calls.vcf", "out=o.vcf",
                                   "device=cpu"],
                "pretrain": [f"data.fasta={fasta}", f"run_dir={tmp_path}/run"]}[command]
    proc = run_cli(command, tmp_path / "work", *settings, unprivileged=True)
    assert_one_line_error(proc, str(fasta), "cannot be read", "Permission denied")
    assert not (tmp_path / "run").exists() and os.listdir(tmp_path / "work") == []


def long_vcf(folder: Path, n: int) -> Path:
    """n SNVs spread over lambda, REF from the genome: enough work to signal a run while it scores."""
    with FastaFile(folder / "lambda.fa") as fasta:
        seq = fasta.fetch(LAMBDA, 0, fasta.length(LAMBDA)).decode().upper()
    lines = ["##fileformat=VCFv4.2", f"##contig=<ID={LAMBDA},length={len(seq)}>",
             "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    for k in range(n):
        pos = 100 + (k * 9973) % (len(seq) - 200)
        ref = seq[pos - 1]
        lines.append(f"{LAMBDA}\t{pos}\t.\t{ref}\t{'A' if ref != 'A' else 'C'}\t.\t.\t.")
    path = folder / "long.vcf"
    path.write_text("\n".join(lines) + "\n")
    return path


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {timeout} s")
        time.sleep(0.05)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stop_signal_while_scoring_is_one_line_and_leaves_no_file(tmp_path, inputs, export, signum, status):
    vcf = long_vcf(inputs, 4000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = start_cli("score-variants", tmp_path / "work", f"model={export}", f"fasta={inputs}/lambda.fa",
                     f"vcf={vcf}", f"out={out_dir}/scored.vcf.gz", "window=2048", "batch_size=1", "device=cpu")
    wait_for(lambda: any(".tmp" in name for name in os.listdir(out_dir)), proc, "temporary output")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == status, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == f"dnamamba: interrupted by {signal.Signals(signum).name}"
    assert os.listdir(out_dir) == []  # no output, no temporary file


def test_temporary_file_of_a_killed_run_is_removed_by_the_next(tmp_path, inputs, export):
    vcf = long_vcf(inputs, 4000)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    common = [f"model={export}", f"fasta={inputs}/lambda.fa", f"out={out_dir}/scored.vcf", "device=cpu"]
    killed = start_cli("score-variants", tmp_path / "work", *common, f"vcf={vcf}", "window=2048", "batch_size=1")
    wait_for(lambda: any(".tmp" in name for name in os.listdir(out_dir)), killed, "temporary output")
    killed.kill()  # SIGKILL: no handler runs, the temporary file stays
    killed.communicate(timeout=60)
    assert len(os.listdir(out_dir)) == 1
    proc = run_cli("score-variants", tmp_path / "work", *common, f"vcf={inputs}/calls.vcf", "window=16")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(out_dir) == ["scored.vcf"]


@pytest.mark.parametrize("window", ["1", "15"])
def test_window_below_the_minimum_is_refused(tmp_path, inputs, export, window):
    proc = run_cli("score-variants", tmp_path / "work", f"model={export}", f"fasta={inputs}/lambda.fa",
                   f"vcf={inputs}/calls.vcf", "out=o.vcf", f"window={window}", "device=cpu")
    assert_one_line_error(proc, f"window={window}", "16")
    assert os.listdir(tmp_path / "work") == []
