"""Paths and config helpers shared by the tests (imported as `support`; tests/ is on sys.path)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dnamamba.model import MambaConfig, MambaLM

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
FIXTURES = REPO / "tests" / "fixtures"
VCF_FIXTURES = FIXTURES / "vcf"
SHARED_DATA = REPO.parent / "shared" / "data"
LAMBDA = "gi|9626243|ref|NC_001416.1|"  # the record name of the bundled lambda phage genome


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{name} not found in {SHARED_DATA} (large real data, not shipped with the package)")
    return path


# Small enough that a pretraining run takes a few seconds on 2 cores, while keeping every component.
SHRINK = [
    "model.d_model=16", "model.n_layer=2", "model.d_state=4",
    "data.seq_len=128", "data.batch_size=4",
    "trainer.max_steps=6", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "optim.warmup_steps=2",
]


def compose_config(name: str, overrides: list[str]):
    """Compose conf/<name>.yaml with overrides, as the CLI would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def tiny_model(seed: int = 0) -> MambaLM:
    """A random-init model (d_model 32, 2 layers): scores mean nothing, but every code path runs."""
    torch.manual_seed(seed)
    return MambaLM(MambaConfig(d_model=32, n_layer=2, d_state=8)).eval()


def cli_command(command: str, *overrides: str, unprivileged: bool = False) -> list[str]:
    """The argv of `dnamamba COMMAND overrides...`. `unprivileged`: when the tests run as root, drop the
    capabilities that let root read and write any file, so file permissions apply as for a user."""
    prefix = []
    if unprivileged and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: permissions cannot be tested")
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]
    return [*prefix, sys.executable, "-m", "dnamamba.cli", command, *overrides]


def cli_env() -> dict:
    # One intra-op thread: small forward passes stall behind a spinning thread team on a busy machine.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def run_cli(command: str, cwd: Path, *overrides: str, timeout: int = 300,
            unprivileged: bool = False) -> subprocess.CompletedProcess:
    """`dnamamba COMMAND overrides...` in a subprocess, run from `cwd` (created)."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(cli_command(command, *overrides, unprivileged=unprivileged), cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=cli_env())


def start_cli(command: str, cwd: Path, *overrides: str) -> subprocess.Popen:
    """`run_cli` without waiting: for tests that signal the running command."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(cli_command(command, *overrides), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env())


def assert_one_line_error(proc: subprocess.CompletedProcess, *expected: str) -> str:
    """The run failed with exactly one `dnamamba: error:` line on stderr, containing each of `expected`."""
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("dnamamba: error: ")
    for words in expected:
        assert words in lines[0]
    return lines[0]
