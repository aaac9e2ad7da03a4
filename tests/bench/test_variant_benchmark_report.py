"""bench/variant_benchmark.py: its AUROC, the shared supervised table and the report files."""
from __future__ import annotations

import csv
import importlib.util
import json
import os

import pytest

from support import REPO

_spec = importlib.util.spec_from_file_location("variant_benchmark_driver", REPO / "bench" / "variant_benchmark.py")
driver = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(driver)

COLUMNS = ["chrom", "pos", "ref", "alt", "label", "split", "ref_aa"]


def write_labels(folder, rows) -> None:
    with open(folder / "labels.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)


def test_auroc_keeps_the_order_of_scores_far_outside_0_1():
    # A sigmoid of these (what torchmetrics applies to values outside [0, 1]) rounds them all to 1.0.
    assert driver.auroc([40.0, 45.0], [50.0, 60.0]) == 1.0
    assert driver.auroc([-60.0, 50.0], [40.0, 45.0]) == 0.5
    assert driver.auroc([3.0, 3.0], [3.0]) == 0.5


def test_zero_shot_auroc_of_strongly_scored_variants(tmp_path, monkeypatch):
    """-LLR beyond 37 nats: nonsense below synonymous must still give AUROC 1, not a tie at 0.5."""
    rows = [("r", str(p), "A", "C", label, "test", aa) for p, label, aa in
            [(1, "synonymous", "K"), (2, "synonymous", "*"), (3, "nonsense", "K"), (4, "nonsense", "K"),
             (5, "missense", "K")]]
    write_labels(tmp_path, rows)
    scores = {"1": -40.0, "2": -45.0, "3": -80.0, "4": -90.0, "5": -42.0}

    def fake_score_vcf(cfg):
        with open(cfg.out, "w") as f:
            f.write("chrom\tpos\tid\tref\talt\tscore\tstatus\n")
            for _, pos, ref, alt, *_ in rows:
                f.write(f"r\t{pos}\t.\t{ref}\t{alt}\t{scores[pos]}\tok\n")

    monkeypatch.setattr(driver, "score_vcf", fake_score_vcf)
    z = driver.zero_shot("model", str(tmp_path), "in.vcf", str(tmp_path / "s.tsv"), 64, "cpu")
    assert z["auroc_synonymous_vs_nonsense"] == 1.0
    assert z["auroc_synonymous_vs_missense"] == 0.5  # -42 lies between the two synonymous scores
    assert z["n"] == {"synonymous": 2, "nonsense": 2, "missense": 1}
    # The stop-to-stop change (ref_aa '*', score -45) is left out of the sense-codon figures.
    assert z["sense_codons"] == {"n_synonymous": 1, "auroc_synonymous_vs_nonsense": 1.0,
                                 "auroc_synonymous_vs_missense": 1.0}


def test_within_substitution_compares_only_variants_of_one_base_change():
    """Damaging changes are A>T here and synonymous ones mostly A>G: overall the score's preference for A>T
    decides, within each type the order is the reverse."""
    def row(label, alt):
        return {"label": label, "ref": "A", "alt": alt, "ref_aa": "K"}

    items = [(row("synonymous", "G"), 0.0), (row("synonymous", "G"), 0.1), (row("synonymous", "T"), 5.0),
             (row("nonsense", "T"), 4.0), (row("nonsense", "T"), 3.0), (row("missense", "G"), -1.0)]
    z = driver.pair_aurocs(items)
    assert z["auroc_synonymous_vs_nonsense"] == pytest.approx(4 / 6)
    assert z["within_substitution"]["auroc_synonymous_vs_nonsense"] == 0.0  # A>T only: 5.0 above 4.0 and 3.0
    assert z["within_substitution"]["auroc_synonymous_vs_missense"] == 0.0  # A>G only: -1.0 below both


def test_substitution_only_scores_by_the_training_share_of_each_change(tmp_path):
    rows = [("r", str(p), "A", alt, label, split, "K") for p, alt, label, split in
            [(1, "T", "nonsense", "train"), (2, "T", "nonsense", "train"), (3, "G", "synonymous", "train"),
             (4, "T", "nonsense", "test"), (5, "G", "synonymous", "test"), (6, "T", "synonymous", "test")]]
    write_labels(tmp_path, rows)
    pysam = pytest.importorskip("pysam")
    header = pysam.VariantHeader()
    header.contigs.add("r", length=10)
    vcf = str(tmp_path / "test.vcf")
    with pysam.VariantFile(vcf, "w", header=header) as f:
        for pos, alt in ((4, "T"), (5, "G"), (6, "T")):
            f.write(f.new_record(contig="r", start=pos - 1, alleles=("A", alt)))
    z = driver.substitution_only(str(tmp_path), vcf)
    # A>T: nonsense share (2 + 1) / (2 + 0 + 2) = 0.75; A>G: 1 / 3. The synonymous A>T ties with the nonsense one.
    assert z["auroc_synonymous_vs_nonsense"] == pytest.approx(0.75)
    assert z["within_substitution"]["auroc_synonymous_vs_nonsense"] == 0.5
    assert z["n"] == {"nonsense": 1, "synonymous": 2}


def test_supervised_table_caps_each_split_and_keeps_file_order(tmp_path):
    rows = [("r", str(i), "A", "C", "missense" if i % 2 else "synonymous", split, "K")
            for i, split in enumerate(["train"] * 10 + ["val"] * 6 + ["test"] * 5)]
    write_labels(tmp_path, rows)
    out = str(tmp_path / "sup.tsv")
    driver.supervised_table(str(tmp_path), out, {"train": 4, "val": 3, "test": None}, seed=1)
    kept = driver.read_tsv(out)
    assert [sum(r["split"] == s for r in kept) for s in ("train", "val", "test")] == [4, 3, 5]
    assert [int(r["pos"]) for r in kept] == sorted(int(r["pos"]) for r in kept)
    assert list(kept[0]) == COLUMNS
    again = str(tmp_path / "again.tsv")
    driver.supervised_table(str(tmp_path), again, {"train": 4, "val": 3, "test": None}, seed=1)
    assert open(again).read() == open(out).read()


def test_write_results_writes_the_json_and_its_tables(tmp_path):
    z = {"n": {}, "auroc_synonymous_vs_nonsense": 0.9, "auroc_synonymous_vs_missense": 0.7,
         "sense_codons": {"n_synonymous": 3, "auroc_synonymous_vs_missense": 0.71},
         "within_substitution": {"auroc_synonymous_vs_nonsense": 0.61}}
    results = {
        "label": "a run", "window": 1024,
        "benchmark": {"records": 3, "cds": 4, "records_per_split": {"train": 1, "val": 1, "test": 1},
                      "labels": {"test": {"synonymous": 2, "missense": 5}}},
        "pretraining": {"parameters": 1000, "global_step": 5, "tokens": 640, "seq_len": 128, "val_bits_per_base": 1.9},
        "zero_shot": {"model": z, "Markov k=4": {**z, "auroc_synonymous_vs_nonsense": 0.5}},
        "substitution_type_only": {**z, "auroc_synonymous_vs_nonsense": 0.8},
        "supervised": {"frozen backbone + head": {"test": {"auroc_macro": 0.8, "auroc_missense": 0.75,
                                                           "auroc_synonymous": 0.85, "accuracy": 0.6}},
                       "logistic regression on Markov k=4 features": {"auroc_macro": 0.6, "auroc_missense": 0.55,
                                                                      "auroc_synonymous": 0.65, "n_test": 7}},
        "coding_vs_noncoding": {"model_frozen": {"accuracy": 0.9, "auroc": 0.95},
                                "markov": {"accuracy": 0.8, "n_test": 10, "k": 4}},
    }
    out = tmp_path / "res" / "vb.json"
    md = driver.write_results(results, str(out))
    assert json.loads(out.read_text())["zero_shot"]["Markov k=4"]["auroc_synonymous_vs_nonsense"] == 0.5
    text = open(md).read()
    assert md == str(tmp_path / "res" / "vb.md")
    assert "| model | 0.900 | 0.700 | – |" in text
    assert "| model | – | 0.710 | 0.610 | – |" in text
    assert "| reference: REF>ALT type only, fitted on train labels | 0.800 |" in text
    assert "| frozen backbone + head | 0.800 | 0.750 | 0.850 |" in text
    assert "| target | ≥ 0.80 | ≥ 0.65 |" in text and "| target | ≥ 0.90 |" in text
    assert "7 rows" in text and "10 test windows" in text
    assert sorted(os.listdir(out.parent)) == ["vb.json", "vb.md"]


def test_markdown_without_pretraining_metrics(tmp_path):
    results = {"label": "", "window": 64,
               "benchmark": {"records": 1, "cds": 1, "records_per_split": {"test": 1}, "labels": {"test": {}}},
               "pretraining": None, "zero_shot": {},
               "supervised": {"x": {"test": {"auroc_macro": 0.5}}},
               "coding_vs_noncoding": {"model_frozen": {"accuracy": 0.5}, "markov": {"accuracy": 0.5, "n_test": 2,
                                                                                       "k": 3}}}
    text = driver.markdown(results)
    assert "Model:" not in text and "| x | 0.500 |" in text

