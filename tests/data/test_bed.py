import gzip

import pytest

from dnamamba.data.bed import Interval, read_bed
from dnamamba.data.fasta import FastaFile
from dnamamba.errors import InputError


@pytest.fixture
def fasta(make_fasta):
    return FastaFile(make_fasta({"chrA": "ACGT" * 250, "chrB": "GGCCA" * 100}))


def write(tmp_path, text, name="regions.bed"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_intervals_skipping_headers_and_comments(tmp_path, fasta):
    path = write(tmp_path, "track name=x\nbrowser position chrA:1-10\n# comment\n\n"
                           "chrA\t0\t100\tpromoter\t0\t+\nchrB\t10\t500\nchrA\t900\t1000\t.\n")
    assert read_bed(path, fasta) == [
        Interval("chrA", 0, 100, "promoter"), Interval("chrB", 10, 500, None), Interval("chrA", 900, 1000, None),
    ]


def test_gzip_and_space_separated(tmp_path, fasta):
    path = tmp_path / "r.bed.gz"
    with gzip.open(path, "wt") as f:
        f.write("chrB 0 50 first\n")
    assert read_bed(path, fasta) == [Interval("chrB", 0, 50, "first")]


@pytest.mark.parametrize("line,record,words", [
    ("chrA\t900\t1001", "chrA", ["line 2", "past the end", "1000"]),  # past the contig end
    ("chrZ\t0\t10", "chrZ", ["line 2", "no such record", "chrA"]),
    ("chrB\t30\t30", "chrB", ["line 2", "start < end"]),
    ("chrB\t-5\t30", "chrB", ["line 2", "start < end"]),
    ("chrB\tten\t30", "chrB", ["line 2", "integers"]),
])
def test_bad_lines_name_file_line_and_record(tmp_path, fasta, line, record, words):
    path = write(tmp_path, f"chrA\t0\t10\n{line}\n")
    with pytest.raises(InputError) as e:
        read_bed(path, fasta)
    msg = str(e.value)
    assert str(path) in msg and f"record {record}" in msg
    for w in words:
        assert w in msg


def test_too_few_columns_missing_and_empty(tmp_path, fasta):
    with pytest.raises(InputError, match="line 1: expected at least 3 columns"):
        read_bed(write(tmp_path, "chrA\t5\n"), fasta)
    with pytest.raises(InputError, match="BED file not found"):
        read_bed(tmp_path / "absent.bed", fasta)
    with pytest.raises(InputError, match="no intervals"):
        read_bed(write(tmp_path, "track name=x\n# nothing\n", "empty.bed"), fasta)
