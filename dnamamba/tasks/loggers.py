"""The training logger from the `logger` config group (conf/logger/): csv (default), tensorboard, wandb.

TensorBoard and Weights & Biases need packages that dnamamba does not install by default; choosing one
that is missing is a one-line error that says what to install, before any training starts.
"""
from __future__ import annotations

import importlib.util

from hydra.utils import instantiate
from pytorch_lightning.loggers import Logger

from dnamamba.errors import InputError

# Logger class name -> (the config option, packages any one of which is enough, how to install one).
NEEDS = {
    "TensorBoardLogger": ("logger=tensorboard", ("tensorboard", "tensorboardX"), "pip install 'dnamamba[tensorboard]'"),
    "WandbLogger": ("logger=wandb", ("wandb",), "pip install wandb"),
}


def build_logger(cfg) -> Logger | bool:
    """Instantiate the logger config (`_target_` plus keyword arguments). `logger=null` gives False, which
    Lightning's Trainer reads as no logger (its None would mean a default one)."""
    if cfg is None or cfg is False:
        return False
    option, packages, how = NEEDS.get(str(cfg.get("_target_", "")).rsplit(".", 1)[-1], (None, (), ""))
    if packages and not any(importlib.util.find_spec(p) is not None for p in packages):
        raise InputError(None, f"{option} needs the {packages[0]} package, which is not installed: {how} "
                               f"(or use logger=csv)")
    return instantiate(cfg)
