"""What variant and sequence classification share: labelled tables split by record, the LightningModule
(loss, per-class AUROC and AUPRC, the optimiser with a separate backbone learning rate) and batches.

A labelled table is a TSV (or CSV) with a header. Its `split` column (train, val, test) is used when
present; without one, records are split with `assign_splits`, as the benchmark builder does, so that no
record is in two splits.
"""
from __future__ import annotations

import csv
import gzip
from collections import Counter
from dataclasses import asdict
from typing import Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchmetrics
from torch.utils.data import DataLoader, Dataset

from ..data.variant_benchmark import SPLITS, assign_splits
from ..errors import InputError, require_file
from ..model import MambaLM
from ..model.classifier import Classifier, ClassifierConfig
from .optim import OptimConfig, param_groups, warmup_cosine


def read_table(path: str, required: Sequence[str]) -> list[tuple[int, dict]]:
    """(line number, row) of a TSV or CSV (by extension; plain or gzip) with a header naming `required`."""
    path = require_file(path, "table")
    name = path.lower().removesuffix(".gz")
    delimiter = "," if name.endswith(".csv") else "\t"
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rt", newline="") if gz else open(path, newline="")) as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(path, f"the header has no column(s) {', '.join(missing)} "
                                       f"(it has: {', '.join(reader.fieldnames or []) or 'nothing'})")
            rows = [(i, row) for i, row in enumerate(reader, start=2)]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(path, f"cannot read the table: {e}") from None
    if not rows:
        raise InputError(path, "the table has a header but no rows")
    return rows


def row_splits(path: str, rows: list[tuple[int, dict]], split_fractions, seed: int) -> list[str]:
    """The split of each row: its `split` column, else its record's split from `assign_splits`."""
    if "split" in rows[0][1]:
        for line, row in rows:
            if row["split"] not in SPLITS:
                raise InputError(path, f"line {line}: split {row['split']!r} is not one of {', '.join(SPLITS)}",
                                 record=row.get("chrom"))
        return [row["split"] for _, row in rows]
    by_record = assign_splits(sorted({row["chrom"] for _, row in rows}), split_fractions, seed)
    return [by_record[row["chrom"]] for _, row in rows]


class LabelledDataModule(pl.LightningDataModule):
    """Items (input, class index) per split, served in batches by `collate`; subclasses fill `items`."""

    def __init__(self, batch_size: int = 32, classes: Optional[list[str]] = None, max_per_split: Optional[int] = None,
                 split_fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0, num_workers: int = 0):
        super().__init__()
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.requested_classes = None if classes is None else [str(c) for c in classes]
        self.max_per_split = max_per_split
        self.split_fractions = list(split_fractions)
        self.items: dict[str, list] | None = None
        self.classes: list[str] = []
        self.source = ""

    def load(self) -> dict[str, list[tuple[object, str]]]:
        """split -> [(input, label)]; subclasses read their table here."""
        raise NotImplementedError

    def collate(self, items: list) -> dict:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.items is not None:
            return
        by_split = self.load()
        labels = sorted({label for split in by_split.values() for _, label in split})
        self.classes = self.requested_classes or labels
        unknown = set(labels) - set(self.classes)
        if unknown:
            raise InputError(self.source, f"label(s) {', '.join(sorted(unknown))} not in classes={self.classes}")
        if len(self.classes) < 2:
            raise InputError(self.source, f"need at least two classes, found {self.classes}")
        if not by_split.get("train") or not by_split.get("val"):
            raise InputError(self.source, "need rows in both the train and the val split "
                                          f"(found {', '.join(f'{s} {len(v)}' for s, v in by_split.items())})")
        index = {c: i for i, c in enumerate(self.classes)}
        self.items = {}
        for split in SPLITS:
            rows = by_split.get(split, [])
            if self.max_per_split is not None and len(rows) > self.max_per_split:
                keep = np.random.default_rng([self.seed, SPLITS.index(split)]).choice(
                    len(rows), size=self.max_per_split, replace=False)
                rows = [rows[i] for i in np.sort(keep)]
            self.items[split] = [(x, index[label]) for x, label in rows]

    @property
    def class_counts(self) -> list[int]:
        counts = Counter(y for _, y in self.items["train"])
        return [counts[i] for i in range(len(self.classes))]

    def summary(self) -> str:
        parts = []
        for split in SPLITS:
            counts = Counter(self.classes[y] for _, y in self.items[split])
            parts.append(f"{split} {len(self.items[split])} ({', '.join(f'{c} {counts[c]}' for c in self.classes)})")
        return "; ".join(parts)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(_Items(self.items[split]), batch_size=self.batch_size, shuffle=shuffle,
                          collate_fn=self.collate, num_workers=self.num_workers)

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)


