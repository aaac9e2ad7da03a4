"""Forward pass 1, `_chunk_end_kernel`: each chunk's end state from a zero start, and its total decay.

Each program owns one chunk of `chunk` steps x `block_d` channels and walks time sequentially from h = 0, with the
(dstate, block_d) state tile in registers (each thread owns whole channels, so the sum over dstate never leaves
the thread). It writes the chunk's end state and its decay exp(A * sum(delta)), which the carry (carry.py) turns
into each chunk's true starting state. In a packed batch a chunk that contains a sequence start passes no state
across it: its decay is 0 and its end state starts from that sequence's initial state.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .activations import _softplus
from .registry import KERNELS, present
from .tiles import UNIT_ARGS, _sequence_start_state, _state_row, _state_row_offsets, one_group, padded_dstate


@KERNELS.kernel(heuristics=dict(HAS_BIAS=present("bias_ptr"), PACKED=present("seq_ptr"), HAS_H0=present("h0_ptr"),
                                NP=padded_dstate, ONE_GROUP=one_group), do_not_specialize=UNIT_ARGS)
def _chunk_end_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, seq_ptr, h0_ptr, hend_ptr, P_ptr,
                      L, D, G, nchunks, unit,
                      N: tl.constexpr, CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTPLUS: tl.constexpr, PACKED: tl.constexpr, HAS_H0: tl.constexpr,
                      ONE_GROUP: tl.constexpr, BC_LANES: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, NP)  # (NP,)
    dl = d + (unit - 1)  # the same channels, through `unit` (tiles.py)
    dmask = d < D
    m2 = (n < N)[:, None] & dmask[None, :]  # (NP, BD)
    A2 = tl.load(A_ptr + n[:, None] * D + dl[None, :], mask=m2, other=0.0) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    dpg = D // G
    t0 = pid_c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, L)
    bc0, bmask = _state_row_offsets(pid_d, d, n, m2, dpg, N, BD, BC_LANES, ONE_GROUP)
    h = tl.full((NP, BD), 0.0, tl.float32)
    dt_sum = tl.full((BD,), 0.0, tl.float32)
    keep = tl.full((BD,), 1.0, tl.float32)
    # Software pipeline two steps deep: the loads for step t + 2 are issued before step t is computed,
    # so their latency overlaps two steps of exponentials instead of stalling every step. Offsets are
    # recomputed from t (not carried) so the compiler sees the alignment of B and C: vector loads.
    last = t1 - 1
    ud = (pid_b * L + t0) * D + d  # (BD,) int64
    bc = (pid_b * L + t0) * (G * N) + bc0
    dt_a = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
    u_a = tl.load(u_ptr + ud, mask=dmask, other=0.0)
    B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
    t_b = tl.minimum(t0 + 1, last)
    ud = (pid_b * L + t_b) * D + d
    bc = (pid_b * L + t_b) * (G * N) + bc0
    dt_b = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
    u_b = tl.load(u_ptr + ud, mask=dmask, other=0.0)
    B_b = tl.load(B_ptr + bc, mask=bmask, other=0.0)
    for t in tl.range(t0, t1, loop_unroll_factor=2):
        t_c = tl.minimum(t + 2, last)
        ud = (pid_b * L + t_c) * D + d
        bc = (pid_b * L + t_c) * (G * N) + bc0
        dt_c = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
        u_c = tl.load(u_ptr + ud, mask=dmask, other=0.0)
        B_c = tl.load(B_ptr + bc, mask=bmask, other=0.0)
        dt = dt_a.to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt)
        u = u_a.to(tl.float32)
        Bt = _state_row(B_a, BC_LANES, ONE_GROUP)
        if PACKED:
            s = tl.load(seq_ptr + t)
            s_prev = tl.where(t > 0, tl.load(seq_ptr + tl.maximum(t - 1, 0)), -1)
            start = s != s_prev
            if start:
                h = _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0)
            keep = tl.where(start, 0.0, keep)
        dt_sum += dt
        h = tl.exp2(dt[None, :] * A2) * h + (dt * u)[None, :] * Bt
        dt_a = dt_b
        u_a = u_b
        B_a = B_b
        dt_b = dt_c
        u_b = u_c
        B_b = B_c
    out = (pid_b * nchunks + pid_c) * N * D + n[:, None] * D + dl[None, :]  # (NP, BD), layout (B, nchunks, N, D)
    tl.store(hend_ptr + out, h, mask=m2)
    tl.store(P_ptr + out, tl.exp2(A2 * dt_sum[None, :]) * keep[None, :], mask=m2)


def chunk_end(u, delta, At, B, delta_bias, seq_idx, h0, hend, P, delta_softplus, cfg):
    """Launch pass 1 into hend and P (batch, nchunks, N, dim) fp32.

    u, delta: (batch, L, dim); At: (N, dim) fp32; B: (batch, L, G, N) fp32; delta_bias: (dim,) fp32 or None;
    seq_idx: (L,) int32 sequence index of a packed batch, or None; h0: (nseq, N, dim) fp32 initial states of a
    packed batch, or None."""
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    nchunks = hend.shape[1]
    grid = (nchunks, triton.cdiv(dim, cfg.block_d), batch)
    KERNELS.get("_chunk_end_kernel", u.device)[grid](
        u_ptr=u, dt_ptr=delta, A_ptr=At, B_ptr=B, bias_ptr=delta_bias, seq_ptr=seq_idx, h0_ptr=h0, hend_ptr=hend,
        P_ptr=P, L=L, D=dim, G=G, nchunks=nchunks, unit=1,
        N=N, CHUNK=cfg.chunk, BD=cfg.block_d, SOFTPLUS=delta_softplus, BC_LANES=cfg.block_lanes(N, dim, G),
        num_warps=cfg.warps)
