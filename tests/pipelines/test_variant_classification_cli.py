"""build-variant-benchmark -> finetune (variant and sequence tasks) -> classify-variants, end to end on CPU
with a tiny model; outputs in VCF, TSV and parquet; one-line errors; nothing half-written."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pysam
import pytest
import torch
from omegaconf import OmegaConf

from dnamamba.data.variant_benchmark import BuildVariantBenchmarkConfig, build_variant_benchmark
from dnamamba.inference.classify import ClassifyVariantsConfig
from dnamamba.inference.markov import FitMarkovConfig
from dnamamba.model import load_export, save_export
from dnamamba.model.classifier import load_classifier_export
from dnamamba.pipelines import finetune

from support import FIXTURES, REPO, assert_one_line_error, compose_config, run_cli, shared_file, tiny_model

FAST = ["trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1", "optim.warmup_steps=2",
        "task.data.batch_size=16", "task.data.max_per_split=48"]


@pytest.mark.parametrize("name, schema", [("classify_variants", ClassifyVariantsConfig),
                                          ("build_variant_benchmark", BuildVariantBenchmarkConfig),
                                          ("fit_markov", FitMarkovConfig)])
def test_yaml_and_schema_have_the_same_keys(name, schema):
    yaml = OmegaConf.load(REPO / "conf" / f"{name}.yaml")
    assert set(yaml) - {"defaults", "hydra"} == {f.name for f in dataclasses.fields(schema)}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("vb") / "bench"
    build_variant_benchmark(BuildVariantBenchmarkConfig(gbk=str(shared_file("klebsiella_k_locus.gbk.gz")),
                                                        out=str(out), positions_per_cds=1))
    return out


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    return save_export(tiny_model(), tmp_path_factory.mktemp("bb") / "export")


def run_finetune(tmp_path, backbone, bench, *overrides):
    cfg = compose_config("finetune", [f"backbone={backbone}", f"run_dir={tmp_path / 'run'}",
                                      f"task.data.fasta={bench / 'records.fa'}", *FAST, *overrides])
    return finetune.run(cfg)


@pytest.fixture(scope="module")
def variant_export(tmp_path_factory, backbone, bench) -> str:
    metrics = run_finetune(tmp_path_factory.mktemp("ft"), backbone, bench, f"task.data.table={bench / 'labels.tsv'}",
                           "task.data.window=32", "trainer.max_epochs=2")
    return metrics["export_dir"]


def test_finetune_frozen_writes_metrics_and_a_self_describing_export(variant_export, backbone):
    run_dir = os.path.dirname(variant_export)
    metrics = json.loads(open(os.path.join(run_dir, "metrics.json")).read())
    assert metrics["classes"] == ["missense", "nonsense", "stop_lost", "synonymous"]
    for stage in ("val", "test"):
        present = [c for c in metrics["classes"] if f"auroc_{c}" in metrics[stage]]  # 48 rows may miss a rare class
        assert len(present) >= 2
        for c in present:
            assert 0.0 <= metrics[stage][f"auroc_{c}"] <= 1.0 and 0.0 <= metrics[stage][f"auprc_{c}"] <= 1.0
        assert metrics[stage]["auroc_macro"] == pytest.approx(np.mean([metrics[stage][f"auroc_{c}"] for c in present]))
    assert len(metrics["val_history"]) == 2
    model = load_classifier_export(variant_export)
    assert model.cfg.kind == "variant" and model.cfg.window == 32 and model.cfg.pooling == "site"
    frozen, original = load_export(variant_export).state_dict(), load_export(backbone).state_dict()
    assert all(torch.equal(frozen[k], original[k]) for k in original)  # a frozen backbone is the pretrained one
    assert os.path.isfile(os.path.join(run_dir, "checkpoints", "best.ckpt"))


def test_finetune_with_the_backbone_trained_changes_it(tmp_path, backbone, bench):
    metrics = run_finetune(tmp_path, backbone, bench, f"task.data.table={bench / 'labels.tsv'}",
                           "task.data.window=16", "task.module.freeze_backbone=false", "trainer.max_epochs=1")
    tuned, original = load_export(metrics["export_dir"]).state_dict(), load_export(backbone).state_dict()
    assert not metrics["freeze_backbone"]
    assert any(not torch.equal(tuned[k], original[k]) for k in original)


def test_sequence_classification_on_coding_and_noncoding_windows(tmp_path, backbone, bench):
    metrics = run_finetune(tmp_path, backbone, bench, "task=sequence_classification",
                           f"task.data.table={bench / 'intervals.tsv'}", "trainer.max_epochs=1")
    assert metrics["classes"] == ["coding", "noncoding"] and metrics["task"] == "sequence"
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    model = load_classifier_export(metrics["export_dir"])
    assert model.cfg.kind == "sequence" and model.cfg.window == 200


@pytest.fixture(scope="module")
def small_vcf(tmp_path_factory, bench) -> str:
    """The first 12 sites of the benchmark VCF, with one REF changed to a mismatch at the last record."""
    path = tmp_path_factory.mktemp("vcf") / "small.vcf"
    with pysam.VariantFile(str(bench / "variants.vcf.gz")) as src, \
            pysam.VariantFile(str(path), "w", header=src.header) as dst:
        for i, rec in zip(range(12), src):
            dst.write(rec)
    return str(path)


def classify(cwd, export, bench, vcf, out, *extra):
    return run_cli("classify-variants", cwd, f"model={export}", f"fasta={bench / 'records.fa'}", f"vcf={vcf}",
                   f"out={out}", "device=cpu", *extra)


def test_classify_variants_vcf(tmp_path, variant_export, bench, small_vcf):
    proc = classify(tmp_path, variant_export, bench, small_vcf, "out.vcf.gz")
    assert proc.returncode == 0, proc.stderr
    assert "classified 36 of 36 alleles in 12 records" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.vcf.gz", "out.vcf.gz.tbi"]
    with pysam.VariantFile(str(tmp_path / "out.vcf.gz")) as vcf:
        fields = [f"DNAMAMBA_P_{c}" for c in ("MISSENSE", "NONSENSE", "STOP_LOST", "SYNONYMOUS")]
        assert all(vcf.header.info[f].number == "A" and vcf.header.info[f].type == "Float" for f in fields)
        for rec in vcf:
            probs = np.array([rec.info[f] for f in fields])  # (classes, alts)
            np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
            assert "LABEL" in rec.info  # the input's INFO is kept


def test_classify_variants_tsv_and_parquet_agree(tmp_path, variant_export, bench, small_vcf):
    import pyarrow.parquet as pq

    for out in ("out.tsv", "out.parquet"):
        proc = classify(tmp_path, variant_export, bench, small_vcf, out)
        assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.parquet", "out.tsv"]
    rows = [line.split("\t") for line in (tmp_path / "out.tsv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    table = pq.read_table(str(tmp_path / "out.parquet")).to_pydict()
    assert list(table) == header and len(rows) == 36
    p_cols = [c for c in header if c.startswith("p_")]
    for i, row in enumerate(rows):
        assert table["pos"][i] == int(row[1]) and table["class"][i] == row[header.index("class")]
        probs = [table[c][i] for c in p_cols]
        assert sum(probs) == pytest.approx(1.0, abs=1e-6)
        assert [float(row[header.index(c)]) for c in p_cols] == pytest.approx(probs, rel=1e-5)


def test_a_failed_run_leaves_the_previous_output_and_no_temporary_file(tmp_path, variant_export, bench, small_vcf):
    bad = tmp_path / "bad.vcf"
    text = open(small_vcf).read().splitlines()
    last = text[-1].split("\t")
    last[3] = {"A": "C", "C": "G", "G": "T", "T": "A"}[last[3]]  # REF no longer the reference base
    bad.write_text("\n".join(text[:-1] + ["\t".join(last)]) + "\n")
    (tmp_path / "out.tsv").write_text("previous\n")
    proc = classify(tmp_path, variant_export, bench, bad, "out.tsv", "strict=true", "block_records=4")
    assert_one_line_error(proc, "bad.vcf", f"record {last[0]}:{last[1]}", "REF does not match")
    assert (tmp_path / "out.tsv").read_text() == "previous\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.vcf", "out.tsv"]


def test_classify_variants_bad_inputs(tmp_path, variant_export, backbone, bench, small_vcf):
    assert_one_line_error(classify(tmp_path, backbone, bench, small_vcf, "o.tsv"), "not a classifier export")
    assert_one_line_error(classify(tmp_path, variant_export, bench, small_vcf, "o.txt"), "o.txt",
                          "output must end in")
    assert_one_line_error(classify(tmp_path, variant_export, bench, tmp_path / "absent.vcf", "o.tsv"),
                          "absent.vcf", "not found")
    assert os.listdir(tmp_path) == []


def test_build_variant_benchmark_cli_errors(tmp_path):
    proc = run_cli("build-variant-benchmark", tmp_path, f"gbk={FIXTURES / 'genbank' / 'malformed.gbk'}",
                   "out=b", "strict=true")
    assert_one_line_error(proc, "malformed.gbk", "record BAD_LOC", "strict=true")
    proc = run_cli("build-variant-benchmark", tmp_path, "gbk=absent.gbk", "out=b")
    assert_one_line_error(proc, "absent.gbk", "not found")
    assert os.listdir(tmp_path) == []
    proc = run_cli("build-variant-benchmark", tmp_path, f"gbk={FIXTURES / 'genbank' / 'malformed.gbk'}", "out=b")
    assert proc.returncode == 0, proc.stderr
    assert "skipped:" in proc.stderr.strip().splitlines()[-1] and "record Biopython cannot parse 1" in proc.stderr


def test_finetune_bad_table_is_one_line(tmp_path, backbone, bench):
    table = tmp_path / "t.tsv"
    table.write_text("chrom\tpos\tref\talt\n")
    proc = run_cli("finetune", tmp_path, f"backbone={backbone}", f"task.data.fasta={bench / 'records.fa'}",
                   f"task.data.table={table}", f"run_dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "t.tsv", "no column(s) label")


def test_fit_markov_cli(tmp_path):
    proc = run_cli("fit-markov", tmp_path, "fasta=absent.fa", "out=m")
    assert_one_line_error(proc, "absent.fa", "not found")
    assert os.listdir(tmp_path) == []
