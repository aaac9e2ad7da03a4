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


def test_symbolic_allele_with_undeclared_end_is_written_through(tmp_path, export):
    """A symbolic ALT whose INFO/END the header never declares is kept, unscored, in BCF output (it
    used to end in a pysam traceback)."""
    vcf = tmp_path / "end.vcf"
    vcf.write_text(f"##fileformat=VCFv4.2\n##contig=<ID={LAMBDA},length=48502>\n"
                   "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   f"{LAMBDA}\t1000\tsnv\tA\tG\t.\t.\t.\n{LAMBDA}\t15000\tdel\tG\t<DEL>\t.\t.\tEND=15100\n")
    proc = score_variants(tmp_path / "work", f"model={export}", f"fasta={demo_genome_path()}", f"vcf={vcf}",
                          "out=scored.bcf", "window=16")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("skipped: symbolic or structural-variant allele 1")
    with pysam.VariantFile(str(tmp_path / "work" / "scored.bcf")) as scored:
        records = list(scored)
    assert [(r.id, r.stop, "DNAMAMBA_LLR" in r.info) for r in records] == [("snv", 1000, True), ("del", 15100, False)]


def test_no_contig_in_the_fasta_is_an_error_with_a_chr_hint(tmp_path, export):
    """A VCF whose contigs all miss the FASTA is an error naming the prefix mismatch (it used to score 0 of
    N records and exit 0)."""
    fasta = tmp_path / "ref.fa"
    fasta.write_text(">20\n" + "ACGT" * 100 + "\n")
    vcf = tmp_path / "chr.vcf"
    vcf.write_text("##fileformat=VCFv4.2\n#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n"
                   "chr20\t5\t.\tA\tG\t.\t.\t.\n")
    work = tmp_path / "work"
    proc = score_variants(work, f"model={export}", f"fasta={fasta}", f"vcf={vcf}", "out=scored.vcf.gz")
    assert_one_line_error(proc, "chr.vcf", "none of its contigs", "'chr' prefix", "'chr20' here, '20' in the FASTA")
    assert os.listdir(work) == []


def test_table_in_parquet_out_with_regions_shard_and_mean(tmp_path, export):
    """A GPN/TraitGym-style table through the CLI, with the new settings as Hydra overrides."""
    table = tmp_path / "variants.tsv"
    table.write_text("chrom\tpos\tref\talt\tlabel\n" + "".join(
        f"{LAMBDA}\t{pos}\t{ref}\t{alt}\t{pos % 2}\n"
        for pos, ref, alt in [(1000, "A", "G"), (3000, "TGG", "CAT"), (5000, "C", "CTTA"), (10000, "T", "TA"),
                              (30000, "A", "C")]))
    proc = score_variants(tmp_path / "work", f"model={export}", f"fasta={demo_genome_path()}", f"vcf={table}",
                          "out=part1.parquet", "window=64", "reduce=mean", "context=tile", "tile_size=500",
                          "shard=1/2", f"regions=[{LAMBDA}:1-20000,{LAMBDA}:40000-48502]")
    assert proc.returncode == 0, proc.stderr
    assert "shard 1/2: records 3-4 of 4 in the regions" in proc.stderr
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "work" / "part1.parquet").to_pylist()
    assert [(r["pos"], r["label"], r["status"]) for r in rows] == [(5000, 0, "ok"), (10000, 0, "ok")]
    assert all(abs(r["score"]) < 10 for r in rows)  # per-base means, not sums over the window
