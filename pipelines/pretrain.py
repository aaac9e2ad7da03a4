"""`dnamamba pretrain`: train a causal byte-level Mamba LM on a FASTA and export it.

    dnamamba pretrain data.fasta=PATH data.seq_len=N trainer.max_steps=N run_dir=DIR

writes DIR/export/{model.safetensors,config.json,metrics.json}, DIR/metrics.json, DIR/curves.png, logs
under DIR/logs and Lightning checkpoints under DIR/checkpoints (resume with resume=auto run_dir=DIR, or
ckpt_path=DIR/checkpoints/last.ckpt). A run stopped by Ctrl-C or SIGTERM saves DIR/checkpoints/last.ckpt
at the end of the current batch, says so in one line and exits with 130 or 143.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import warnings

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar
from pytorch_lightning.utilities.exceptions import SIGTERMException

from dnamamba import signals
from dnamamba.data.datamodule import DataConfig, record_names
from dnamamba.data.fasta import demo_genome_path
from dnamamba.errors import InputError, exit_on_input_error, require_file
from dnamamba.io import atomic_path, check_writable_dir, refuse_overwriting_inputs
from dnamamba.model import MambaConfig, save_export
from dnamamba.model.export import CONFIG, WEIGHTS
from dnamamba.reporting import print_pretrain_summary
from dnamamba.settings import SETTINGS, build
from dnamamba.tasks.curves import TrainingCurves
from dnamamba.tasks.interrupt import CheckpointOnInterrupt
from dnamamba.tasks.loggers import build_logger
from dnamamba.tasks.monitor import TrainingMonitor
from dnamamba.tasks.optim import OptimConfig
from dnamamba.tasks.pretrain import CausalLMTask
from dnamamba.tasks.resume import RunTimer, checkpoint_to_resume


def check(cfg: DictConfig) -> None:
    """Every setting and input file that can be checked before Hydra creates the run folder: types and
    ranges of data, model and optim against their schemas, the trainer's step limits, readable inputs,
    a writable run_dir, and no output that would overwrite an input."""
    data = dict(cfg.data)
    for key in ("records", "val_records"):  # a single name may come as a bare string or number
        if key in data:
            data[key] = record_names(data[key])
    data = build(DataConfig, data, "data.")
    build(MambaConfig, cfg.model, "model.")
    build(OptimConfig, cfg.optim, "optim.")
    _check_trainer(cfg.trainer)
    fasta = data.fasta if data.fasta is not None else demo_genome_path()
    require_file(fasta, "FASTA file")
    if data.bed is not None:
        require_file(data.bed, "BED file")
    if cfg.ckpt_path is not None:
        require_file(cfg.ckpt_path, "checkpoint to resume from")
    run_dir = os.path.abspath(str(cfg.run_dir))
    # The checkpoint resumed from is read whole before training, so writing last.ckpt over it is resuming.
    outputs = [run_dir, *(os.path.join(run_dir, name) for name in ("metrics.json", "curves.png", "pretrain.log"))]
    outputs += [os.path.join(run_dir, "export", name) for name in (WEIGHTS, CONFIG, "metrics.json")]
    refuse_overwriting_inputs(outputs, [fasta, data.bed])
    check_writable_dir(run_dir)


def _check_trainer(trainer) -> None:
    def value(key):
        return trainer.get(key)

    def bad(key: str, why: str):
        return InputError(SETTINGS, f"trainer.{key}={value(key)!r}: {why}")

    def integer(key: str) -> bool:  # bool is an int to Python, not to a user
        return isinstance(value(key), int) and not isinstance(value(key), bool)

    for key in ("max_steps", "max_epochs", "log_every_n_steps", "check_val_every_n_epoch",
                "num_sanity_val_steps", "accumulate_grad_batches"):
        if value(key) is not None and not integer(key):
            raise bad(key, "must be an integer")
    if value("max_steps") == 0 or value("max_epochs") == 0:
        raise bad("max_steps" if value("max_steps") == 0 else "max_epochs",
                  "would train nothing and export an untrained model")
    if value("max_steps") is not None and value("max_steps") < -1:
        raise bad("max_steps", "must be -1 (no step limit) or at least 1")
    if value("max_epochs") is not None and value("max_epochs") < -1:
        raise bad("max_epochs", "must be -1 (no epoch limit) or at least 1")
    if value("max_steps") == -1 and value("max_epochs") == -1:
        raise bad("max_steps", "and trainer.max_epochs=-1 leave the learning-rate schedule without an end")
    for key in ("log_every_n_steps", "check_val_every_n_epoch", "accumulate_grad_batches"):
        if value(key) is not None and value(key) < 1:
            raise bad(key, "must be at least 1")
    interval = value("val_check_interval")
    if interval is not None and not (isinstance(interval, (int, float)) and not isinstance(interval, bool)
                                     and (0 < interval <= 1 if isinstance(interval, float) else interval >= 1)):
        raise bad("val_check_interval", "must be a number of steps (at least 1) or a fraction of an epoch in (0, 1]")
    clip = value("gradient_clip_val")
    if clip is not None and not (isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip >= 0):
        raise bad("gradient_clip_val", "must be a number >= 0 (or null)")
    # Everything else (accelerator, devices, precision, strategy) is Lightning's to judge: build a
    # Trainer without callbacks or logger, which starts nothing, and let it refuse; its banner is muted.
    lightning_log = logging.getLogger("pytorch_lightning")
    level = lightning_log.level
    lightning_log.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(trainer, callbacks=[], logger=False, max_time=None)
    finally:
        lightning_log.setLevel(level)


def _trainer(trainer_cfg, **kwargs) -> pl.Trainer:
    """The Trainer; Lightning's refusal of a trainer.* setting (MisconfigurationException, or a TypeError
    or ValueError from its argument checks) becomes a one-line InputError."""
    try:
        return instantiate(trainer_cfg, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__ if e.__cause__ is not None else e
        raise InputError(SETTINGS, f"trainer: {str(cause).strip().splitlines()[0]}") from None


def run(cfg: DictConfig) -> dict:
    start = time.time()
    check(cfg)
    run_dir = os.path.abspath(cfg.run_dir)
    # The default run_dir holds the start time (`${now:...}`), so it is new every run.
    timed_run_dir = "${now:" in str(OmegaConf.to_container(cfg, resolve=False).get("run_dir"))
    ckpt_path = checkpoint_to_resume(run_dir, cfg.get("resume"), cfg.ckpt_path, timed_run_dir)
    if cfg.get("resume") is not None:
        print("dnamamba: resume=auto: " + (f"continuing from {ckpt_path}" if ckpt_path else
                                           f"no checkpoint in {run_dir}/checkpoints, starting fresh"), file=sys.stderr)
    logger = build_logger(cfg.get("logger"))
    datamodule = instantiate(cfg.data)
    # Read the FASTA and build the windows before Lightning starts, so a bad file or record is reported
    # alone, not after the trainer's banners; Lightning's own calls then find the work done.
    datamodule.prepare_data()
    datamodule.setup("fit")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = CausalLMTask(instantiate(cfg.model), instantiate(cfg.optim))
    stop = CheckpointOnInterrupt(os.path.join(run_dir, "checkpoints"))
    # The CLI reports a stop signal in its own one line; Lightning would log one more.
    logging.getLogger("pytorch_lightning.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    callbacks = list(instantiate(cfg.trainer.get("callbacks") or []))
    monitor = TrainingMonitor()
    # The curves read the token count that the monitor logs, so the monitor comes first.
    callbacks += [monitor, TrainingCurves(os.path.join(run_dir, "curves.png"), cfg.data.get("baselines"),
                                          title=f"{os.path.basename(run_dir)}: L={cfg.data.seq_len}"), stop]
    if cfg.trainer.get("max_time") is not None:
        callbacks.append(RunTimer(duration=cfg.trainer.max_time, interval="step"))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    trainer: pl.Trainer = _trainer(cfg.trainer, callbacks=callbacks, logger=logger, max_time=None)
    try:
        with signals.deferred():
            trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    except (signals.Interrupted, SIGTERMException) as e:
        stopped = e if isinstance(e, signals.Interrupted) else signals.Interrupted(signal.SIGTERM)
        if stop.path is not None:
            stopped.note = f" at step {stop.step}; resume with ckpt_path={stop.path}"
        raise stopped from None
    if not task.val_history or task.val_history[-1]["step"] != trainer.global_step:
        # max_steps can stop mid-epoch, before the epoch's validation: score the final weights too.
        trainer.validate(task, datamodule=datamodule, verbose=False)
    if not trainer.is_global_zero:
        return {}
    history = task.val_history
    # Spawned DDP returns only weights and logged metrics to this process, not the history.
    last_bpb = history[-1]["val_bits_per_base"] if history else _scalar(trainer.callback_metrics.get("val/bits_per_base"))
    metrics = {
        "val_bits_per_base": last_bpb,
        "val_history": history,
        "train_loss": _scalar(trainer.callback_metrics.get("train/loss")),
        "global_step": max(trainer.global_step, int(_scalar(trainer.callback_metrics.get("train/step")) or 0)),
        "tokens": max(monitor.tokens, int(_scalar(trainer.callback_metrics.get("train/tokens")) or 0)),
        "parameters": task.model.num_parameters(),
        "seq_len": cfg.data.seq_len,
        "fasta": datamodule.fasta_path if hasattr(datamodule, "fasta_path") else cfg.data.fasta,
        "wall_time_s": round(time.time() - start, 1),
    }
    export_dir = os.path.join(run_dir, "export")
    save_export(task.model, export_dir, extra={"trained_on": metrics["fasta"]})
    for path in (os.path.join(export_dir, "metrics.json"), os.path.join(run_dir, "metrics.json")):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
    metrics["export_dir"] = export_dir
    print_pretrain_summary(metrics, run_dir)
    return metrics


def _scalar(x):
    return None if x is None else float(x)


@hydra.main(config_path="../conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