class _Items(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class ClassificationTask(pl.LightningModule):
    """Cross-entropy on a Classifier, with per-class AUROC / AUPRC (one-vs-rest) on val and test.

    `classes`, `window`, `pooling` and `site_span` come from the data module (they say what its batches
    hold); the rest from conf/task/*.yaml `module`.

    Logged as `{val,test}/auroc_<class>`, `.../auprc_<class>`, their macro means over the classes
    present (`auroc_macro`, `auprc_macro`) and `accuracy`.
    """

    kind = ""

    def __init__(self, backbone: MambaLM, classes: Sequence[str], optim: OptimConfig | dict, window: int = 0,
                 pooling: str = "mean", site_span: int = 3, freeze_backbone: bool = True, hidden: int = 64,
                 dropout: float = 0.1, use_score: bool = True, class_weights: Optional[str] = "balanced",
                 class_counts: Optional[Sequence[int]] = None, backbone_lr_scale: float = 0.1):
        super().__init__()
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        cfg = ClassifierConfig(kind=self.kind, classes=list(classes), window=int(window), pooling=pooling,
                               site_span=int(site_span), hidden=int(hidden), dropout=float(dropout),
                               use_score=bool(use_score))
        self.save_hyperparameters({"classifier": asdict(cfg), "optim": asdict(optim),
                                   "freeze_backbone": freeze_backbone, "class_weights": class_weights,
                                   "backbone_lr_scale": backbone_lr_scale})
        self.classifier = Classifier(backbone, cfg)
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.classifier.backbone.requires_grad_(False)
            self.classifier.backbone_trainable = False
        self.optim_cfg = optim
        self.backbone_lr_scale = float(backbone_lr_scale)
        C = len(cfg.classes)
        weight = None
        if class_weights == "balanced" and class_counts is not None:
            counts = torch.tensor(class_counts, dtype=torch.float32).clamp(min=1)
            weight = counts.sum() / (C * counts)  # inverse frequency: each class weighs the same in the loss
        elif class_weights not in (None, "none", "balanced"):
            raise ValueError(f"class_weights={class_weights!r} is not one of balanced, none")
        self.register_buffer("class_weight", weight if weight is not None else torch.ones(C))
        self.metrics = torch.nn.ModuleDict({stage: torch.nn.ModuleDict({
            "auroc": torchmetrics.classification.MulticlassAUROC(C, average=None),
            "auprc": torchmetrics.classification.MulticlassAveragePrecision(C, average=None),
            "accuracy": torchmetrics.classification.MulticlassAccuracy(C, average="micro"),
            "stats": torchmetrics.classification.MulticlassStatScores(C, average=None),  # support per class
        }) for stage in ("val", "test")})
        self.history: list[dict] = []
        self.last_metrics: dict[str, dict] = {}

    def logits(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self.logits(batch).float(), batch["label"], weight=self.class_weight)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["label"]))
        return loss

    def _eval_step(self, batch, stage: str):
        logits = self.logits(batch).float()
        y = batch["label"]
        loss = F.cross_entropy(logits, y, weight=self.class_weight)
        self.log(f"{stage}/loss", loss, batch_size=len(y))
        probs = logits.softmax(-1)
        m = self.metrics[stage]
        m["auroc"].update(probs, y)
        m["auprc"].update(probs, y)
        m["accuracy"].update(probs, y)
        m["stats"].update(probs, y)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def _epoch_end(self, stage: str) -> None:
        m = self.metrics[stage]
        present = m["stats"].compute()[:, 4] > 0  # (C,) support; a class without examples has no AUROC
        auroc, auprc = m["auroc"].compute(), m["auprc"].compute()
        values = {"accuracy": float(m["accuracy"].compute())}
        for i, c in enumerate(self.classifier.cfg.classes):
            if present[i]:
                values[f"auroc_{c}"] = float(auroc[i])
                values[f"auprc_{c}"] = float(auprc[i])
        values["auroc_macro"] = float(auroc[present].mean())
        values["auprc_macro"] = float(auprc[present].mean())
        for v in m.values():
            v.reset()
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, prog_bar=k == "auroc_macro")
        self.last_metrics[stage] = values
        if stage == "val" and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch, "step": self.global_step, **values})

    def on_validation_epoch_end(self):
        self._epoch_end("val")

    def on_test_epoch_end(self):
        self._epoch_end("test")

    def configure_optimizers(self):
        cfg = self.optim_cfg
        groups = param_groups(self.classifier.head, cfg.weight_decay)
        if not self.freeze_backbone:
            groups += [{**g, "lr": cfg.lr * self.backbone_lr_scale}
                       for g in param_groups(self.classifier.backbone, cfg.weight_decay)]
        groups = [g for g in groups if g["params"]]
        opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, cfg.warmup_steps, int(total), cfg.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["val_history"] = self.history

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("val_history", []))
