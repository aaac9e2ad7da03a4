"""Shared fixtures: the real conf/ composed and shrunk to CPU and a few steps, and a test cache."""
from __future__ import annotations

import os

import pytest
import torch

from support import SHRINK, compose_config


# Test shapes are tiny: one thread avoids OpenMP oversubscription when DDP ranks or CLI subprocesses
# share the two cores, which stalls small ops by 10-50x.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def pretrain_cfg(tmp_path):
    """The real pretrain config, shrunk; call with extra overrides."""

    def make(*overrides: str):
        return compose_config("pretrain", [*SHRINK, f"run_dir={tmp_path / 'run'}", *overrides])

    return make


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    """Indexes and decompressed FASTA go to one cache per test session, never beside inputs."""
    cache = os.environ.get("DNAMAMBA_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "dnamamba-cache")
    monkeypatch.setenv("DNAMAMBA_CACHE", cache)
