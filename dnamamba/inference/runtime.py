"""What the inference pipelines share: settings from Hydra into a dataclass, the device, precision and
the progress bar."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Any, TypeVar

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..errors import InputError

C = TypeVar("C")

# Errors in the settings themselves (not in a file) are reported against this name.
SETTINGS = "settings"
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def config_from(cls: type[C], cfg: Any) -> C:
    """Build the dataclass `cls` from a Hydra config or a plain dict.

    An unknown key (a misspelt override), a required key left at `???` or a value of the wrong type
    becomes an InputError that names the setting, so it prints as one line.
    """
    if isinstance(cfg, cls):
        return cfg
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise InputError(SETTINGS, f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(names)}")
    missing = [k for k in names if data.get(k, _default(cls, k)) == MISSING]
    if missing:
        raise InputError(SETTINGS, "missing required setting(s): " + ", ".join(f"{k}=..." for k in missing))
    try:
        # Merging into the structured schema checks and converts types ("64" -> 64, "true" -> True).
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(merged)
    except Exception as e:  # omegaconf's ValidationError and friends
        key = getattr(e, "full_key", None)
        raise InputError(SETTINGS, f"bad setting{f' {key}' if key else ''}: {str(e).splitlines()[0]}") from None


def _default(cls, name: str):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise InputError(SETTINGS, f"{name}={value!r} is not one of {', '.join(map(str, choices))}")


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when there is a GPU, else CPU."""
    check_choice("device", name, DEVICES)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError(SETTINGS, "device=cuda but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """fp32: the model as loaded. bf16: autocast matmuls to bf16 (the scan keeps fp32 state)."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress_bar(enabled: bool, unit: str) -> Progress:
    """A rich progress bar on stderr, drawn only when stderr is a terminal (logs and pipes stay clean)."""
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
        MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, disable=not (enabled and console.is_terminal),
    )


def check_writable(path: str) -> None:
    """Fail before any work when the output could not be written; creates nothing."""
    if os.path.isdir(path):
        raise InputError(path, "output path is a directory")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # missing folders are created at write time, under this one
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(path, f"cannot create the output folder: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(path, f"the output folder {folder} is not writable")


@contextlib.contextmanager
def write_errors(path: str):
    """An OSError while the output is written (folder vanished, disk full, no permission) becomes one line."""
    try:
        yield
    except OSError as e:
        raise InputError(path, f"cannot write the output: {e.strerror or e}") from None


def note(message: str) -> None:
    """A one-line summary for the user, on stderr."""
    print(f"dnamamba: {message}", file=sys.stderr)
