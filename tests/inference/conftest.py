"""Fixtures for the inference tests: a tiny random-init export and the bundled lambda phage."""
from __future__ import annotations

import pytest
from inference_helpers import tiny_model

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
