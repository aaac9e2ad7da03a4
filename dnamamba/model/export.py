"""The export directory: `model.safetensors` + `config.json`, everything embed and scoring need.

config.json holds the MambaConfig fields under "model" and a format tag, so an export is
self-describing and loads without the training configs.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_path
from .config import MambaConfig
from .mamba import MambaLM

EXPORT_FORMAT = "dnamamba-export"
EXPORT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def save_export(model: MambaLM, directory: str | os.PathLike, extra: dict | None = None) -> str:
    """Write weights and config into `directory` (created); each file lands atomically."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(os.path.join(directory, WEIGHTS)) as tmp:
        save_file(tensors, tmp, metadata={"format": EXPORT_FORMAT})
    meta = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": model.cfg.to_dict(), **(extra or {})}
    with atomic_path(os.path.join(directory, CONFIG)) as tmp:
        with open(tmp, "w") as f:
            json.dump(meta, f, indent=2)
    return directory


def load_export(directory: str | os.PathLike, device: str | torch.device = "cpu",
                scan_backend: str | None = None) -> MambaLM:
    """Load an export directory into an eval-mode MambaLM; bad or partial exports raise InputError."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise InputError(directory, "export directory not found")
    cfg_path = os.path.join(directory, CONFIG)
    weights_path = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(cfg_path):
        raise InputError(directory, f"not an export directory: {CONFIG} is missing")
    if not os.path.isfile(weights_path):
        raise InputError(directory, f"not an export directory: {WEIGHTS} is missing")
    try:
        with open(cfg_path) as f:
            meta = json.load(f)
        cfg = MambaConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(cfg_path, f"unreadable export config ({e})") from None
    if scan_backend is not None:
        cfg.scan_backend = scan_backend
    model = MambaLM(cfg)
    try:
        state = load_file(weights_path)
        model.load_state_dict(state)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise InputError(weights_path, f"weights do not match config.json ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()
