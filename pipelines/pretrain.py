"""`dnamamba pretrain`: train a causal byte-level Mamba LM on a FASTA and export it.

    dnamamba pretrain data.fasta=PATH data.seq_len=N trainer.max_steps=N run_dir=DIR

writes DIR/export/{model.safetensors,config.json,metrics.json}, DIR/metrics.json, DIR/curves.png, logs
under DIR/logs and Lightning checkpoints under DIR/checkpoints (resume with resume=auto run_dir=DIR, or
ckpt_path=DIR/checkpoints/last.ckpt).
"""
from __future__ import annotations

import json
import os
import sys
import time

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import RichProgressBar

from dnamamba.errors import exit_on_input_error
from dnamamba.io import atomic_path
from dnamamba.model import save_export
from dnamamba.reporting import print_pretrain_summary
from dnamamba.tasks.curves import TrainingCurves
from dnamamba.tasks.loggers import build_logger
from dnamamba.tasks.monitor import TrainingMonitor
from dnamamba.tasks.pretrain import CausalLMTask
from dnamamba.tasks.resume import RunTimer, checkpoint_to_resume


def run(cfg: DictConfig) -> dict:
    start = time.time()
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
    callbacks = list(instantiate(cfg.trainer.get("callbacks") or []))
    monitor = TrainingMonitor()
    # The curves read the token count that the monitor logs, so the monitor comes first.
    callbacks += [monitor, TrainingCurves(os.path.join(run_dir, "curves.png"), cfg.data.get("baselines"),
                                          title=f"{os.path.basename(run_dir)}: L={cfg.data.seq_len}")]
    if cfg.trainer.get("max_time") is not None:
        callbacks.append(RunTimer(duration=cfg.trainer.max_time, interval="step"))
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, max_time=None)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
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
