"""The labelled variant benchmark: labels against hand-checked codons of real Klebsiella records and
of the join fixture, record-level splits, seeded sampling, and the files it writes."""
from __future__ import annotations

import csv
import json

import pysam
import pytest

from dnamamba.data.genbank import read_genbank
from dnamamba.data.variant_benchmark import (LABELS, SPLITS, BuildVariantBenchmarkConfig, assign_splits,
                                             build_variant_benchmark, cds_variants, label_change)
from dnamamba.errors import InputError

from support import FIXTURES, shared_file


@pytest.fixture(scope="module")
def records():
    gb = read_genbank(shared_file("klebsiella_k_locus.gbk.gz"), strict=False)
    return {r.name: r for r in gb.records}


def effects(record, cds_name: str, transcript_index: int) -> dict:
    cds = next(c for c in record.cds if c.name == cds_name)
    return {v.alt: (v.ref_codon, v.alt_codon, v.label) for v in cds_variants(cds, record.seq, [transcript_index])}


def test_labels_of_galF_hand_checked(records):
    """AB924547 galF, 1..897 (+): ATG AAT ATG GCG AAT TTG AAA ... TGA."""
    r = records["AB924547"]
    assert r.seq[:21] == b"ATGAATATGGCGAATTTGAAA" and r.seq[894:897] == b"TGA"
    # GCG (Ala) third position: every change is synonymous.
    assert effects(r, "galF", 11) == {"A": ("GCG", "GCA", "synonymous"), "C": ("GCG", "GCC", "synonymous"),
                                      "T": ("GCG", "GCT", "synonymous")}
    # AAT (Asn) third position: AAC is Asn, AAA and AAG are Lys.
    assert effects(r, "galF", 5) == {"A": ("AAT", "AAA", "missense"), "C": ("AAT", "AAC", "synonymous"),
                                     "G": ("AAT", "AAG", "missense")}
    # AAA (Lys) first position: TAA is a stop gained.
    assert effects(r, "galF", 18)["T"] == ("AAA", "TAA", "nonsense")
    assert effects(r, "galF", 18)["C"] == ("AAA", "CAA", "missense")
    # The stop codon TGA: TAA is still a stop, TCA (Ser) and AGA (Arg) lose it.
    assert effects(r, "galF", 895) == {"A": ("TGA", "TAA", "synonymous"), "C": ("TGA", "TCA", "stop_lost"),
                                       "T": ("TGA", "TTA", "stop_lost")}
    assert effects(r, "galF", 894)["A"] == ("TGA", "AGA", "stop_lost")


def test_labels_on_the_minus_strand_hand_checked(records):
    """16870_8#51 KL10_00013, complement(15977..16990): codon 2 is TTA (Leu), read from the forward bases
    TAA at 16985..16987 (1-based), and the stop codon TGA ends at 15977."""
    r = records["16870_8#51"]
    assert r.seq[16984:16987] == b"TAA" and r.seq[16987:16990] == b"CAT"  # CAT reversed and complemented: ATG
    cds = next(c for c in r.cds if c.name == "KL10_00013")
    by_alt = {v.alt: v for v in cds_variants(cds, r.seq, [3])}  # codon 2, first base: forward A at 16986
    assert {a: (v.pos, v.alt_codon, v.label) for a, v in by_alt.items()} == {
        "G": (16986, "CTA", "synonymous"),  # forward G is C on the gene's strand: CTA is Leu too
        "C": (16986, "GTA", "missense"), "T": (16986, "ATA", "missense")}
    assert all(v.strand == -1 and v.codon == 2 and v.codon_pos == 1 for v in by_alt.values())
    third = {v.alt: v.label for v in cds_variants(cds, r.seq, [5])}  # TTA third base: forward T at 16984
    assert third == {"C": "synonymous", "A": "missense", "G": "missense"}  # TTG Leu, TTT and TTC Phe
    stop = {v.alt: (v.pos, v.alt_codon, v.label) for v in cds_variants(cds, r.seq, [len(cds.positions()) - 1])}
    assert stop["C"] == (15976, "TGG", "stop_lost")


def test_codons_that_span_a_join_hand_checked():
    """joins.gbk: codon 11 of join(337..367,413..492) is T|CT (Ser) across the join; codon 20 of
    complement(join(33..82,128..185)) is C|GC (Arg), its first base at 128 and the rest at 82, 81."""
    gb = {r.name: r for r in read_genbank(FIXTURES / "genbank" / "joins.gbk").records}
    plus = gb["JOIN_PLUS"]
    assert (plus.seq[366:367], plus.seq[412:414]) == (b"T", b"CT")
    assert effects(plus, "KL172_00004_join", 32) == {"A": ("TCT", "TCA", "synonymous"),
                                                     "C": ("TCT", "TCC", "synonymous"),
                                                     "G": ("TCT", "TCG", "synonymous")}
    assert effects(plus, "KL172_00004_join", 31)["A"] == ("TCT", "TAT", "missense")
    cds = next(c for c in plus.cds if c.name == "KL172_00004_join")
    assert [v.pos for v in cds_variants(cds, plus.seq, [30, 31, 32])][::3] == [366, 412, 413]
    minus = gb["JOIN_MINUS"]
    assert (minus.seq[127:128], minus.seq[80:82]) == (b"G", b"GC")
    v = {x.alt: x for x in cds_variants(minus.cds[0], minus.seq, [59])}  # codon 20, third base, at 81 (1-based)
    assert v["A"].pos == 80 and v["A"].alt_codon == "CGT" and v["A"].label == "synonymous"
    assert {x.label for x in cds_variants(minus.cds[0], minus.seq, [57])} == {"missense"}  # CGC -> TGC, GGC, AGC


