"""Chunked selective scan in plain PyTorch: exact, memory-linear in seqlen, usable on CPU.

Within a chunk of `chunk_size` steps the recurrence h_t = a_t h_{t-1} + x_t is solved with a
log-depth (Hillis-Steele) scan over the pairs (a, x), vectorised over batch, dim and dstate; only
products of decays <= 1 appear, so it is as stable as the sequential loop. Chunks run one after the
other, carrying the state.

Memory: forward keeps only one chunk's (batch, chunk, dim, dstate) work tensors and the
chunk-boundary states (batch, dim, dstate) per chunk. Backward walks the chunks in reverse,
recomputing each one from its saved boundary state under autograd, so no (batch, seqlen, dim,
dstate) tensor ever exists: O(B*L*D + B*D*N*chunk) as a whole.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import compute_dtype, expand_groups, run_packed

DEFAULT_CHUNK = 32


def _chunk(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    """One chunk from state h0 (batch, dim, dstate). Returns y (batch, T, dim) and h_T, in the compute dtype."""
    ct = h0.dtype
    dim = u.shape[2]
    uf = u.to(ct)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)
    if delta_softplus:
        dt = F.softplus(dt)
    a = torch.exp(dt[..., None] * A.to(ct))  # (batch, T, dim, dstate)
    x = (dt * uf)[..., None] * expand_groups(B.to(ct), dim)  # (batch, T, dim, dstate)
    T = u.shape[1]
    shift = 1
    while shift < T:
        # combine step t with step t - shift: (a, x) o (a', x') = (a a', a x' + x)
        x = torch.cat([x[:, :shift], a[:, shift:] * x[:, :-shift] + x[:, shift:]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    h = x + a * h0[:, None]  # (batch, T, dim, dstate)
    y = (h * expand_groups(C.to(ct), dim)).sum(-1)  # (batch, T, dim)
    if D is not None:
        y = y + uf * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y, h[:, -1]


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, chunk_size):
        seqlen = u.shape[1]
        starts = list(range(0, seqlen, chunk_size))
        boundary = []
        ys = []
        h = h0
        for s in starts:
            e = min(s + chunk_size, seqlen)
            boundary.append(h)
            y, h = _chunk(u[:, s:e], delta[:, s:e], A, B[:, s:e], C[:, s:e], D,
                          None if z is None else z[:, s:e], delta_bias, delta_softplus, h)
            ys.append(y.to(u.dtype))
        y = torch.cat(ys, dim=1) if ys else u.new_zeros(u.shape)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, *boundary)
        ctx.delta_softplus = delta_softplus
        ctx.chunk_size = chunk_size
        return y, h

    @staticmethod
    def backward(ctx, gy, gh):
        u, delta, A, B, C, D, z, delta_bias, *boundary = ctx.saved_tensors
        cs = ctx.chunk_size
        seqlen = u.shape[1]
        need = ctx.needs_input_grad
        grads = {k: None for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")}
        full = {"u": u, "delta": delta, "B": B, "C": C, "z": z}
        for k, t in full.items():
            if t is not None and need[["u", "delta", "A", "B", "C", "D", "z", "delta_bias"].index(k)]:
                grads[k] = torch.zeros_like(t)
        shared = {"A": A, "D": D, "delta_bias": delta_bias}
        gh = torch.zeros_like(boundary[0]) if gh is None else gh.to(boundary[0].dtype)
        for i in reversed(range(len(boundary))):
            s = i * cs
            e = min(s + cs, seqlen)
            with torch.enable_grad():
                inputs = {k: (None if t is None else t[:, s:e].detach().requires_grad_(grads[k] is not None))
                          for k, t in full.items()}
                params = {k: (None if t is None else t.detach().requires_grad_(True)) for k, t in shared.items()}
                h0 = boundary[i].detach().requires_grad_(True)
                y, hT = _chunk(inputs["u"], inputs["delta"], params["A"], inputs["B"], inputs["C"], params["D"],
                               inputs["z"], params["delta_bias"], ctx.delta_softplus, h0)
                wrt = {k: v for k, v in {**inputs, **params}.items() if v is not None and v.requires_grad}
                wrt["h0"] = h0
                g = torch.autograd.grad([y, hT], list(wrt.values()), [gy[:, s:e].to(y.dtype), gh],
                                        allow_unused=True)
            for k, gk in zip(wrt.keys(), g):
                if gk is None:
                    continue
                if k == "h0":
                    gh = gk
                elif k in full:
                    grads[k][:, s:e] = gk.to(grads[k].dtype)
                elif grads[k] is None:
                    grads[k] = gk
                else:
                    grads[k] = grads[k] + gk
        for k, t in shared.items():
            if grads[k] is not None:
                grads[k] = grads[k].to(t.dtype)
        return (grads["u"], grads["delta"], grads["A"], grads["B"], grads["C"], grads["D"], grads["z"],
                grads["delta_bias"], gh, None, None)


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           initial_state=None, return_final_state=False, cu_seqlens=None, *,
                           chunk_size: int = DEFAULT_CHUNK):
    """Selective scan, chunked pure PyTorch. Same contract as `selective_scan_ref`.

    u, delta, z: (batch, seqlen, dim); A: (dim, dstate); B, C: (batch, seqlen, ngroups, dstate)
    D, delta_bias: (dim,); initial_state: (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens
    Returns y (batch, seqlen, dim) in u's dtype, or (y, final_state (batch|nseq, dim, dstate)).
    """
    if cu_seqlens is not None:
        return run_packed(selective_scan_chunked, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          initial_state, return_final_state, cu_seqlens, chunk_size=chunk_size)
    ct = compute_dtype(u)
    batch, _, dim = u.shape
    h0 = (torch.zeros(batch, dim, A.shape[1], dtype=ct, device=u.device) if initial_state is None
          else initial_state.to(ct))
    y, hT = _ChunkedScan.apply(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, int(chunk_size))
    return (y, hT) if return_final_state else y
