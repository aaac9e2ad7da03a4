"""Reference causal depthwise conv1d, channel-last, in plain PyTorch (float32 or float64).

The definition the Triton kernels are tested against. For each sequence (a batch row, or a packed
sequence of `cu_seqlens`), with xx the sequence's inputs preceded by its width-1 initial-state rows:

    pre_t = bias + sum_k weight[:, k] * xx[t + k]        (xx[t + width - 1] is x_t)
    y_t = silu(pre_t) or pre_t;  final_state = the last width-1 rows of xx
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = (None, "silu")


def check_activation(activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f'activation must be "silu" or None, got {activation!r}')


def weight_2d(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """(dim, width) view of a (dim, width) or nn.Conv1d-layout (dim, 1, width) depthwise weight."""
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight[:, 0]
    if weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(f"weight must be (dim, width) or (dim, 1, width) with dim {dim}, got {tuple(weight.shape)}")
    return weight


def sequence_bounds(batch: int, seqlen: int, cu_seqlens) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of every sequence: one per row, or the packed sequences of batch row 0."""
    if cu_seqlens is None:
        return [(b, 0, seqlen) for b in range(batch)]
    if batch != 1:
        raise ValueError("cu_seqlens needs batch size 1 (sequences packed along seqlen)")
    bounds = cu_seqlens.detach().cpu().long().tolist()
    if bounds[0] != 0 or bounds[-1] != seqlen or any(e < s for s, e in zip(bounds[:-1], bounds[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to seqlen {seqlen}, got {bounds}")
    return [(0, s, e) for s, e in zip(bounds[:-1], bounds[1:])]


def causal_conv1d_ref(x, weight, bias=None, activation="silu", initial_state=None, return_final_state=False,
                      cu_seqlens=None):
    """Causal depthwise conv1d over time, one sequence at a time.

    x: (batch, seqlen, dim); weight: (dim, width) or (dim, 1, width); bias: (dim,) or None
    activation: "silu" or None; initial_state: (batch|nseq, width-1, dim), the inputs before each sequence
    cu_seqlens: (nseq+1,) int, sequences packed along seqlen in batch 1
    Returns y (batch, seqlen, dim) in x's dtype, or (y, final_state (batch|nseq, width-1, dim) in x's dtype).
    Computes in float64 for float64 inputs, else float32. final_state is detached, as in the Triton path.
    """
    check_activation(activation)
    batch, seqlen, dim = x.shape
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = weight_2d(weight, dim).to(ct)  # (D, W)
    width = w.shape[1]
    seqs = sequence_bounds(batch, seqlen, cu_seqlens)
    if initial_state is not None and tuple(initial_state.shape) != (len(seqs), width - 1, dim):
        raise ValueError(f"initial_state must be ({len(seqs)}, {width - 1}, {dim}), got {tuple(initial_state.shape)}")
    ys, finals = [], []
    for i, (b, start, end) in enumerate(seqs):
        head = (x.new_zeros(width - 1, dim, dtype=ct) if initial_state is None
                else initial_state[i].to(ct))  # (W-1, D)
        xx = torch.cat([head, x[b, start:end].to(ct)])  # (len + W-1, D)
        n = end - start
        pre = sum(w[:, k] * xx[k:k + n] for k in range(width))  # (len, D)
        if bias is not None:
            pre = pre + bias.to(ct)
        ys.append(F.silu(pre) if activation == "silu" else pre)
        finals.append(xx[n:].detach())  # (W-1, D)
    y = torch.cat(ys).reshape(batch, seqlen, dim) if ys else x.new_zeros(x.shape, dtype=ct)
    y = y.to(x.dtype)
    if not return_final_state:
        return y
    return y, torch.stack(finals).to(x.dtype)
