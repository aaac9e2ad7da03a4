import json
import subprocess
import sys

import pytest
import torch
from torch.multiprocessing.spawn import ProcessExitedException
from hydra.utils import instantiate
from omegaconf import open_dict

from support import CONF_DIR, compose_config
from dnamamba.model import load_export

import dnamamba.pipelines.pretrain as pretrain


def test_pretrain_writes_export_and_metrics(pretrain_cfg, tmp_path):
    metrics = pretrain.run(pretrain_cfg())
    run = tmp_path / "run"
    for f in ("export/model.safetensors", "export/config.json", "export/metrics.json", "metrics.json",
              "checkpoints/last.ckpt"):
        assert (run / f).is_file(), f
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["val_bits_per_base"] == metrics["val_bits_per_base"]
    # A fresh model predicts close to uniform over the 256 bytes, 8 bits; a few steps already learn
    # that DNA uses four letters.
    assert 1.0 < saved["val_bits_per_base"] < 8.0
    assert saved["global_step"] == 6
    model = load_export(run / "export")
    assert model.cfg.d_model == 16 and model.cfg.n_layer == 2


def test_resume_from_checkpoint_continues_the_step_count(pretrain_cfg, tmp_path):
    pretrain.run(pretrain_cfg())
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = pretrain.run(pretrain_cfg("trainer.max_steps=9", f"ckpt_path={ckpt}"))
    assert metrics["global_step"] == 9


def test_training_lowers_validation_bits_per_base(pretrain_cfg):
    metrics = pretrain.run(pretrain_cfg("trainer.max_steps=60", "optim.lr=5e-3", "optim.warmup_steps=5",
                                        "model.d_model=32", "trainer.val_check_interval=20",
                                        "trainer.check_val_every_n_epoch=null"))
    history = [h["val_bits_per_base"] for h in metrics["val_history"]]
    assert len(history) >= 2
    assert history[-1] < history[0]
    assert history[-1] < 2.05  # four letters cost at most 2 bits; the model must have learnt them


@pytest.mark.parametrize("group", ["model", "optim", "trainer", "data"])
def test_every_config_group_instantiates(group, tmp_path):
    for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
        overrides = [f"{group}={option}", f"run_dir={tmp_path}"]
        if group == "trainer" and option == "gpu" and not torch.cuda.is_available():
            overrides.append("trainer.accelerator=cpu")  # everything else of the GPU config still builds
        cfg = compose_config("pretrain", overrides)
        obj = instantiate(cfg[group])
        assert obj is not None, (group, option)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_experiments_compose(experiment, tmp_path):
    cfg = compose_config("pretrain", [f"experiment={experiment}", f"run_dir={tmp_path}"])
    assert cfg.model.d_model > 0 and cfg.data.seq_len > 0


def test_cli_contract(tmp_path):
    """The command outside checks call, in a subprocess, exactly as documented."""
    from dnamamba.data.fasta import demo_genome_path

    run_dir = tmp_path / "cli_run"
    cmd = [sys.executable, "-m", "dnamamba.cli", "pretrain", f"data.fasta={demo_genome_path()}", "data.seq_len=128",
           "trainer.max_steps=3", f"run_dir={run_dir}", "model.d_model=16", "model.n_layer=1",
           "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "export" / "model.safetensors").is_file()
    assert (run_dir / "export" / "config.json").is_file()
    assert "val_bits_per_base" in json.loads((run_dir / "metrics.json").read_text())
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override, expected", [
    ("data.fasta={tmp}/missing.fa", "missing.fa"),
    ("data.seq_len=0", "data.seq_len=0"),  # raised inside Hydra's instantiate, which wraps it
])
def test_cli_bad_input_is_one_line(tmp_path, override, expected):
    cmd = [sys.executable, "-m", "dnamamba.cli", "pretrain", override.format(tmp=tmp_path), f"run_dir={tmp_path / 'r'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("dnamamba: error")]
    assert len(lines) == 1 and expected in lines[0]
    assert not (tmp_path / "r" / "export").exists()


def test_cli_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "dnamamba.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("pretrain", "embed", "score-variants", "demo"):
        assert command in proc.stdout


@pytest.mark.slow
def test_ddp_cpu_ranks_see_different_windows_and_end_equal(pretrain_cfg, tmp_path):
    cfg = pretrain_cfg("trainer=ddp_cpu", "trainer.max_steps=4", "trainer.enable_progress_bar=false")
    probe_dir = tmp_path / "probe"
    with open_dict(cfg):
        cfg.trainer.callbacks.append({"_target_": "ddp_probe.RankProbe", "out_dir": str(probe_dir)})
    # A spawned gloo rank occasionally dies with SIGABRT (2 of about 20 runs of this file on a 2-core
    # machine, cause not yet found); one retry keeps that known flake from failing the suite, while a
    # second failure or any wrong result still fails the test.
    try:
        metrics = pretrain.run(cfg)
    except ProcessExitedException as e:
        if "SIGABRT" not in str(e):
            raise
        metrics = pretrain.run(cfg)
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen0, seen1 = set(ranks[0]["windows"]), set(ranks[1]["windows"])
    assert len(seen0) == len(seen1) == 4 * cfg.data.batch_size
    assert not seen0 & seen1  # DistributedSampler gives each rank its own windows
    assert ranks[0]["weights_sha1"] == ranks[1]["weights_sha1"]  # gradients were all-reduced
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()
    assert metrics["global_step"] == 4
    assert 1.0 < metrics["val_bits_per_base"] < 8.0


@pytest.mark.parametrize("command, override, expected", [
    ("pretrain", "modle.d_model=3", "Could not override 'modle.d_model'"),
    ("pretrain", "model=huge", "Available options in 'model': base small tiny"),
    ("embed", "modle=x", "Could not override 'modle'"),
    ("score-variants", "windw=3", "Could not override 'windw'"),
])
def test_cli_override_mistakes_are_one_line(tmp_path, command, override, expected):
    proc = subprocess.run([sys.executable, "-m", "dnamamba.cli", command, override], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dnamamba: error: {command}: ")
    assert expected in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing was started, nothing written
