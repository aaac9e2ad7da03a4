"""`dnamamba finetune`: a classifier on a pretrained backbone, with early stopping, exported.

    dnamamba finetune backbone=EXPORT task=variant_classification task.data.fasta=REF task.data.table=TABLE

writes DIR/export (a model export of the backbone whose config.json also holds the classifier, and
head.safetensors), DIR/metrics.json (validation history, the best validation and the test metrics)
and DIR/checkpoints (best.ckpt and last.ckpt).
"""
from __future__ import annotations

import json
import os
import sys
import time

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar

from dnamamba.errors import InputError, exit_on_input_error
from dnamamba.io import atomic_path
from dnamamba.model import load_export
from dnamamba.model.classifier import save_classifier_export
from dnamamba.tasks.loggers import build_logger


def run(cfg: DictConfig) -> dict:
    start = time.time()
    run_dir = os.path.abspath(cfg.run_dir)
    if cfg.ckpt_path is not None and not os.path.isfile(cfg.ckpt_path):
        raise InputError(cfg.ckpt_path, "checkpoint to resume from not found")
    logger = build_logger(cfg.get("logger"))
    backbone = load_export(cfg.backbone)
    datamodule = instantiate(cfg.task.data)
    datamodule.setup("fit")  # a bad table or FASTA is reported before Lightning starts
    print(f"dnamamba: data: {datamodule.summary()}", file=sys.stderr)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    task = instantiate(cfg.task.module, backbone=backbone, classes=datamodule.classes,
                       optim=instantiate(cfg.optim), window=datamodule.window,
                       pooling=getattr(datamodule, "pooling", "mean"), site_span=getattr(datamodule, "site_span", 0),
                       class_counts=datamodule.class_counts)
    stop = cfg.early_stopping
    best = ModelCheckpoint(dirpath=os.path.join(run_dir, "checkpoints"), filename="best", monitor=stop.monitor,
                           mode=stop.mode, save_top_k=1)
    callbacks = list(instantiate(cfg.trainer.get("callbacks") or []))
    callbacks += [best, EarlyStopping(monitor=stop.monitor, mode=stop.mode, patience=stop.patience)]
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    trainer.fit(task, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    if best.best_model_path:  # the weights of the best validation, not the last epoch's
        task.load_state_dict(torch.load(best.best_model_path, map_location="cpu", weights_only=False)["state_dict"])
    best_val = dict(trainer.validate(task, datamodule=datamodule, verbose=False)[0])
    test = dict(trainer.test(task, datamodule=datamodule, verbose=False)[0]) if datamodule.items.get("test") else {}
    if not trainer.is_global_zero:
        return {}
    metrics = {
        "task": task.kind, "classes": datamodule.classes, "freeze_backbone": task.freeze_backbone,
        "val": task.last_metrics.get("val", best_val), "test": task.last_metrics.get("test", test),
        "val_history": task.history, "global_step": trainer.global_step,
        "data": datamodule.summary(), "backbone": os.path.abspath(cfg.backbone),
        "wall_time_s": round(time.time() - start, 1),
    }
    export_dir = os.path.join(run_dir, "export")
    save_classifier_export(task.classifier, export_dir, extra={
        "trained_on": {"fasta": os.path.abspath(datamodule.fasta_path), "table": os.path.abspath(datamodule.table)},
        "backbone_from": os.path.abspath(cfg.backbone), "finetune": OmegaConf.to_container(cfg.task, resolve=True)})
    for path in (os.path.join(export_dir, "metrics.json"), os.path.join(run_dir, "metrics.json")):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            json.dump(metrics, f, indent=2)
    metrics["export_dir"] = export_dir
    summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics["test"].items() if k.startswith(("auroc_macro", "accuracy")))
    print(f"dnamamba: finetune ({task.kind}): test {summary or 'split empty'}; export -> {export_dir}", file=sys.stderr)
    return metrics


@hydra.main(config_path="../conf", config_name="finetune", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
