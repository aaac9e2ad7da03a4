"""Variant tables in and out (tsv, csv, parquet), regions and shards, checked through score_vcf on the
bundled lambda phage and the committed lambda VCF fixture."""
from __future__ import annotations

import gzip
import os
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dnamamba.errors import InputError
from dnamamba.inference.variant_files import Selection, contig_problem
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf

from support import LAMBDA, VCF_FIXTURES

FIXTURE = VCF_FIXTURES / "lambda_variants.vcf"


def _cfg(tmp_path, export, fasta, variants, out, **kw) -> ScoreVariantsConfig:
    return ScoreVariantsConfig(model=str(export), fasta=str(fasta), vcf=str(variants), out=str(tmp_path / out),
                               device="cpu", progress=False, window=32, **kw)


def _rows(path):
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


@pytest.fixture
def vcf_scores(tmp_path, tiny_export, lambda_path):
    """(pos, ref, alt) -> score of every scored allele of the VCF fixture, from a TSV output."""
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, "from_vcf.tsv"))
    return {(int(r["pos"]), r["ref"], r["alt"]): float(r["score"])
            for r in _rows(tmp_path / "from_vcf.tsv") if r["status"] == "ok"}


TABLE = [  # chrom, pos, ref, alt, label: GPN/TraitGym's columns plus one of the user's own
    (LAMBDA, 1000, "A", "G", 1), (LAMBDA, 3000, "TGG", "CAT", 0), (LAMBDA, 5000, "C", "CTTA", 1),
    (LAMBDA, 10000, "T", "TA", 0), (LAMBDA, 15000, "G", "<DEL>", 1), (LAMBDA, 21001, "A", "G", 0),
    ("chrZ", 10, "A", "C", 1), (LAMBDA, None, "A", "C", 0), (LAMBDA, 48502, "G", "T", 1),
]


def _write_text_table(path, sep):
    lines = [sep.join(["chrom", "pos", "ref", "alt", "label"])]
    lines += [sep.join("" if v is None else str(v) for v in row) for row in TABLE]
    text = "\n".join(lines) + "\n"
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def _write_parquet(path):
    columns = list(zip(*TABLE))
    pq.write_table(pa.table({"chrom": pa.array(columns[0], pa.string()), "pos": pa.array(columns[1], pa.int64()),
                             "ref": columns[2], "alt": columns[3], "label": pa.array(columns[4], pa.int8())}), path)


EXPECTED_STATUS = ["ok", "ok", "ok", "ok", "symbolic", "ref_mismatch", "missing_contig", "invalid_record", "ok"]


@pytest.mark.parametrize("name", ["in.tsv", "in.csv.gz", "in.parquet"])
def test_tables_in_give_the_vcf_scores_and_keep_their_columns(tmp_path, tiny_export, lambda_path, vcf_scores,
                                                              name):
    src = tmp_path / name
    _write_parquet(src) if name.endswith(".parquet") else _write_text_table(src, "\t" if ".tsv" in name else ",")
    summary = score_vcf(_cfg(tmp_path, tiny_export, lambda_path, src, "out.parquet"))
    assert summary["records"] == 9 and summary["scored"] == 5
    assert summary["skipped"] == {"missing_contig": 1, "ref_mismatch": 1, "symbolic": 1, "invalid_record": 1}
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == ["chrom", "pos", "ref", "alt", "label", "score", "status"]
    assert table.schema.field("score").type == pa.float64() and table.schema.field("status").type == pa.string()
    if name.endswith(".parquet"):
        assert table.schema.field("label").type == pa.int8()  # the input's own types are kept
    rows = table.to_pylist()
    assert [r["label"] for r in rows] == [row[4] for row in TABLE]
    assert [r["status"] for r in rows] == EXPECTED_STATUS
    for r in rows:
        if r["status"] == "ok":
            assert r["score"] == pytest.approx(vcf_scores[(r["pos"], r["ref"], r["alt"])], rel=1e-5, abs=2e-5)
        else:
            assert r["score"] is None


def test_vcf_to_csv_and_parquet_rows_per_alt(tmp_path, tiny_export, lambda_path):
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, "out.csv"))
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, "out.parquet"))
    text = (tmp_path / "out.csv").read_text().splitlines()
    assert text[0] == "chrom,pos,id,ref,alt,score,status" and len(text) == 1 + 18
    rows = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert len(rows) == 18 and [r["id"] for r in rows[6:9]] == ["multiallelic"] * 3
    csv_scores = [line.rsplit(",", 2)[1] for line in text[1:]]
    for r, s in zip(rows, csv_scores):
        assert (s == "NA") == (r["score"] is None)
        if r["score"] is not None:
            assert float(s) == pytest.approx(r["score"], rel=1e-5)


