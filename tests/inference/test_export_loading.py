"""`dnamamba embed` and `score-variants` on the export layouts they accept: a directory that transformers wrote, a
version-1 export, and a broken config.json (one line naming the file and the field)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dnamamba import alphabet
from dnamamba.data.fasta import demo_genome_path
from dnamamba.model import load_export, save_export
from support import FIXTURES, LAMBDA, REPO, assert_one_line_error, run_cli

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")


def test_embed_reads_a_directory_written_by_transformers(tmp_path, lambda_fasta):
    torch.manual_seed(3)
    cfg = transformers.MambaConfig(vocab_size=256, hidden_size=24, num_hidden_layers=2, state_size=4)
    hf = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path / "hf")
    bed = tmp_path / "regions.bed"
    bed.write_text(f"{LAMBDA}\t100\t400\ta\n{LAMBDA}\t25000\t25300\tb\n")
    proc = run_cli("embed", tmp_path / "work", "device=cpu", f"model={tmp_path / 'hf'}",
                   f"fasta={demo_genome_path()}", f"bed={bed}", "out=emb.npy", "pooling=mean")
    assert proc.returncode == 0, proc.stderr
    tokens = torch.stack([alphabet.encode(lambda_fasta.fetch(LAMBDA, s, s + 300)) for s in (100, 25000)])
    with torch.no_grad():
        expected = hf.backbone(tokens).last_hidden_state.mean(1)  # (2, 24): transformers' final hidden states
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "work" / "emb.npy")), expected,
                               rtol=1e-5, atol=1e-5)


def test_version_1_export_scores_variants_as_its_new_layout_does(tmp_path):
    v1 = FIXTURES / "export_v1"
    v2 = save_export(load_export(v1), tmp_path / "v2")
    outputs = []
    for name, export in (("v1", v1), ("v2", v2)):
        out = tmp_path / f"{name}.tsv"
        proc = run_cli("score-variants", tmp_path / "work", "device=cpu", f"model={export}",
                       f"fasta={demo_genome_path()}", f"vcf={REPO / 'dnamamba' / 'resources' / 'lambda_demo.vcf'}",
                       f"out={out}", "window=32")
        assert proc.returncode == 0, proc.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) > 1


def test_broken_export_config_is_one_line_naming_file_and_field(tmp_path):
    export = tmp_path / "export"
    shutil.copytree(FIXTURES / "export_v1", export)
    meta = json.loads((export / "config.json").read_text())
    meta["model"]["d_model"] = "64"
    (export / "config.json").write_text(json.dumps(meta))
    for command, extra in (("embed", ["out=emb.npy"]),
                           ("score-variants", [f"vcf={REPO / 'dnamamba' / 'resources' / 'lambda_demo.vcf'}",
                                               "out=scored.tsv"])):
        work = tmp_path / command
        proc = run_cli(command, work, "device=cpu", f"model={export}", f"fasta={demo_genome_path()}", *extra)
        assert_one_line_error(proc, f"{export / 'config.json'}: field model.d_model: expected an integer")
        assert list(work.iterdir()) == []
