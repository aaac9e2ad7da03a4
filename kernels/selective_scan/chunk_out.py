"""Forward pass 3, `_chunk_out_kernel`: every chunk again from its true starting state, writing the outputs.

    y_t = C_t . h_t + D u_t;  out = y * silu(z)

The state entering each chunk comes from the carry (carry.py), or for a sequence read as one chunk (a forward
with no backward, `ScanConfig.resolve`) from the initial state, with no pass 1 or carry before it. In a packed batch
the kernel writes each sequence's final state at its last step; given `final_ptr` otherwise, the last chunk writes
the state after it.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .activations import _sigmoid, _softplus
from .registry import KERNELS, present
from .tiles import UNIT_ARGS, _sequence_start_state, _state_row, _state_row_offsets, one_group, padded_dstate
from .warp import _add


@KERNELS.kernel(heuristics=dict(HAS_D=present("D_ptr"), HAS_Z=present("z_ptr"), HAS_BIAS=present("bias_ptr"),
                                PACKED=present("seq_ptr"), HAS_H0=present("h0_ptr"), NP=padded_dstate,
                                LAST_STATE=lambda args: args["final_ptr"] is not None and args["seq_ptr"] is None,
                                ONE_GROUP=one_group), do_not_specialize=UNIT_ARGS)
def _chunk_out_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, h0_ptr, hstart_ptr,
                      out_ptr, final_ptr,
                      L, D, G, nchunks, unit,
                      N: tl.constexpr, CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr,
                      HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PACKED: tl.constexpr,
                      HAS_H0: tl.constexpr, ONE_GROUP: tl.constexpr, LAST_STATE: tl.constexpr,
                      BC_LANES: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, NP)  # (NP,)
    dl = d + (unit - 1)  # the same channels, through `unit` (tiles.py)
    dmask = d < D
    nmask = n < N
    m2 = nmask[:, None] & dmask[None, :]  # (NP, BD)
    A2 = tl.load(A_ptr + n[:, None] * D + dl[None, :], mask=m2, other=0.0) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    dpg = D // G
    t0 = pid_c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, L)
    bc0, bmask = _state_row_offsets(pid_d, d, n, m2, dpg, N, BD, BC_LANES, ONE_GROUP)
    st = (pid_b * nchunks + pid_c) * N * D + n[:, None] * D + dl[None, :]
    h = tl.load(hstart_ptr + st, mask=m2, other=0.0)  # (NP, BD): the true state entering this chunk
    # the same two-step software pipeline as in _chunk_end_kernel
    last = t1 - 1
    ud = (pid_b * L + t0) * D + d
    bc = (pid_b * L + t0) * (G * N) + bc0
    dt_a = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
    u_a = tl.load(u_ptr + ud, mask=dmask, other=0.0)
    B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
    C_a = tl.load(C_ptr + bc, mask=bmask, other=0.0)
    if HAS_Z:
        z_a = tl.load(z_ptr + ud, mask=dmask, other=0.0)
    t_b = tl.minimum(t0 + 1, last)
    ud = (pid_b * L + t_b) * D + d
    bc = (pid_b * L + t_b) * (G * N) + bc0
    dt_b = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
    u_b = tl.load(u_ptr + ud, mask=dmask, other=0.0)
    B_b = tl.load(B_ptr + bc, mask=bmask, other=0.0)
    C_b = tl.load(C_ptr + bc, mask=bmask, other=0.0)
    if HAS_Z:
        z_b = tl.load(z_ptr + ud, mask=dmask, other=0.0)
    for t in tl.range(t0, t1, loop_unroll_factor=2):
        t_c = tl.minimum(t + 2, last)
        ud = (pid_b * L + t_c) * D + d
        bc = (pid_b * L + t_c) * (G * N) + bc0
        dt_c = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
        u_c = tl.load(u_ptr + ud, mask=dmask, other=0.0)
        B_c = tl.load(B_ptr + bc, mask=bmask, other=0.0)
        C_c = tl.load(C_ptr + bc, mask=bmask, other=0.0)
        if HAS_Z:
            z_c = tl.load(z_ptr + ud, mask=dmask, other=0.0)
        dt = dt_a.to(tl.float32)
        if HAS_BIAS:
            dt += bias
        if SOFTPLUS:
            dt = _softplus(dt)
        u = u_a.to(tl.float32)
        Bt = _state_row(B_a, BC_LANES, ONE_GROUP)
        Ct = _state_row(C_a, BC_LANES, ONE_GROUP)
        if PACKED:
            s = tl.load(seq_ptr + t)
            s_prev = tl.where(t > 0, tl.load(seq_ptr + tl.maximum(t - 1, 0)), -1)
            s_next = tl.where(t + 1 < L, tl.load(seq_ptr + tl.minimum(t + 1, L - 1)), -1)
            start = s != s_prev
            if start:
                h = _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0)
        h = tl.exp2(dt[None, :] * A2) * h + (dt * u)[None, :] * Bt
        y = tl.reduce(h * Ct, 0, _add)  # (BD,)
        if HAS_D:
            y += Dv * u
        if HAS_Z:
            zt = z_a.to(tl.float32)
            y = y * zt * _sigmoid(zt)
        tl.store(out_ptr + (pid_b * L + t) * D + d, y, mask=dmask)
        if PACKED:
            if s != s_next:
                tl.store(final_ptr + s.to(tl.int64) * D * N + n[:, None] * D + dl[None, :], h, mask=m2)
        dt_a = dt_b
        u_a = u_b
        B_a = B_b
        C_a = C_b
        dt_b = dt_c
        u_b = u_c
        B_b = B_c
        C_b = C_c
        if HAS_Z:
            z_a = z_b
            z_b = z_c
    if LAST_STATE:
        if pid_c == nchunks - 1:
            tl.store(final_ptr + pid_b * N * D + n[:, None] * D + dl[None, :], h, mask=m2)


def chunk_out(u, delta, At, B, C, D, z, delta_bias, seq_idx, h0, hstart, out, final, delta_softplus, cfg):
    """Launch pass 3 into out (batch, L, dim), and into final (nseq|batch, N, dim) fp32 when given: in a packed
    batch each sequence's final state, else the state after the last chunk.

    Inputs as `chunk_end` takes them, with C like B, D (dim,) fp32 or None, z like u or None, and hstart
    (batch, nchunks, N, dim) fp32 the state entering each chunk."""
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    nchunks = hstart.shape[1]
    grid = (nchunks, triton.cdiv(dim, cfg.block_d), batch)
    KERNELS.get("_chunk_out_kernel", u.device)[grid](
        u_ptr=u, dt_ptr=delta, A_ptr=At, B_ptr=B, C_ptr=C, D_ptr=D, z_ptr=z, bias_ptr=delta_bias, seq_ptr=seq_idx,
        h0_ptr=h0, hstart_ptr=hstart, out_ptr=out, final_ptr=final, L=L, D=dim, G=G, nchunks=nchunks, unit=1,
        N=N, CHUNK=cfg.chunk, BD=cfg.block_d, SOFTPLUS=delta_softplus, BC_LANES=cfg.block_lanes(N, dim, G),
        num_warps=cfg.warps)
