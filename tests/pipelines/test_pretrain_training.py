"""Long-context training features and watching/resuming runs, on tiny CPU runs of the real pipeline."""
import csv
import json
import os

import pytest
from omegaconf import open_dict

from support import SHRINK, assert_one_line_error, compose_config, run_cli
from dnamamba.errors import InputError

import dnamamba.pipelines.pretrain as pretrain


def with_probe(cfg, out):
    with open_dict(cfg):
        cfg.trainer.callbacks.append({"_target_": "batch_probe.BatchProbe", "out": str(out)})
    return cfg


def csv_rows(run_dir):
    [path] = run_dir.glob("logs/version_*/metrics.csv")
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def warmup_run(tmp_path_factory):
    """6 optimizer steps of 2 batches each; 512 tokens a batch; windows of 32, 64, then 128 bases."""
    tmp = tmp_path_factory.mktemp("warmup")
    cfg = compose_config("pretrain", [*SHRINK, f"run_dir={tmp / 'run'}", "data.tokens_per_step=512",
                                      "data.seq_len_warmup.start=32", "data.seq_len_warmup.steps=4",
                                      "trainer.accumulate_grad_batches=2", "trainer.max_steps=6"])
    with pytest.MonkeyPatch.context() as mp:  # the per-test cache fixture does not reach module fixtures
        mp.setenv("DNAMAMBA_CACHE", os.environ.get("DNAMAMBA_TEST_CACHE")
                  or str(tmp_path_factory.getbasetemp() / "dnamamba-cache"))
        metrics = pretrain.run(with_probe(cfg, tmp / "batches.json"))
    return tmp / "run", metrics, json.loads((tmp / "batches.json").read_text())


def test_seq_len_warmup_changes_the_batch_shape_at_constant_tokens(warmup_run):
    _, metrics, batches = warmup_run
    train = [(b["step"], tuple(b["shape"])) for b in batches if b["stage"] == "train"]
    # 2 stages over 4 steps: 32 bases at steps 0-1, 64 at steps 2-3, then the target 128.
    assert train == [(s, (512 // 32, 32)) for s in (0, 0, 1, 1)] + [(s, (512 // 64, 64)) for s in (2, 2, 3, 3)] \
        + [(s, (4, 128)) for s in (4, 4, 5, 5)]
    val = [tuple(b["shape"]) for b in batches if b["stage"] == "val"]
    assert val and all(shape[1] == 128 for shape in val)  # validation always at the target length
    assert metrics["seq_len"] == 128


def test_accumulation_counts_optimizer_steps_and_all_tokens(warmup_run):
    run_dir, metrics, batches = warmup_run
    assert metrics["global_step"] == 6
    assert len([b for b in batches if b["stage"] == "train"]) == 12  # 2 batches per optimizer step
    assert metrics["tokens"] == 12 * 512
    assert json.loads((run_dir / "metrics.json").read_text())["tokens"] == 12 * 512


def test_csv_log_has_lr_tokens_per_second_and_seq_len(warmup_run):
    run_dir, _, _ = warmup_run
    rows = [r for r in csv_rows(run_dir) if r["train/loss"]]
    assert len(rows) >= 5
    for r in rows:
        assert float(r["train/tokens_per_s"]) > 0
        assert 0 < float(r["train/lr"]) <= 2e-3 * (1 + 1e-6)  # logged as float32
        assert int(float(r["train/tokens"])) % 512 == 0
    # optim.warmup_steps=2: the first logged step (global step 1) is at the full rate, then the cosine falls.
    lrs = [float(r["train/lr"]) for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] == pytest.approx(2e-3)
    assert {float(r["train/seq_len"]) for r in rows} == {32.0, 64.0, 128.0}
    assert "train/peak_memory_gb" not in rows[0]  # CPU: no GPU memory to report


def test_curves_png_is_written(warmup_run):
    pytest.importorskip("matplotlib")
    run_dir, _, _ = warmup_run
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.glob(".curves.png*"))


def test_resume_auto_starts_fresh_then_continues(tmp_path, capsys):
    run_dir = tmp_path / "run"
    # Validation every 3 steps, so the first run ends (step 4) between validations: last.ckpt must still
    # hold step 4, not the step-3 validation's checkpoint.
    common = [*SHRINK, f"run_dir={run_dir}", "resume=auto", "trainer.check_val_every_n_epoch=null",
              "trainer.val_check_interval=3"]
    first = pretrain.run(with_probe(compose_config("pretrain", [*common, "trainer.max_steps=4"]), tmp_path / "1.json"))
    assert "no checkpoint in" in capsys.readouterr().err
    assert first["global_step"] == 4
    second = pretrain.run(with_probe(compose_config("pretrain", [*common, "trainer.max_steps=7"]), tmp_path / "2.json"))
    assert f"continuing from {run_dir / 'checkpoints' / 'last.ckpt'}" in capsys.readouterr().err
    assert second["global_step"] == 7
    assert second["tokens"] == 7 * 4 * 128  # the token count carries over
    steps = [h["step"] for h in second["val_history"]]
    assert steps == sorted(steps) and 3 in steps and steps[-1] == 7
    # The second run's log starts where the first stopped.
    rows = [r for r in csv_rows_version(run_dir, 1) if r["train/step"]]
    assert min(float(r["train/step"]) for r in rows) == 5.0
    # The resumed run does not replay the first run's batches: the shuffle order follows the epoch.
    seen = [{b["sha1"] for b in json.loads((tmp_path / f"{i}.json").read_text()) if b["stage"] == "train"}
            for i in (1, 2)]
    assert len(seen[0]) == 4 and len(seen[1]) == 3 and not seen[0] & seen[1]


def csv_rows_version(run_dir, version):
    with open(run_dir / "logs" / f"version_{version}" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_time_budget_stops_a_run_and_resume_auto_continues_it(tmp_path):
    run_dir = tmp_path / "run"
    common = [*SHRINK, f"run_dir={run_dir}", "resume=auto", "trainer.max_steps=100000",
              "trainer.max_time=00:00:00:01", "trainer.check_val_every_n_epoch=null",
              "trainer.val_check_interval=100000"]
    first = pretrain.run(compose_config("pretrain", common))
    assert 1 <= first["global_step"] < 100000
    second = pretrain.run(compose_config("pretrain", common))
    assert second["global_step"] > first["global_step"]


def test_resume_auto_needs_a_fixed_run_dir():
    cfg = compose_config("pretrain", [*SHRINK, "resume=auto"])  # run_dir: the timestamped default
    with pytest.raises(InputError, match="resume=auto needs run_dir=DIR"):
        pretrain.run(cfg)


@pytest.mark.parametrize("overrides, expected", [
    (["resume=auto"], "resume=auto needs run_dir=DIR"),
    (["run_dir=r", "data.seq_len=1024", "data.tokens_per_step=1536"], "data.tokens_per_step=1536"),
    (["run_dir=r", "data.seq_len_warmup.start=100", "data.seq_len_warmup.steps=10"], "data.seq_len_warmup"),
])
def test_cli_errors_are_one_line(tmp_path, overrides, expected):
    proc = run_cli("pretrain", tmp_path, *overrides)
    assert proc.returncode == 2
    assert_one_line_error(proc, expected)
    assert not list(tmp_path.glob("**/checkpoints"))
