import importlib.util

import pytest
from pytorch_lightning.loggers import CSVLogger

from support import CONF_DIR, compose_config
from dnamamba.errors import InputError
from dnamamba.tasks.loggers import build_logger


def test_logger_group_has_csv_tensorboard_and_wandb_with_csv_default(tmp_path):
    assert sorted(p.stem for p in (CONF_DIR / "logger").glob("*.yaml")) == ["csv", "tensorboard", "wandb"]
    cfg = compose_config("pretrain", [f"run_dir={tmp_path}"])
    logger = build_logger(cfg.logger)
    assert isinstance(logger, CSVLogger)
    assert logger.log_dir == str(tmp_path / "logs" / "version_0")


def test_tensorboard_logger_instantiates(tmp_path):
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        pytest.skip("tensorboard is not installed (pip install 'dnamamba[tensorboard]')")
    from pytorch_lightning.loggers import TensorBoardLogger

    logger = build_logger(compose_config("pretrain", [f"run_dir={tmp_path}", "logger=tensorboard"]).logger)
    assert isinstance(logger, TensorBoardLogger)
    assert logger.log_dir == str(tmp_path / "logs" / "version_0")


def test_wandb_logger_is_offline_or_a_one_line_error(tmp_path, monkeypatch):
    cfg = compose_config("pretrain", [f"run_dir={tmp_path}", "logger=wandb"]).logger
    assert cfg.offline is True
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(InputError) as e:
            build_logger(cfg)
        assert "logger=wandb needs the wandb package" in str(e.value) and "pip install wandb" in str(e.value)
        assert "\n" not in str(e.value)
    else:
        monkeypatch.setenv("WANDB_MODE", "offline")
        assert type(build_logger(cfg)).__name__ == "WandbLogger"


def test_missing_tensorboard_is_a_one_line_error(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("tensorboard") else real(name, *a))
    cfg = compose_config("pretrain", [f"run_dir={tmp_path}", "logger=tensorboard"]).logger
    with pytest.raises(InputError, match=r"logger=tensorboard needs the tensorboard package.*dnamamba\[tensorboard\]"):
        build_logger(cfg)


def test_no_logger():
    assert build_logger(None) is False
