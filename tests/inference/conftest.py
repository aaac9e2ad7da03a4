"""Fixtures for the inference tests: a tiny random-init export and the bundled lambda phage."""
from __future__ import annotations

import pytest
import torch
from support import tiny_model

from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.model import save_export


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> str:
    return save_export(tiny_model(), tmp_path_factory.mktemp("export") / "tiny")


@pytest.fixture(scope="session")
def lambda_path() -> str:
    return demo_genome_path()


@pytest.fixture
def lambda_fasta(lambda_path):
    with FastaFile(lambda_path) as fasta:
        yield fasta


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tests run many small forward passes. With intra-op threads, a core taken by another process
    makes each op wait on a spinning thread team (measured on a loaded 2-core machine: 24 ms instead of
    0.5 ms for an elementwise op on 65k floats, and 134 s instead of 35 s for the inference tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
