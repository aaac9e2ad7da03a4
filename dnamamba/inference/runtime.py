"""What the inference pipelines share: settings from Hydra into a dataclass, the device, precision and
the progress bar."""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

from ..errors import InputError
from ..io import check_writable  # noqa: F401  (the inference commands import it from here)
from ..settings import SETTINGS, build

C = TypeVar("C")

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")


def config_from(cls: type[C], cfg: Any) -> C:
    """Build the dataclass `cls` from a Hydra config or a plain dict (see `dnamamba.settings.build`):
    an unknown key (a misspelt override), a required key left at `???`, a value of the wrong type or
    out of range becomes a one-line InputError that names the setting."""
    return build(cls, cfg)


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
