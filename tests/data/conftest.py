import gzip
from pathlib import Path

import pytest

from dnamamba.data.fasta import demo_genome_path

from support import FIXTURES, shared_file


@pytest.fixture(scope="session")
def lambda_text() -> str:
    """The packaged lambda phage FASTA as text (one record, 48,502 bases, 70 per line)."""
    with gzip.open(demo_genome_path(), "rt") as f:
        return f.read()


@pytest.fixture(scope="session")
def lambda_seq(lambda_text) -> bytes:
    return "".join(lambda_text.splitlines()[1:]).encode()


@pytest.fixture
def lambda_fa(tmp_path, lambda_text) -> Path:
    path = tmp_path / "lambda.fa"
    path.write_text(lambda_text)
    return path


@pytest.fixture
def n_fixture() -> Path:
    return FIXTURES / "chr20_n_boundary.fa"


@pytest.fixture
def shared():
    """shared(name): a file of <repo>/../shared/data, or skip when it is not there."""
    return shared_file


@pytest.fixture
def make_fasta(tmp_path):
    """make_fasta({name: seq}, filename="x.fa", width=60): a FASTA file in tmp_path."""
    def make(records: dict[str, str], filename: str = "records.fa", width: int = 60) -> Path:
        path = tmp_path / filename
        with open(path, "w") as f:
            for name, seq in records.items():
                f.write(f">{name} test record\n")
                for i in range(0, len(seq), width):
                    f.write(seq[i:i + width] + "\n")
        return path
    return make
