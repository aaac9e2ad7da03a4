"""Paths and config helpers shared by the tests (imported as `support`; tests/ is on sys.path)."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{name} not found in {SHARED_DATA} (large real data, not shipped with the package)")
    return path


# Small enough that a pretraining run takes a few seconds on 2 cores, while keeping every component.
SHRINK = [
    "model.d_model=16", "model.n_layer=2", "model.d_state=4",
    "data.seq_len=128", "data.batch_size=4",
    "trainer.max_steps=6", "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "optim.warmup_steps=2",
]


def compose_config(name: str, overrides: list[str]):
    """Compose conf/<name>.yaml with overrides, as the CLI would."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)
