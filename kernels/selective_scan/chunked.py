"""Chunked selective scan in plain PyTorch: exact, memory-linear in seqlen, usable on CPU.

Within a chunk of `chunk_size` steps the recurrence h_t = a_t h_{t-1} + x_t is solved with a
log-depth (Hillis-Steele) scan over the pairs (a, x), vectorised over batch, dim and dstate; only
products of decays <= 1 appear, so it is as stable as the sequential loop. Chunks run one after the
other, carrying the state.

Memory: forward keeps only one chunk's (batch, chunk, dim, dstate) work tensors and the
chunk-boundary states (batch, dim, dstate) per chunk. Backward walks the chunks in reverse,
recomputing each one's states from its saved boundary state and solving the adjoint recurrence with
the same scan, so no (batch, seqlen, dim, dstate) tensor ever exists: O(B*L*D + B*D*N*chunk).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .naive import compute_dtype, expand_groups, run_packed

DEFAULT_CHUNK = 32


def _linear_scan(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + x_t from h_{-1} = 0 along dim 1.

    a, x: (batch, T, dim, dstate). Returns (prod_{s<=t} a_s, h_t), both (batch, T, dim, dstate).
    """
    T = a.shape[1]
    shift = 1
    while shift < T:
        # combine step t with step t - shift: (a, x) o (a', x') = (a a', a x' + x)
        x = torch.cat([x[:, :shift], a[:, shift:] * x[:, :-shift] + x[:, shift:]], dim=1)
        a = torch.cat([a[:, :shift], a[:, shift:] * a[:, :-shift]], dim=1)
        shift *= 2
    return a, x


def _discretize(u, delta, A, B, delta_bias, delta_softplus, ct):
    """dt (batch, T, dim), decay a = exp(dt A) and input x = dt u B, both (batch, T, dim, dstate)."""
    v = delta.to(ct)
    if delta_bias is not None:
        v = v + delta_bias.to(ct)
    dt = F.softplus(v) if delta_softplus else v
    a = torch.exp(dt[..., None] * A.to(ct))
    x = (dt * u.to(ct))[..., None] * expand_groups(B.to(ct), u.shape[2])
    return v, dt, a, x


def _group_sum(t: torch.Tensor, ngroups: int) -> torch.Tensor:
    """(batch, T, dim, dstate) -> (batch, T, ngroups, dstate): sum over the channels of each group."""
    b, T, d, n = t.shape
    return t.view(b, T, ngroups, d // ngroups, n).sum(3)


def _chunk(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    """One chunk from state h0 (batch, dim, dstate). Returns y (batch, T, dim) and h_T, in the compute dtype."""
    ct = h0.dtype
    _, _, a, x = _discretize(u, delta, A, B, delta_bias, delta_softplus, ct)
    cum_a, h = _linear_scan(a, x)
    h = h + cum_a * h0[:, None]  # (batch, T, dim, dstate)
    y = (h * expand_groups(C.to(ct), u.shape[2])).sum(-1)  # (batch, T, dim)
    if D is not None:
        y = y + u.to(ct) * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y, h[:, -1]


def _chunk_backward(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, gy, gh_end):
    """Gradients of one chunk, given dL/dy (batch, T, dim) and dL/dh_T (batch, dim, dstate).

    Recomputes the chunk's states from h0, then runs the adjoint recurrence
    g_t = C_t gy0_t + a_{t+1} g_{t+1} (g_T-1 also takes dL/dh_T) with the same log-depth scan, reversed.
    Returns a dict of gradients (None where an input is None) and dL/dh0.
    """
    ct = h0.dtype
    dim, ngroups = u.shape[2], B.shape[2]
    uf = u.to(ct)
    v, dt, a, x = _discretize(u, delta, A, B, delta_bias, delta_softplus, ct)
    cum_a, h = _linear_scan(a, x)
    h = h + cum_a * h0[:, None]  # (batch, T, dim, dstate)
    Cd = expand_groups(C.to(ct), dim)  # (batch, T, dim, dstate)
    gy = gy.to(ct)
    grads = {}
    if z is not None:
        zf = z.to(ct)
        sig = torch.sigmoid(zf)
        y0 = (h * Cd).sum(-1)
        if D is not None:
            y0 = y0 + uf * D.to(ct)
        grads["z"] = gy * y0 * sig * (1 + zf * (1 - sig))  # d silu(z)/dz = sig (1 + z (1 - sig))
        gy = gy * zf * sig  # dL/dy0
    gu = torch.zeros_like(uf)
    if D is not None:
        grads["D"] = (gy * uf).sum((0, 1))
        gu = gy * D.to(ct)
    grads["C"] = _group_sum(gy[..., None] * h, ngroups)
    # Adjoint of h: a reverse-time linear recurrence whose multiplier at step t is a_{t+1}.
    inj = gy[..., None] * Cd  # (batch, T, dim, dstate)
    inj[:, -1] += gh_end
    a_next = torch.cat([a[:, 1:], torch.ones_like(a[:, :1])], dim=1)
    _, g = _linear_scan(a_next.flip(1), inj.flip(1))
    g = g.flip(1)  # (batch, T, dim, dstate): dL/dh_t
    gh0 = a[:, 0] * g[:, 0]
    h_prev = torch.cat([h0[:, None], h[:, :-1]], dim=1)
    g_dtA = g * h_prev * a  # dL/d(dt A)
    grads["A"] = (g_dtA * dt[..., None]).sum((0, 1))
    Bd = expand_groups(B.to(ct), dim)
    gdt = (g_dtA * A.to(ct)).sum(-1) + (g * Bd).sum(-1) * uf
    gu = gu + (g * Bd).sum(-1) * dt
    grads["B"] = _group_sum(g * (dt * uf)[..., None], ngroups)
    if delta_softplus:
        gdt = gdt * torch.where(v > 20, torch.ones_like(v), torch.sigmoid(v))  # softplus threshold 20
    grads["delta"] = gdt
    grads["u"] = gu
    if delta_bias is not None:
        grads["delta_bias"] = gdt.sum((0, 1))
    return grads, gh0


class _ChunkedScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, chunk_size):
        seqlen = u.shape[1]
        boundary = []
        ys = []
        h = h0
        for s in range(0, seqlen, chunk_size):
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
        cs, seqlen = ctx.chunk_size, u.shape[1]
        per_step = {"u": u, "delta": delta, "B": B, "C": C, "z": z}
        shared = {"A": A, "D": D, "delta_bias": delta_bias}
        out = {k: (None if t is None else torch.zeros_like(t)) for k, t in {**per_step, **shared}.items()}
        gh = torch.zeros_like(boundary[0]) if gh is None else gh.to(boundary[0].dtype)
        if gy is None:
            gy = torch.zeros_like(u)
        for i in reversed(range(len(boundary))):
            s, e = i * cs, min(i * cs + cs, seqlen)
            sl = {k: (None if t is None else t[:, s:e]) for k, t in per_step.items()}
            g, gh = _chunk_backward(sl["u"], sl["delta"], A, sl["B"], sl["C"], D, sl["z"], delta_bias,
                                    ctx.delta_softplus, boundary[i], gy[:, s:e], gh)
            for k, gk in g.items():
                if k in per_step:
                    out[k][:, s:e] = gk.to(out[k].dtype)
                else:
                    out[k] += gk.to(out[k].dtype)
        return (out["u"], out["delta"], out["A"], out["B"], out["C"], out["D"], out["z"], out["delta_bias"],
                gh, None, None)


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
