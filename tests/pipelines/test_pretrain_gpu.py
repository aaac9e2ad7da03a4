"""Pretraining on CUDA: bf16, sequence-length warmup, peak memory and tokens/s in the log, resume=auto."""
import csv

import pytest
import torch

from support import SHRINK, compose_config

import dnamamba.pipelines.pretrain as pretrain

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_gpu_run_logs_peak_memory_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    common = [*SHRINK, "trainer=gpu", f"run_dir={run_dir}", "resume=auto", "data.seq_len=4096",
              "data.tokens_per_step=16384", "data.seq_len_warmup.start=1024", "data.seq_len_warmup.steps=4",
              "trainer.check_val_every_n_epoch=null", "trainer.val_check_interval=4"]
    first = pretrain.run(compose_config("pretrain", [*common, "trainer.max_steps=6"]))
    second = pretrain.run(compose_config("pretrain", [*common, "trainer.max_steps=10"]))
    assert (first["global_step"], second["global_step"]) == (6, 10)
    assert second["tokens"] == 10 * 16384
    with open(run_dir / "logs" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["train/loss"]]
    assert all(float(r["train/peak_memory_gb"]) > 0 for r in rows)
    assert all(float(r["train/tokens_per_s"]) > 0 for r in rows)
    assert {float(r["train/seq_len"]) for r in rows} >= {1024.0, 4096.0}
    assert 1.0 < second["val_bits_per_base"] < 8.0
