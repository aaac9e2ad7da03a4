"""Reference selective scan: a plain loop over time, in float32 or float64.

This is the definition every fast path is tested against. It materialises per-step states of shape
(batch, dim, dstate) only, one step at a time, and is slow on purpose: it mirrors the math line by line.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (for reference checks); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def split_packed(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) pairs of the packed sequences described by cu_seqlens (nseq+1,)."""
    bounds = cu_seqlens.detach().cpu().long().tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def expand_groups(BC: torch.Tensor, dim: int) -> torch.Tensor:
    """(batch, seqlen, ngroups, dstate) -> (batch, seqlen, dim, dstate): channel c reads group c // (dim / ngroups)."""
    ngroups = BC.shape[2]
    if dim % ngroups:
        raise ValueError(f"dim {dim} is not divisible by ngroups {ngroups}")
    return BC.repeat_interleave(dim // ngroups, dim=2)


def run_packed(scan, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
               return_final_state, cu_seqlens, **kw):
    """Run `scan` on each packed sequence alone and concatenate: the state resets at every boundary."""
    if u.shape[0] != 1:
        raise ValueError("cu_seqlens needs batch size 1 (sequences packed along seqlen)")
    ys, finals = [], []
    for i, (s, e) in enumerate(split_packed(cu_seqlens)):
        h0 = None if initial_state is None else initial_state[i:i + 1]
        out = scan(u[:, s:e], delta[:, s:e], A, B[:, s:e], C[:, s:e], D=D,
                   z=None if z is None else z[:, s:e], delta_bias=delta_bias, delta_softplus=delta_softplus,
                   initial_state=h0, return_final_state=True, **kw)
        ys.append(out[0])
        finals.append(out[1])
    y = torch.cat(ys, dim=1)
    return (y, torch.cat(finals, dim=0)) if return_final_state else y


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       initial_state=None, return_final_state=False, cu_seqlens=None):
    """Selective scan, the same math as mamba_ssm's selective_scan_fn, channel-last.

    u, delta, z: (batch, seqlen, dim); A: (dim, dstate); B, C: (batch, seqlen, ngroups, dstate)
    D, delta_bias: (dim,); initial_state: (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens
    cu_seqlens: (nseq+1,) int offsets of sequences packed in batch 1; the state resets at each boundary.
    Returns y (batch, seqlen, dim) in u's dtype, or (y, final_state) with final_state (batch|nseq, dim, dstate)
    in the compute dtype (float64 for float64 inputs, else float32).
    """
    if cu_seqlens is not None:
        return run_packed(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, delta_softplus,
                          initial_state, return_final_state, cu_seqlens)
    ct = compute_dtype(u)
    batch, seqlen, dim = u.shape
    dstate = A.shape[1]
    uf = u.to(ct)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct)
    if delta_softplus:
        dt = F.softplus(dt)  # threshold 20: identity above, as in mamba_ssm
    Af = A.to(ct)
    Bd = expand_groups(B.to(ct), dim)  # (batch, seqlen, dim, dstate)
    Cd = expand_groups(C.to(ct), dim)  # (batch, seqlen, dim, dstate)
    h = (torch.zeros(batch, dim, dstate, dtype=ct, device=u.device) if initial_state is None
         else initial_state.to(ct))  # (batch, dim, dstate)
    ys = []
    for t in range(seqlen):
        decay = torch.exp(dt[:, t, :, None] * Af)  # (batch, dim, dstate)
        h = decay * h + (dt[:, t] * uf[:, t])[:, :, None] * Bd[:, t]
        ys.append((h * Cd[:, t]).sum(-1))  # (batch, dim)
    y = torch.stack(ys, dim=1) if ys else uf.new_zeros(batch, 0, dim)  # (batch, seqlen, dim)
    if D is not None:
        y = y + uf * D.to(ct)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(u.dtype)
    return (y, h) if return_final_state else y
