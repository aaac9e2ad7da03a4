"""Backward recompute, `_bwd_chunk_kernel`: the forward again from the saved chunk-start states.

It writes the state entering every sub-tile of `sub` steps (L / sub checkpoints, which the backward walk in
bwd_seq.py replays from) and the chunk's local adjoint sum_t (prod_{r<=t} dA_r) C_t dy_t, computed forwards with
a running product of decays (no division). The reverse carry (carry.py) turns the local adjoints into the adjoint
at every chunk end.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .activations import _sigmoid, _softplus
from .registry import KERNELS, present
from .tiles import UNIT_ARGS, _sequence_start_state, _state_row, _state_row_offsets, one_group, padded_dstate


@KERNELS.kernel(heuristics=dict(HAS_Z=present("z_ptr"), HAS_BIAS=present("bias_ptr"), PACKED=present("seq_ptr"),
                                HAS_H0=present("h0_ptr"), HAS_GFIN=present("gfin_ptr"), NP=padded_dstate,
                                ONE_GROUP=one_group), do_not_specialize=UNIT_ARGS)
def _bwd_chunk_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, gout_ptr, seq_ptr, h0_ptr, gfin_ptr,
                      hstart_ptr, hsub_ptr, local_ptr,
                      L, D, G, nchunks, unit, nsub,
                      N: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                      HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PACKED: tl.constexpr,
                      HAS_H0: tl.constexpr, HAS_GFIN: tl.constexpr, ONE_GROUP: tl.constexpr,
                      BC_LANES: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    dl = d + (unit - 1)  # the same channels, through `unit` (tiles.py)
    dmask = d < D
    nmask = n < N
    m2 = nmask[:, None] & dmask[None, :]
    A2 = tl.load(A_ptr + n[:, None] * D + dl[None, :], mask=m2, other=0.0) * 1.4426950408889634
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    dpg = D // G
    t0 = pid_c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, L)
    bc0, bmask = _state_row_offsets(pid_d, d, n, m2, dpg, N, BD, BC_LANES, ONE_GROUP)
    tile = n[:, None] * D + dl[None, :]  # (NP, BD) offsets inside one (N, D) state slab
    st = (pid_b * nchunks + pid_c) * N * D
    h = tl.load(hstart_ptr + st + tile, mask=m2, other=0.0)
    acc = tl.full((NP, BD), 0.0, tl.float32)  # adjoint of the state entering the chunk, from this chunk alone
    cp = tl.full((NP, BD), 1.0, tl.float32)  # running product of decays since the chunk start
    # the same two-step software pipeline as in _chunk_end_kernel
    last = t1 - 1
    ud = (pid_b * L + t0) * D + d
    bc = (pid_b * L + t0) * (G * N) + bc0
    dt_a = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
    u_a = tl.load(u_ptr + ud, mask=dmask, other=0.0)
    g_a = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
    B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
    C_a = tl.load(C_ptr + bc, mask=bmask, other=0.0)
    if HAS_Z:
        z_a = tl.load(z_ptr + ud, mask=dmask, other=0.0)
    t_b = tl.minimum(t0 + 1, last)
    ud = (pid_b * L + t_b) * D + d
    bc = (pid_b * L + t_b) * (G * N) + bc0
    dt_b = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
    u_b = tl.load(u_ptr + ud, mask=dmask, other=0.0)
    g_b = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
    B_b = tl.load(B_ptr + bc, mask=bmask, other=0.0)
    C_b = tl.load(C_ptr + bc, mask=bmask, other=0.0)
    if HAS_Z:
        z_b = tl.load(z_ptr + ud, mask=dmask, other=0.0)
    for t in tl.range(t0, t1, loop_unroll_factor=2):
        if (t - t0) % SUB == 0:
            # the state entering each sub-tile: the backward walk restarts from these
            tl.store(hsub_ptr + (pid_b * nsub + t // SUB) * N * D + tile, h, mask=m2)
        t_c = tl.minimum(t + 2, last)
        ud = (pid_b * L + t_c) * D + d
        bc = (pid_b * L + t_c) * (G * N) + bc0
        dt_c = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
        u_c = tl.load(u_ptr + ud, mask=dmask, other=0.0)
        g_c = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
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
        gy = g_a.to(tl.float32)
        if HAS_Z:
            zt = z_a.to(tl.float32)
            gy = gy * zt * _sigmoid(zt)
        Bt = _state_row(B_a, BC_LANES, ONE_GROUP)
        Ct = _state_row(C_a, BC_LANES, ONE_GROUP)
        if PACKED:
            s = tl.load(seq_ptr + t)
            s_prev = tl.where(t > 0, tl.load(seq_ptr + tl.maximum(t - 1, 0)), -1)
            start = s != s_prev
            if start:
                h = _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0)
                cp = tl.full((NP, BD), 0.0, tl.float32)
        dA = tl.exp2(dt[None, :] * A2)
        h = dA * h + (dt * u)[None, :] * Bt
        cp = cp * dA
        acc += cp * (Ct * gy[None, :])
        if PACKED:
            if HAS_GFIN:
                s_next = tl.where(t + 1 < L, tl.load(seq_ptr + tl.minimum(t + 1, L - 1)), -1)
                if s != s_next:
                    acc += cp * tl.load(gfin_ptr + s.to(tl.int64) * D * N + n[:, None] * D + dl[None, :], mask=m2,
                                        other=0.0)
        dt_a = dt_b
        u_a = u_b
        g_a = g_b
        B_a = B_b
        C_a = C_b
        dt_b = dt_c
        u_b = u_c
        g_b = g_c
        B_b = B_c
        C_b = C_c
        if HAS_Z:
            z_a = z_b
            z_b = z_c
    tl.store(local_ptr + st + tile, acc, mask=m2)


def bwd_chunk(u, delta, At, B, C, z, delta_bias, gout, seq_idx, h0, gfin, hstart, hsub, local, delta_softplus,
              cfg):
    """Launch the recompute into hsub (batch, nsub, N, dim) and local (batch, nchunks, N, dim) fp32.

    Inputs as `chunk_out` takes them, with gout the output gradient (batch, L, dim), and in a packed batch gfin
    (nseq, N, dim) fp32 the final-state gradient (else None)."""
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    nchunks = hstart.shape[1]
    grid = (nchunks, triton.cdiv(dim, cfg.block_d), batch)
    KERNELS.get("_bwd_chunk_kernel", u.device)[grid](
        u_ptr=u, dt_ptr=delta, A_ptr=At, B_ptr=B, C_ptr=C, z_ptr=z, bias_ptr=delta_bias, gout_ptr=gout,
        seq_ptr=seq_idx, h0_ptr=h0, gfin_ptr=gfin, hstart_ptr=hstart, hsub_ptr=hsub, local_ptr=local,
        L=L, D=dim, G=G, nchunks=nchunks, unit=1, nsub=hsub.shape[1],
        N=N, CHUNK=cfg.chunk, SUB=cfg.sub, BD=cfg.block_d, SOFTPLUS=delta_softplus,
        BC_LANES=cfg.block_lanes(N, dim, G), num_warps=cfg.warps, maxnreg=cfg.bwd_chunk_maxnreg(N, dim, G))
