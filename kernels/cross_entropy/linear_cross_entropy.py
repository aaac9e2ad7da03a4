"""Linear + cross-entropy over a small vocabulary, chunked over rows so the whole logits never exist.

    nll = logsumexp(hidden @ weight.T) - (hidden @ weight.T)[target],  per row, unreduced

Plain PyTorch inside one autograd.Function (the two matmuls are cuBLAS's; what a fused kernel could save is the
elementwise passes over each chunk's logits, a few ms at a million rows against a training step of about a
second). Forward: for each chunk of `chunk_size` rows, the chunk's logits (chunk_size, V) in fp32, their
logsumexp and the target's logit; it saves hidden, weight, targets and the per-row logsumexp (N,). Backward:
each chunk's logits again from the saved hidden, softmax from the saved logsumexp, minus the one-hot target,
times the incoming gradient of nll; then d_hidden = G @ weight (in hidden's dtype) and d_weight += G.T @ hidden
(fp32). At most one chunk of logits (in fp32, plus its copy in the matmul dtype) is alive at a time.

The matmul dtype follows F.linear (`naive.matmul_dtype`): under torch.autocast, the autocast dtype.
"""
from __future__ import annotations

import torch

from .naive import check_inputs, loss_dtype, matmul_dtype

# Rows per chunk are chosen so one chunk of fp32 logits takes this many bytes: 131072 rows at V = 256.
CHUNK_BYTES = 128 * 2 ** 20


def default_chunk_size(vocab: int) -> int:
    """Rows per chunk so that chunk x V fp32 logits take CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // (4 * vocab))


def _chunk_logits(h, w, acc_dtype):
    # h: (C, d) in the matmul dtype; w: (V, d) in the matmul dtype. Returns (C, V) in acc_dtype.
    return (h @ w.T).to(acc_dtype)


class LinearCrossEntropyFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, mm_dtype):
        # hidden: (N, d); weight: (V, d); targets: (N,)
        acc = loss_dtype(mm_dtype)
        n = hidden.shape[0]
        nll = torch.empty(n, dtype=acc, device=hidden.device)
        lse = torch.empty(n, dtype=acc, device=hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm_dtype)  # (V, d)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                logits = _chunk_logits(hidden[s:e].to(mm_dtype), w, acc)  # (C, V)
                torch.logsumexp(logits, -1, out=lse[s:e])
                torch.sub(lse[s:e], logits.gather(1, targets[s:e, None]).squeeze(1), out=nll[s:e])
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.chunk, ctx.mm_dtype = chunk, mm_dtype
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        hidden, weight, targets, lse = ctx.saved_tensors
        chunk, mm_dtype = ctx.chunk, ctx.mm_dtype
        acc = lse.dtype
        n = hidden.shape[0]
        want_h, want_w = ctx.needs_input_grad[:2]
        d_hidden = torch.empty_like(hidden) if want_h else None
        d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
        grad_nll = grad_nll.to(acc)
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(mm_dtype)  # (V, d)
            for s in range(0, n, chunk):
                e = min(n, s + chunk)
                h = hidden[s:e].to(mm_dtype)  # (C, d)
                g = _chunk_logits(h, w, acc)  # (C, V), turned in place into d nll / d logits
                g.sub_(lse[s:e, None]).exp_()  # softmax
                g.scatter_add_(1, targets[s:e, None], g.new_full((e - s, 1), -1.0))  # minus the one-hot target
                g.mul_(grad_nll[s:e, None])
                g = g.to(mm_dtype)
                if want_h:
                    d_hidden[s:e] = g @ w
                if want_w:
                    d_weight += (g.T @ h).to(acc)
        return d_hidden, None if d_weight is None else d_weight.to(weight.dtype), None, None, None


def linear_cross_entropy(hidden, weight, targets, chunk_size=None):
    """Per-row negative log-likelihood of `targets` under softmax(hidden @ weight.T), chunked over rows.

    hidden: (..., d) fp32, bf16, ... (under torch.autocast the matmul runs in the autocast dtype, as F.linear's);
    weight: (V, d), the tied embedding; targets: (...) int64 in [0, V); chunk_size: rows per chunk (None:
    `default_chunk_size(V)`). Returns nll (...) fp32 (float64 for float64 inputs), unreduced. Same contract as
    `linear_cross_entropy_ref`; gradients reach hidden (in its dtype) and weight.
    """
    check_inputs(hidden, weight, targets)
    chunk = default_chunk_size(weight.shape[0]) if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    rows = hidden.reshape(-1, hidden.shape[-1])  # (N, d)
    nll = LinearCrossEntropyFn.apply(rows, weight, targets.reshape(-1).long(), chunk, matmul_dtype(hidden, weight))
    return nll.view(targets.shape)
