"""A Lightning callback that logs what a person watching a run wants beside the loss.

Logged at every training batch (the logger writes every `trainer.log_every_n_steps` steps):
- train/tokens: tokens trained on so far, all devices together, carried across resumes;
- train/tokens_per_s: tokens (all devices) per second of training over the last `window` batches,
  validation pauses left out;
- train/lr: the learning rate of the first parameter group (all groups share it);
- train/seq_len: the window length of the batch (it changes under sequence-length warmup);
- train/peak_memory_gb: the most GPU memory this process has allocated so far, in GB (1e9 bytes);
  not logged on CPU.
Tokens count every position of a batch, padding included: batch size x window length.
"""
from __future__ import annotations

import time
from collections import deque

import pytorch_lightning as pl
import torch


class TrainingMonitor(pl.Callback):
    def __init__(self, window: int = 20):
        if window < 1:
            raise ValueError(f"window must be at least 1 batch, got {window}")
        self.window = window
        self.tokens = 0
        self._marks: deque[tuple[float, int]] = deque(maxlen=window + 1)  # (time, tokens) at batch ends

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self._marks:
            # The first batch's time counts from its start; after a validation pause, from the next batch.
            self._marks.append((time.perf_counter(), self.tokens))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        tokens = batch["tokens"]  # (B, L) on this device
        self.tokens += tokens.numel() * trainer.world_size
        self._marks.append((time.perf_counter(), self.tokens))
        (t0, n0), (t1, n1) = self._marks[0], self._marks[-1]
        log = {"train/tokens": float(self.tokens), "train/seq_len": float(tokens.shape[1])}
        if t1 > t0:
            # Rank 0 speaks for all: every rank trains on as many tokens, so no collective is needed.
            pl_module.log("train/tokens_per_s", (n1 - n0) / (t1 - t0), prog_bar=True, rank_zero_only=True)
        if trainer.optimizers:
            log["train/lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        if tokens.is_cuda:
            log["train/peak_memory_gb"] = torch.cuda.max_memory_allocated(tokens.device) / 1e9
        pl_module.log_dict(log, on_step=True, on_epoch=False, rank_zero_only=True)

    def on_validation_end(self, trainer, pl_module):
        self._marks.clear()

    def state_dict(self) -> dict:
        return {"tokens": self.tokens}

    def load_state_dict(self, state_dict: dict) -> None:
        self.tokens = int(state_dict.get("tokens", 0))
