"""Thin Hydra entry points, one per `dnamamba` command; each wraps a plain `run(cfg)`."""
from __future__ import annotations

import importlib.resources

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


def store_packaged_config(name: str) -> None:
    """Register conf/<name>.yaml in Hydra's ConfigStore, for `@hydra.main(config_path=None, config_name=name)`.

    conf/ also holds pretraining's `model/` config group, and Hydra reads `model=...` as a choice in that
    group whenever conf/ is on the search path. For embed and score-variants `model` is the export
    directory, so their configs are served from the ConfigStore and conf/ stays off the search path.
    """
    text = importlib.resources.files("dnamamba.conf").joinpath(f"{name}.yaml").read_text()
    ConfigStore.instance().store(name=name, node=OmegaConf.create(text))
