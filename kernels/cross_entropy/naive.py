"""Reference linear + cross-entropy: the full logits, then F.cross_entropy with reduction="none".

    nll = logsumexp(hidden @ weight.T) - (hidden @ weight.T)[target],  per row

The matmul runs in the dtype F.linear would use: the autocast dtype when autocast is on for hidden's device,
else the promoted dtype of hidden and weight (a bf16 hidden with the fp32 tied embedding: fp32). The loss itself
is computed in fp32 (float64 stays float64).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def matmul_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of hidden @ weight.T: autocast's when it is on for hidden's device, else the promoted one."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def loss_dtype(mm_dtype: torch.dtype) -> torch.dtype:
    """Logits go to fp32 for the softmax, float64 stays float64."""
    return torch.float64 if mm_dtype == torch.float64 else torch.float32


def check_inputs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> None:
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} and weight {tuple(weight.shape)}: need (..., d) and (V, d)")
    if targets.shape != hidden.shape[:-1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)} less its last dim")


def linear_cross_entropy_ref(hidden, weight, targets, chunk_size=None):
    """Per-row negative log-likelihood of `targets` under softmax(hidden @ weight.T), all logits at once.

    hidden: (..., d); weight: (V, d); targets: (...) int64 in [0, V); chunk_size: ignored (same signature as
    the chunked version). Returns nll (...) fp32 (float64 for float64 inputs), unreduced.
    """
    check_inputs(hidden, weight, targets)
    dtype = matmul_dtype(hidden, weight)
    logits = F.linear(hidden.to(dtype), weight.to(dtype))  # (..., V)
    nll = F.cross_entropy(logits.to(loss_dtype(dtype)).reshape(-1, weight.shape[0]), targets.reshape(-1).long(),
                          reduction="none")  # (N,)
    return nll.view(targets.shape)
