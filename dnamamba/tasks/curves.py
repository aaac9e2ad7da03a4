"""Learning curves: training and validation bits per base against optimizer steps and against tokens,
with reference methods (compressors, Markov models) as horizontal lines, drawn to run_dir/curves.png.

`TrainingCurves` is a Lightning callback: it keeps the points (in checkpoints too, so a resumed run draws
the whole history) and redraws the file after every validation and when training ends, on global rank
zero. The file is written to a temporary name and renamed into place, so a reader never sees half a PNG.
matplotlib is an optional dependency (`pip install 'dnamamba[plot]'`): without it the plot is skipped
with a one-line warning and training goes on.
"""
from __future__ import annotations

import importlib.util
import math
import sys
from collections.abc import Mapping

import pytorch_lightning as pl

from dnamamba.io import atomic_path

TRAIN_KEY = "train/bits_per_base"
VAL_KEY = "val/bits_per_base"
TOKENS_KEY = "train/tokens"  # logged by TrainingMonitor, which must run before this callback
# Blue and red are the model's curves.
BASELINE_COLORS = ("tab:green", "tab:purple", "tab:brown", "tab:olive", "tab:gray", "tab:cyan", "tab:orange")


def plot_curves(path: str, train: list[dict], val: list[dict], baselines: Mapping[str, float] | None = None,
                title: str | None = None) -> None:
    """Two panels, bits/base against step and against tokens. `train` and `val` hold dicts with
    "step", "tokens" and "bits_per_base"."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, layout="constrained")
    for ax, x in zip(axes, ("step", "tokens")):
        if train:
            ax.plot([p[x] for p in train], [p["bits_per_base"] for p in train], color="tab:blue", lw=1,
                    alpha=0.8, label="training")
        if val:
            ax.plot([p[x] for p in val], [p["bits_per_base"] for p in val], color="tab:red", marker="o", ms=3,
                    lw=1.5, label="validation")
        for i, (name, bpb) in enumerate(sorted((baselines or {}).items(), key=lambda kv: -kv[1])):
            ax.axhline(bpb, color=BASELINE_COLORS[i % len(BASELINE_COLORS)], ls="--", lw=1, label=f"{name} ({bpb:.3f})")
        ax.set_xlabel("optimizer step" if x == "step" else "tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bits per base")
    # A fresh model starts near 8 bits (uniform over 256 bytes) and drops below 2.2 within a few hundred
    # steps; from then on the part that matters is near the baselines, so the early steps are cut off.
    values = [p["bits_per_base"] for p in train + val] + list((baselines or {}).values())
    if values:
        low, high = min(values), max(values)
        axes[0].set_ylim(max(0.0, low - 0.05), (high if low > 2.2 else min(high, 2.6)) + 0.05)
    axes[1].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


class TrainingCurves(pl.Callback):
    """Collects the curves during `fit` and draws them to `path`; one training point per
    `trainer.log_every_n_steps` optimizer steps, the mean over the batches since the last point."""

    def __init__(self, path: str, baselines: Mapping[str, float] | None = None, title: str | None = None):
        self.path = path
        self.baselines = dict(baselines or {})
        self.title = title
        self.train: list[dict] = []
        self.val: list[dict] = []
        self._sum = 0.0
        self._count = 0
        self._tokens = float("nan")  # train/tokens at the last training batch
        self._warned = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        tokens = trainer.callback_metrics.get(TOKENS_KEY)
        if tokens is not None:
            self._tokens = float(tokens)
        bpb = trainer.callback_metrics.get(TRAIN_KEY)
        if bpb is not None and math.isfinite(float(bpb)):
            self._sum += float(bpb)
            self._count += 1
        step = trainer.global_step
        last = self.train[-1]["step"] if self.train else 0
        if self._count and step - last >= max(1, trainer.log_every_n_steps):
            self.train.append({"step": step, "tokens": self._tokens, "bits_per_base": self._sum / self._count})
            self._sum, self._count = 0.0, 0

    def on_validation_end(self, trainer, pl_module):
        bpb = trainer.callback_metrics.get(VAL_KEY)
        if trainer.sanity_checking or bpb is None:
            return
        point = {"step": trainer.global_step, "tokens": self._tokens, "bits_per_base": float(bpb)}
        if self.val and self.val[-1]["step"] == point["step"]:
            self.val[-1] = point  # validated twice at one step (after fit stops between validations)
        else:
            self.val.append(point)
        self.draw(trainer)

    def on_train_end(self, trainer, pl_module):
        self.draw(trainer)

    def draw(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not (self.train or self.val):
            return
        if importlib.util.find_spec("matplotlib") is None:
            if not self._warned:
                print(f"dnamamba: warning: matplotlib is not installed, so {self.path} is not drawn "
                      f"(pip install 'dnamamba[plot]')", file=sys.stderr)
                self._warned = True
            return
        plot_curves(self.path, self.train, self.val, self.baselines, self.title)

    def state_dict(self) -> dict:
        return {"train": self.train, "val": self.val, "tokens": self._tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train = list(state_dict.get("train", []))
        self.val = list(state_dict.get("val", []))
        self._tokens = float(state_dict.get("tokens", float("nan")))
