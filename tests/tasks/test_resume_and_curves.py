import importlib.util
from datetime import timedelta

import pytest
from pytorch_lightning.callbacks import Timer

from dnamamba.errors import InputError
from dnamamba.tasks.curves import TrainingCurves, plot_curves
from dnamamba.tasks.resume import RunTimer, checkpoint_to_resume, last_checkpoint


def test_checkpoint_to_resume(tmp_path):
    run_dir = str(tmp_path / "run")
    assert checkpoint_to_resume(run_dir, None, None, False) is None
    assert checkpoint_to_resume(run_dir, "auto", None, False) is None  # nothing there yet: a fresh start
    last = last_checkpoint(run_dir)
    assert last == str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert checkpoint_to_resume(run_dir, "auto", None, False) == last
    assert checkpoint_to_resume(run_dir, None, last, True) == last  # ckpt_path works with any run_dir

    with pytest.raises(InputError, match="resume=auto needs run_dir=DIR"):
        checkpoint_to_resume(run_dir, "auto", None, True)
    with pytest.raises(InputError, match="give one of them"):
        checkpoint_to_resume(run_dir, "auto", last, False)
    with pytest.raises(InputError, match="resume='yes': must be auto"):
        checkpoint_to_resume(run_dir, "yes", None, False)
    with pytest.raises(InputError, match="not found"):
        checkpoint_to_resume(run_dir, None, str(tmp_path / "missing.ckpt"), False)


def test_run_timer_gives_a_resumed_run_the_whole_budget():
    saved = {"time_elapsed": {"train": 600.0, "validate": 0.0}}
    lightning = Timer(duration=timedelta(minutes=10))
    lightning.load_state_dict(saved)
    assert lightning.time_remaining() <= 0  # Lightning's own Timer would stop a resumed run at once
    ours = RunTimer(duration=timedelta(minutes=10))
    ours.load_state_dict(saved)
    assert ours.time_elapsed() == 0 and ours.time_remaining() == 600


def test_plot_curves_writes_a_png_with_baselines(tmp_path):
    pytest.importorskip("matplotlib")
    train = [{"step": s, "tokens": 512 * s, "bits_per_base": 2.5 - 0.01 * s} for s in range(1, 50)]
    val = [{"step": 25, "tokens": 512 * 25, "bits_per_base": 2.2}, {"step": 49, "tokens": 512 * 49, "bits_per_base": 2.0}]
    path = tmp_path / "curves.png"
    plot_curves(str(path), train, val, {"gzip -9": 2.15, "markov order 10": 1.89}, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left beside it


def test_curves_without_matplotlib_warn_once(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))

    class Trainer:
        is_global_zero = True

    curves = TrainingCurves(str(tmp_path / "curves.png"))
    curves.val.append({"step": 1, "tokens": 1.0, "bits_per_base": 2.0})
    curves.draw(Trainer())
    curves.draw(Trainer())
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"dnamamba: warning: matplotlib is not installed, so {tmp_path / 'curves.png'} is not drawn "
                   f"(pip install 'dnamamba[plot]')"]
    assert not (tmp_path / "curves.png").exists()