def test_label_change_uses_the_translation_table():
    assert label_change("TGA", "TGG", 11)[0] == "stop_lost"
    assert label_change("TGG", "TGA", 11)[0] == "nonsense"
    assert label_change("TGG", "TGA", 4)[0] == "synonymous"  # TGA is Trp in the mycoplasma code
    assert label_change("AGA", "AGG", 2)[0] == "synonymous"  # both stops in vertebrate mitochondria


def test_assign_splits_is_a_seeded_partition():
    names = [f"r{i}" for i in range(20)]
    a = assign_splits(names, [0.7, 0.15, 0.15], seed=0)
    assert sorted(a) == sorted(names) and set(a.values()) == set(SPLITS)
    assert [sum(v == s for v in a.values()) for s in SPLITS] == [14, 3, 3]
    assert assign_splits(list(reversed(names)), [0.7, 0.15, 0.15], seed=0) == a
    assert assign_splits(names, [0.7, 0.15, 0.15], seed=1) != a
    assert set(assign_splits(["a", "b", "c"], [0.8, 0.1, 0.1], 0).values()) == set(SPLITS)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "kleb"
    cfg = BuildVariantBenchmarkConfig(gbk=str(shared_file("klebsiella_k_locus.gbk.gz")), out=str(out),
                                      positions_per_cds=2, interval_length=300)
    return out, build_variant_benchmark(cfg)


def read_tsv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_benchmark_splits_are_disjoint_by_record(benchmark):
    out, summary = benchmark
    splits = {row["record"]: row["split"] for row in read_tsv(out / "splits.tsv")}
    assert len(splits) == summary["records"] == 162
    labels = read_tsv(out / "labels.tsv")
    by_split = {s: {row["chrom"] for row in labels if row["split"] == s} for s in SPLITS}
    assert all(by_split[s] for s in SPLITS)
    assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"]) \
        and not (by_split["val"] & by_split["test"])
    assert all(splits[row["chrom"]] == row["split"] for row in labels)
    intervals = read_tsv(out / "intervals.tsv")
    assert all(splits[row["chrom"]] == row["split"] for row in intervals)
    train_fa = (out / "train.fa").read_text().split(">")[1:]
    assert {rec.split("\n", 1)[0] for rec in train_fa} == {n for n, s in splits.items() if s == "train"}


def test_benchmark_files_agree(benchmark):
    out, summary = benchmark
    labels = read_tsv(out / "labels.tsv")
    assert len(labels) == summary["variants"]
    assert {row["label"] for row in labels} == set(LABELS)
    with pysam.FastaFile(str(out / "records.fa")) as fasta, pysam.VariantFile(str(out / "variants.vcf.gz")) as vcf:
        rows = iter(labels)
        n = 0
        for rec in vcf:
            assert fasta.fetch(rec.chrom, rec.start, rec.stop) == rec.ref
            assert len(rec.alts) == 3 and rec.ref not in rec.alts
            for alt, label in zip(rec.alts, rec.info["LABEL"]):
                row = next(rows)
                assert (row["chrom"], int(row["pos"]), row["ref"], row["alt"], row["label"]) == \
                    (rec.chrom, rec.pos, rec.ref, alt, label)
                n += 1
        assert n == len(labels)
    # Two inner positions per CDS and its stop codon's three, where no other CDS overlaps.
    positions = {(row["chrom"], row["pos"]) for row in labels}
    assert 2 * summary["cds"] < len(positions) <= 5 * summary["cds"]
    assert len(labels) == 3 * len(positions)
    intervals = read_tsv(out / "intervals.tsv")
    for split in SPLITS:
        kinds = [row["label"] for row in intervals if row["split"] == split]
        assert kinds.count("coding") == kinds.count("noncoding") > 0
    assert all(int(r["end"]) - int(r["start"]) == 300 for r in intervals)
    assert json.loads((out / "summary.json").read_text())["skipped_cds_or_records"] == {"pseudo": 1, "no_stop": 2}


def test_benchmark_is_deterministic(benchmark, tmp_path):
    out, _ = benchmark
    cfg = BuildVariantBenchmarkConfig(gbk=str(shared_file("klebsiella_k_locus.gbk.gz")), out=str(tmp_path / "again"),
                                      positions_per_cds=2, interval_length=0)
    build_variant_benchmark(cfg)
    assert (tmp_path / "again" / "labels.tsv").read_bytes() == (out / "labels.tsv").read_bytes()
    assert not (tmp_path / "again" / "intervals.tsv").exists()


def test_malformed_genbank_strict_writes_nothing(tmp_path):
    cfg = BuildVariantBenchmarkConfig(gbk=str(FIXTURES / "genbank" / "malformed.gbk"), out=str(tmp_path / "b"),
                                      strict=True)
    with pytest.raises(InputError, match="record BAD_LOC"):
        build_variant_benchmark(cfg)
    assert not (tmp_path / "b").exists()
    cfg.strict = False
    summary = build_variant_benchmark(cfg)
    assert summary["records"] == 6 and summary["skipped_cds_or_records"]["unparsable_record"] == 1
