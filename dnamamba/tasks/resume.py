"""Stopping and resuming runs: which checkpoint a run starts from, a time budget per run, and a
last.ckpt written when training ends.

`resume=auto` makes a run directory resumable by running the same command again: it continues from
run_dir/checkpoints/last.ckpt when there is one and starts fresh otherwise. That suits jobs with a wall-clock
limit (trainer.max_time, or a scheduler's), which end between validations, so `RunCheckpoint` writes
last.ckpt when training ends, and `RunTimer` gives each run the whole max_time.
"""
from __future__ import annotations

import os

from pytorch_lightning.callbacks import ModelCheckpoint, Timer

from dnamamba.errors import InputError

RESUME_CHOICES = ("auto",)


def last_checkpoint(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints", ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)


def checkpoint_to_resume(run_dir: str, resume: str | None, ckpt_path: str | None,
                         run_dir_changes_every_run: bool) -> str | None:
    """The checkpoint a run starts from: `ckpt_path` when given; with resume="auto", run_dir's last.ckpt if
    it exists; else None (a fresh start). `run_dir_changes_every_run`: run_dir holds the time (the default),
    so resume=auto could never find an earlier run."""
    if resume is not None and resume not in RESUME_CHOICES:
        raise InputError(None, f"resume={resume!r}: must be auto (continue from run_dir/checkpoints/last.ckpt "
                               f"when it exists) or null")
    if ckpt_path is not None:
        if resume is not None:
            raise InputError(None, f"resume={resume} and ckpt_path={ckpt_path} both choose the checkpoint to "
                                   f"start from; give one of them")
        if not os.path.isfile(ckpt_path):
            raise InputError(ckpt_path, "checkpoint to resume from not found")
        return ckpt_path
    if resume is None:
        return None
    if run_dir_changes_every_run:
        raise InputError(None, "resume=auto needs run_dir=DIR: the default run_dir holds the start time, so "
                               "it is new every run and there is never anything to resume")
    last = last_checkpoint(run_dir)
    return last if os.path.isfile(last) else None


class RunTimer(Timer):
    """Lightning's Timer (what trainer.max_time sets up) with a budget per run: a run resumed from a
    checkpoint gets the whole duration again. Lightning's own Timer restores the time already spent from
    the checkpoint, so a run resumed after stopping at max_time would stop again after one step."""

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also writes last.ckpt when training ends, unless it already saved
    at that step. Lightning writes it then only if it never saved before, so a run that stops between
    validations (max_time, or max_steps with validation every N steps) would resume from its last
    validation and repeat the steps after it."""

    def on_train_end(self, trainer, pl_module) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
