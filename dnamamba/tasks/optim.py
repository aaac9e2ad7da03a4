"""Optimiser schema and construction: AdamW with decoupled decay, linear warmup then cosine decay."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

# Parameters that must not be pulled toward zero: norms and biases (standard), and the SSM's A_log and
# D, whose scale is their meaning (Mamba trains them without weight decay).
NO_DECAY_NAMES = ("A_log", "D", "bias", "norm")


@dataclass
class OptimConfig:
    lr: float = 2e-3
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    # Fused AdamW unscales gradients itself, so Lightning refuses it together with gradient clipping
    # under mixed precision; the default foreach AdamW works with both.
    fused: bool = False

    def __post_init__(self):
        # YAML lists arrive as OmegaConf ListConfig; checkpoints must hold plain Python values.
        self.betas = tuple(float(b) for b in self.betas)
        self.validate()

    def validate(self) -> None:
        """ValueError("key=value: why") for a value AdamW or the schedule cannot work with."""
        def bad(key: str, why: str):
            return ValueError(f"{key}={getattr(self, key)!r}: {why}")

        if not self.lr > 0:
            raise bad("lr", "must be positive")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad("betas", "must be two numbers in [0, 1)")
        if not self.eps > 0:
            raise bad("eps", "must be positive")
        if self.warmup_steps < 0:
            raise bad("warmup_steps", "must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise bad("min_lr_ratio", "must be in [0, 1]")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        skip = p.ndim < 2 or leaf in NO_DECAY_NAMES or any(part.startswith("norm") for part in name.split("."))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear from 1/warmup to 1 over `warmup` steps, then cosine down to `min_ratio` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, cfg: OptimConfig, total_steps: int):
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                            eps=cfg.eps, fused=cfg.fused or None)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio))
    return opt, sched