@pytest.mark.parametrize("content, words", [
    ("chrom\tposition\tref\talt\n", "no column(s) pos"),
    ("chrom\tpos\tref\talt\tscore\n", "already has column(s) score"),
    ("chrom\tpos\tref\talt\nx\tten\tA\tC\n", "not a readable tsv table"),
])
def test_bad_tables_are_one_line_errors(tmp_path, tiny_export, lambda_path, content, words):
    src = tmp_path / "bad.tsv"
    src.write_text(content)
    with pytest.raises(InputError) as e:
        score_vcf(_cfg(tmp_path, tiny_export, lambda_path, src, "out.tsv"))
    assert words in str(e.value) and e.value.path == str(src) and "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["bad.tsv"]


def test_a_table_cannot_become_a_vcf(tmp_path, tiny_export, lambda_path):
    src = tmp_path / "in.tsv"
    _write_text_table(src, "\t")
    with pytest.raises(InputError, match="needs a VCF/BCF input"):
        score_vcf(_cfg(tmp_path, tiny_export, lambda_path, src, "out.vcf.gz"))


@pytest.mark.parametrize("regions, ids", [
    (f"{LAMBDA}:1000-5000", ["snv", "monomorphic", "mnv", "insertion"]),
    ([f"{LAMBDA}:1-1", f"{LAMBDA}:48500-48502"], ["first_base_snv", "deletion_to_end", "last_base_snv", "past_end"]),
    ("chrZ", ["missing_contig"]),
])
def test_regions_keep_records_whose_pos_is_inside(tmp_path, tiny_export, lambda_path, regions, ids):
    fasta = lambda_path
    if regions == "chrZ":  # a BED file naming a contig of a FASTA that has it
        fasta = tmp_path / "z.fa"
        fasta.write_text(f">chrZ\n{'ACGT' * 250}\n>{LAMBDA}\nACGT\n")
        (tmp_path / "z.bed").write_text("chrZ\t5\t10\n")
        regions = str(tmp_path / "z.bed")
    summary = score_vcf(_cfg(tmp_path, tiny_export, fasta, FIXTURE, "out.tsv", regions=regions))
    assert [r["id"] for r in _rows(tmp_path / "out.tsv")] == list(dict.fromkeys(ids))
    assert summary["records"] == len(ids)


def test_shards_are_contiguous_parts_that_add_up_to_the_whole(tmp_path, tiny_export, lambda_path):
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, "whole.tsv"))
    whole = (tmp_path / "whole.tsv").read_text().splitlines()
    parts = []
    for i in range(4):
        summary = score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, f"part{i}.tsv", shard=f"{i}/4"))
        lines = (tmp_path / f"part{i}.tsv").read_text().splitlines()
        assert lines[0] == whole[0] and summary["records"] in (3, 4)
        parts += lines[1:]
    assert parts == whole[1:]
    score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, "last.tsv", shard="0/16"))  # an empty shard
    assert (tmp_path / "last.tsv").read_text().splitlines() == whole[:1]


@pytest.mark.parametrize("setting, words", [
    ({"shard": "4/4"}, "0 <= i < n"), ({"shard": "1-4"}, "must be i/n"),
    ({"regions": f"{LAMBDA}:500-100"}, "1 <= start <= end"), ({"regions": "chr9:1-10"}, "with a contig of"),
    ({"regions": f"{LAMBDA}:30000-40000"}, "no record lies in regions"),
])
def test_bad_regions_and_shards(tmp_path, tiny_export, lambda_path, setting, words):
    with pytest.raises(InputError, match=words):
        score_vcf(_cfg(tmp_path, tiny_export, lambda_path, FIXTURE, "out.tsv", **setting))
    assert not (tmp_path / "out.tsv").exists()


def test_selection_bounds_split_evenly():
    s = Selection(None, (2, 3))
    assert [Selection(None, (i, 3)).bounds(10) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert s.bounds(1) == (0, 1) and Selection(None, (0, 3)).bounds(1) == (0, 0)


def test_contig_problem_hints(lambda_fasta):
    assert contig_problem(Counter({LAMBDA: 3, "chr1": 1}), lambda_fasta) is None  # some match: counted skips
    assert "'chr' prefix" not in contig_problem(Counter({"chr1": 2}), lambda_fasta)
