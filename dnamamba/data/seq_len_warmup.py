"""Sequence-length warmup: train on short contexts first, doubling the length up to the target.

The schedule is a function of the optimizer step alone. Over the first `steps` steps the length doubles
from `start` to the target in equal stages (start, 2 start, ... target / 2), then stays at the target:

    seq_len(step) = start * 2 ** (step * stages // steps)   for step < steps, with stages = log2(target / start)
    seq_len(step) = target                                  from step `steps` on

Tokens per batch stay constant: a batch of B windows of the target length is cut into B * target /
seq_len(step) consecutive pieces (`split_batch`). The data loader therefore never changes: it always
serves target-length windows, validation always sees the target length, and because the stage is read
from the step count that a checkpoint restores, a resumed run continues at the right length.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SeqLenWarmup:
    start: int
    target: int
    steps: int

    def __post_init__(self):
        if self.start < 1 or self.target < 1 or self.steps < 1:
            raise ValueError(f"start, target and steps must be positive, got {self.start}, {self.target}, {self.steps}")
        ratio = self.target // self.start
        if self.start >= self.target or ratio * self.start != self.target or ratio & (ratio - 1):
            raise ValueError(f"the target length {self.target} must be the start {self.start} times a power of two "
                             f"greater than 1 (the length doubles at each stage)")

    @property
    def stages(self) -> int:
        """Number of lengths below the target."""
        return (self.target // self.start).bit_length() - 1

    def seq_len(self, step: int) -> int:
        """Window length at optimizer step `step` (0-based)."""
        if step >= self.steps:
            return self.target
        return self.start << (step * self.stages // self.steps)

    def split_batch(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        """Each (B, target) tensor of `batch` as (B * target / L, L) with L = seq_len(step): every window
        cut into consecutive pieces, tokens per batch unchanged."""
        length = self.seq_len(step)
        if length == self.target:
            return batch
        return {k: v.reshape(-1, length) for k, v in batch.items()}  # (B * target / L, L)
