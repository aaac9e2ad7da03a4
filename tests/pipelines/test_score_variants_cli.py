"""`dnamamba score-variants` end to end in a subprocess: outputs, one-line errors, nothing half-written."""
from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path

import pysam
import pytest
from omegaconf import OmegaConf

from dnamamba.data.fasta import demo_genome_path
from dnamamba.inference.variants import ScoreVariantsConfig
from dnamamba.model import save_export
from support import LAMBDA, REPO, VCF_FIXTURES, assert_one_line_error, run_cli, tiny_model

FIXTURES = VCF_FIXTURES


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> str:
    return save_export(tiny_model(), tmp_path_factory.mktemp("cli") / "export")


def score_variants(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return run_cli("score-variants", cwd, "device=cpu", *overrides)


def test_yaml_and_schema_have_the_same_keys():
    yaml = OmegaConf.load(REPO / "conf" / "score_variants.yaml")
    assert set(yaml) - {"defaults", "hydra"} == {f.name for f in dataclasses.fields(ScoreVariantsConfig)}


def test_scores_into_bgzip_vcf_and_writes_nothing_else(tmp_path, export):
    work = tmp_path / "work"
    proc = score_variants(work, f"model={export}", f"fasta={demo_genome_path()}",
                          f"vcf={FIXTURES / 'lambda_variants.vcf'}", "out=scored.vcf.gz", "window=32",
                          "rc_average=true")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(work)) == ["scored.vcf.gz", "scored.vcf.gz.tbi"]  # no outputs/, .hydra/ or logs
    summary = proc.stderr.strip().splitlines()[-1]
    assert "scored 11 of 18 alleles in 15 records" in summary
    assert "symbolic or structural-variant allele 3" in summary and "contig not in the FASTA 1" in summary
    with pysam.VariantFile(str(work / "scored.vcf.gz")) as vcf:
        assert "averaged over both strands" in vcf.header.info["DNAMAMBA_LLR"].description
        scored = {r.id: r.info.get("DNAMAMBA_LLR") for r in vcf}
    assert len(scored["multiallelic"]) == 3 and scored["star"][1] is None and scored["ref_mismatch"] is None


def test_symbolic_alleles_are_skipped_and_counted_without_strict(tmp_path, export):
    proc = score_variants(tmp_path, f"model={export}", f"fasta={demo_genome_path()}",
                          f"vcf={FIXTURES / 'lambda_symbolic.vcf'}", f"out={tmp_path / 'o.tsv'}", "window=16")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("skipped: symbolic or structural-variant allele 1")
    rows = [line.split("\t") for line in (tmp_path / "o.tsv").read_text().splitlines()[1:]]
    assert [(r[1], r[6]) for r in rows] == [("1000", "ok"), ("15000", "symbolic")]


BAD_INPUTS = {
    "missing_vcf": (["vcf={tmp}/absent.vcf"], ["absent.vcf", "not found"]),
    "missing_fasta": (["fasta={tmp}/absent.fa"], ["absent.fa", "not found"]),
    "header_only": (["vcf={fixtures}/lambda_header_only.vcf"], ["lambda_header_only.vcf", "header only"]),
    "ref_mismatch_strict": (["vcf={fixtures}/lambda_ref_mismatch.vcf", "strict=true"],
                            ["lambda_ref_mismatch.vcf", f"record {LAMBDA}:21001", "REF does not match"]),
    "symbolic_strict": (["vcf={fixtures}/lambda_symbolic.vcf", "strict=true"],
                        ["lambda_symbolic.vcf", f"record {LAMBDA}:15000", "symbolic", "<DEL>"]),
    "export_without_config": (["model={tmp}"], ["config.json is missing"]),
    "bad_output_extension": (["out={tmp}/scored.txt"], ["scored.txt", "output must end in"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_leaves_no_output(tmp_path, export, case):
    changes, expected = BAD_INPUTS[case]
    settings = {"model": export, "fasta": demo_genome_path(), "vcf": str(FIXTURES / "lambda_variants.vcf"),
                "out": str(tmp_path / "scored.vcf.gz")}
    extra = []
    for change in changes:
        key, value = change.format(tmp=tmp_path, fixtures=FIXTURES).split("=", 1)
        if key in settings:
            settings[key] = value
        else:
            extra.append(f"{key}={value}")
    work = tmp_path / "work"
    proc = score_variants(work, *(f"{k}={v}" for k, v in settings.items()), *extra)
    assert_one_line_error(proc, *expected)
    assert os.listdir(work) == []
    assert sorted(os.listdir(tmp_path)) == ["work"]  # no output, no temporary file


def test_misspelt_setting_fails_without_traceback(tmp_path, export):
    proc = score_variants(tmp_path, f"modle={export}", f"fasta={demo_genome_path()}",
                          f"vcf={FIXTURES / 'lambda_variants.vcf'}", "out=x.vcf")
    assert proc.returncode != 0 and "modle" in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []
