"""Causal language modelling on byte tokens, as a LightningModule.

The loss is next-base cross-entropy weighted by the batch's `loss_weight` (0 at N and other non-ACGT
codes, optionally < 1 at soft-masked bases). Bits per base are reported over ACGT positions only
(weight > 0), unweighted, so they compare directly with compressors' bits/base.
"""
from __future__ import annotations

import math
from dataclasses import asdict

import pytorch_lightning as pl
import torch
import torchmetrics

from ..model import MambaConfig, MambaLM
from .distributed import destroy_process_group_at_exit
from .optim import OptimConfig, build_optimizer

LN2 = math.log(2.0)


class CausalLMTask(pl.LightningModule):
    def __init__(self, model: MambaConfig | dict, optim: OptimConfig | dict):
        super().__init__()
        model = model if isinstance(model, MambaConfig) else MambaConfig(**model)
        optim = optim if isinstance(optim, OptimConfig) else OptimConfig(**optim)
        self.save_hyperparameters({"model": asdict(model), "optim": asdict(optim)})
        self.model_cfg = model
        self.optim_cfg = optim
        self.model = MambaLM(model)
        self.val_nll = torchmetrics.SumMetric()
        self.val_count = torchmetrics.SumMetric()
        self.val_history: list[dict] = []

    def forward(self, tokens):
        return self.model(tokens)

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()

    def _step(self, batch):
        tokens, weight = batch["tokens"], batch["loss_weight"]  # (B, L) each
        nll = self.model.next_token_nll(tokens)  # (B, L-1), nats
        w = weight[:, 1:].float()
        loss = (nll * w).sum() / w.sum().clamp(min=1e-6)
        scored = (w > 0).float()
        return loss, (nll * scored).sum(), scored.sum()

    def training_step(self, batch, batch_idx):
        loss, nll_sum, count = self._step(batch)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits_per_base", nll_sum / count.clamp(min=1) / LN2)
        # Logged so the step count survives spawned DDP, which returns only weights and logged metrics.
        self.log("train/step", float(self.global_step + 1), reduce_fx="max")
        return loss

    def validation_step(self, batch, batch_idx):
        loss, nll_sum, count = self._step(batch)
        self.val_nll.update(nll_sum)
        self.val_count.update(count)
        self.log("val/loss", loss, sync_dist=True)

    def on_validation_epoch_end(self):
        nll, count = self.val_nll.compute(), self.val_count.compute()  # summed over ranks
        self.val_nll.reset()
        self.val_count.reset()
        if count <= 0:
            return
        bpb = (nll / count / LN2).item()
        self.log("val/bits_per_base", bpb, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.val_history.append({"epoch": self.current_epoch, "step": self.global_step,
                                     "val_bits_per_base": bpb, "val_bases": int(count.item())})

    def configure_optimizers(self):
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        opt, sched = build_optimizer(self.model, self.optim_cfg, int(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["val_history"] = self.val_history

    def on_load_checkpoint(self, checkpoint):
        self.val_history = list(checkpoint.get("val_history", []))
