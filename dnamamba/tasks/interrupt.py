"""A stopped training run leaves a checkpoint to resume from.

With the CLI's signal handling (dnamamba.signals) a SIGINT or SIGTERM during `trainer.fit` is held
until the end of the current training batch; there the training state is whole, so it is saved as the
run's `last.ckpt` before the run stops. Lightning's own SIGTERM handling, which stops spawned DDP
ranks (and runs outside the CLI) between batches with SIGTERMException, is covered the same way.
"""
from __future__ import annotations

import os

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities.exceptions import SIGTERMException

from .. import signals


class CheckpointOnInterrupt(pl.Callback):
    """Saves `last.ckpt` (in the ModelCheckpoint's folder, else `default_dir`) when a stop signal ends
    training; `path` and `step` say what was saved."""

    def __init__(self, default_dir: str):
        self.default_dir = default_dir
        self.path: str | None = None
        self.step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        try:
            signals.check()
        except signals.Interrupted:
            self._save(trainer)
            raise

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.path is None:
            self._save(trainer)

    def _save(self, trainer: pl.Trainer) -> None:
        folder = next((cb.dirpath for cb in trainer.checkpoint_callbacks
                       if isinstance(cb, ModelCheckpoint) and cb.dirpath), self.default_dir)
        path = os.path.join(folder, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)
        trainer.save_checkpoint(path, weights_only=False)
        self.path, self.step = path, trainer.global_step
