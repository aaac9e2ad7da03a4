import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from support import CONF_DIR, SHRINK, assert_one_line_error, compose_config, run_cli, start_cli
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
    ("pretrain", "modle.d_model=3", "Could not override 'modle.d_model': no such setting (did you mean model.d_model?)"),
    ("pretrain", "data.seq_lenn=64", "Could not override 'data.seq_lenn': no such setting (did you mean data.seq_len?)"),
    ("pretrain", "model=huge", "Available options in 'model': base small tiny"),
    ("embed", "modle=x", "Could not override 'modle': no such setting (did you mean model?)"),
    ("score-variants", "windw=3", "Could not override 'windw': no such setting (did you mean window?)"),
])
def test_cli_override_mistakes_are_one_line(tmp_path, command, override, expected):
    proc = subprocess.run([sys.executable, "-m", "dnamamba.cli", command, override], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dnamamba: error: {command}: ")
    assert expected in lines[0]
    assert "+" not in lines[0]  # no `+key` hint: appending a key only leads into the next error
    assert list(tmp_path.iterdir()) == []  # nothing was started, nothing written


@pytest.mark.parametrize("override, expected", [
    ("data.seq_len=abc", ["data.seq_len", "could not be converted to Integer"]),
    ("data.val_fraction=1.5", ["data.val_fraction=1.5", "[0, 1)"]),
    ("model.d_model=0", ["model.d_model=0", "at least 1"]),
    ("model.d_state=four", ["model.d_state", "could not be converted to Integer"]),
    ("optim.lr=-0.001", ["optim.lr=-0.001", "must be positive"]),
    ("optim.betas=[0.9,1.5]", ["optim.betas", "[0, 1)"]),
    ("trainer.max_steps=-5", ["trainer.max_steps=-5", "at least 1"]),
    ("trainer.max_steps=0", ["trainer.max_steps=0", "untrained model"]),
    ("trainer.max_steps=ten", ["trainer.max_steps='ten'", "integer"]),
    ("trainer.devices=abc", ["trainer", "devices"]),
    ("trainer.gradient_clip_val=-1", ["trainer.gradient_clip_val=-1", ">= 0"]),
])
def test_bad_settings_fail_before_the_run_starts(tmp_path, override, expected):
    run_dir = tmp_path / "run"
    proc = run_cli("pretrain", tmp_path / "work", override, f"run_dir={run_dir}")
    assert_one_line_error(proc, *expected)
    assert not run_dir.exists()  # no .hydra/, no pretrain.log
    assert os.listdir(tmp_path / "work") == []


def test_unwritable_run_dir_fails_before_the_run_starts(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o555)
    proc = run_cli("pretrain", tmp_path / "work", f"run_dir={parent}/run", unprivileged=True)
    parent.chmod(0o755)
    assert_one_line_error(proc, f"{parent}/run", "not writable")
    assert os.listdir(parent) == []


def _wait_for_checkpoint(proc: subprocess.Popen, folder: Path, timeout: float = 300) -> None:
    """Until training has written its first checkpoint (the end of epoch 0), so the signal lands mid-run."""
    deadline = time.time() + timeout
    while not (folder.is_dir() and any(p.suffix == ".ckpt" for p in folder.iterdir())):
        if proc.poll() is not None:
            pytest.fail(f"pretrain ended before its first checkpoint: {proc.stderr.read()[-3000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("no checkpoint in time")
        time.sleep(0.1)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_stopped_run_exits_nonzero_leaves_last_ckpt_and_resumes(tmp_path, signum, status):
    run_dir = tmp_path / "run"
    common = [*SHRINK, f"run_dir={run_dir}", "model.n_layer=1"]
    proc = start_cli("pretrain", tmp_path / "work", *common, "trainer.max_steps=1000000")
    _wait_for_checkpoint(proc, run_dir / "checkpoints")
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == status, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    match = re.fullmatch(rf"dnamamba: interrupted by {signal.Signals(signum).name} at step (\d+); "
                         rf"resume with ckpt_path=(\S+)", last)
    assert match, stderr[-3000:]
    step, ckpt = int(match.group(1)), match.group(2)
    assert ckpt == str(run_dir / "checkpoints" / "last.ckpt")
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == step
    assert not (run_dir / "export").exists()  # nothing was exported from an unfinished run
    resumed = run_cli("pretrain", tmp_path / "work", *common, f"trainer.max_steps={step + 3}", f"ckpt_path={ckpt}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == step + 3


def test_gloo_process_group_is_destroyed_before_interpreter_exit(tmp_path):
    """What keeps spawned CPU DDP ranks from aborting as they exit: the task's setup arranges for the gloo
    process group to be destroyed while the interpreter is whole (see dnamamba/tasks/distributed.py)."""
    script = f"""
import atexit, torch.distributed as dist
from dnamamba.model import MambaConfig
from dnamamba.tasks.optim import OptimConfig
from dnamamba.tasks.pretrain import CausalLMTask
dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=0, world_size=1)
# atexit runs last-in first-out: this runs after whatever setup() registered.
atexit.register(lambda: print("group alive at exit:", dist.is_initialized()))
CausalLMTask(MambaConfig(d_model=8, n_layer=1, d_state=2), OptimConfig()).setup("fit")
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "group alive at exit: False"
