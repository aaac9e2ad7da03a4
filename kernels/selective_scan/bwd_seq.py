"""Backward walk, `_bwd_seq_kernel`: every gradient, walking time backwards inside each thread.

Persistent programs each own a scratch slot. For each sub-tile of `sub` steps, last to first, a program replays
the forward from the checkpoint that `_bwd_chunk_kernel` wrote, once to keep the state entering each piece of
`seq_piece` steps, then per piece (last to first) again to keep every step's state in the slot. It then walks the
piece backwards with the adjoint mu_t = a_{t+1} mu_{t+1} + C_t gy_t in registers; the adjoint entering each chunk
from later chunks comes from the reverse carry. gu, gdelta and gz are stored per (t, d). dB and dC are summed over
the program's channels each step (one PTX reduce-scatter across the warp, `_lane_sums`, where the layout allows)
and added atomically; dA, dD and d(delta_bias) go to per-chunk partial sums that the caller reduces.
kernels/NOTES.md, "Sequential backward", has the design and its measurements.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .activations import _sigmoid, _softplus
from .registry import KERNELS, present
from .tiles import UNIT_ARGS, _sequence_start_state, _state_row, _state_row_offsets, one_group, padded_dstate
from .warp import _add, _lane_sums


@KERNELS.combine
def _keep_first(a, b):
    return a


@KERNELS.combine
def _add_pair(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


@KERNELS.kernel(heuristics=dict(HAS_D=present("D_ptr"), HAS_Z=present("z_ptr"), HAS_BIAS=present("bias_ptr"),
                                PACKED=present("seq_ptr"), HAS_H0=present("h0_ptr"), HAS_GFIN=present("gfin_ptr"),
                                NP=padded_dstate, ONE_GROUP=one_group,
                                TWO_LEVEL=lambda args: args["PIECE"] < args["SUB"]),
                do_not_specialize=UNIT_ARGS)
def _bwd_seq_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, seq_ptr, h0_ptr, gfin_ptr,
                    hsub_ptr, nu_ptr, scratch_ptr,
                    gu_ptr, gdt_ptr, gz_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr, gh0_ptr,
                    L, D, G, nchunks, nsub, ndblk, nwork, nprog, unit,
                    N: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    PACKED: tl.constexpr, HAS_H0: tl.constexpr, HAS_GFIN: tl.constexpr, ONE_GROUP: tl.constexpr,
                    PIECE: tl.constexpr, TWO_LEVEL: tl.constexpr, LANES: tl.constexpr):
    # Persistent: program `pid` owns scratch slot `pid` and takes work items pid, pid + nprog, ...; an item
    # is (channel block, chunk, batch), channel block fastest so programs running together share B/C rows.
    # LANES: the tiles have the layout of `_lane_sums` (ScanConfig.seq_lanes), so dB and dC are summed by it and
    # B/C rows are shared by `_lane_broadcast`.
    pid = tl.program_id(0)
    n = tl.arange(0, NP)  # (NP,)
    nmask = n < N
    # The slot holds the states after each step of one piece of PIECE steps, then (TWO_LEVEL) the states
    # entering each piece of the current sub-chunk
    slot = pid.to(tl.int64) * ((PIECE + SUB // PIECE) * NP * BD)
    mids = slot + PIECE * NP * BD
    # (NP, BD) offsets inside one step of the slot; through `unit` like the state tiles, so that the
    # compiler keeps each channel's states in one thread
    sc = n[:, None] * BD + (tl.arange(0, BD) + (unit - 1))[None, :]
    if LANES:
        # where `_lane_sums` leaves each state's sum over the warp: row 0, lanes 0-15, state bitrev4(lane)
        lane = tl.arange(0, BD)
        lane_state = ((lane & 1) << 3) | ((lane & 2) << 1) | ((lane & 4) >> 1) | ((lane & 8) >> 3)  # (BD,)
        lane_first = lane < 16  # lanes 16-31 hold the same sums again
    dpg = D // G
    for w in range(pid, nwork, nprog):
        pid_d = w % ndblk
        pid_c = (w // ndblk) % nchunks
        pid_b = (w // (ndblk * nchunks)).to(tl.int64)
        d = pid_d * BD + tl.arange(0, BD)  # (BD,)
        dl = d + (unit - 1)
        dmask = d < D
        m2 = nmask[:, None] & dmask[None, :]  # (NP, BD)
        tile = n[:, None] * D + dl[None, :]  # (NP, BD) offsets inside one (N, D) slab
        A2 = tl.load(A_ptr + tile, mask=m2, other=0.0) * 1.4426950408889634
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
        g0 = (pid_d * BD) // dpg  # the block's group, where the block lies inside one (ONE_GROUP)
        bc0, bmask = _state_row_offsets(pid_d, d, n, m2, dpg, N, BD, LANES, ONE_GROUP)
        t0 = pid_c * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        st = (pid_b * nchunks + pid_c) * N * D
        mu = tl.load(nu_ptr + st + tile, mask=m2, other=0.0)  # (NP, BD): the adjoint flowing in from later chunks
        # The decay of the step after the current one is recomputed from that step's delta (0 past the
        # chunk end: nu already carries what comes after) instead of being kept: a (BD,) vector, not (NP, BD).
        dt_next = tl.full((BD,), 0.0, tl.float32)
        keep_next = tl.full((BD,), 1.0, tl.float32)  # 0 where the next step starts a packed sequence
        gA_acc = tl.full((NP, BD), 0.0, tl.float32)
        gD_acc = tl.full((BD,), 0.0, tl.float32)
        gb_acc = tl.full((BD,), 0.0, tl.float32)
        nsc = (t1 - t0 + SUB - 1) // SUB
        for k in range(nsc):
            ts0 = t0 + (nsc - 1 - k) * SUB
            ts1 = tl.minimum(ts0 + SUB, t1)
            h = tl.load(hsub_ptr + (pid_b * nsub + ts0 // SUB) * N * D + tile, mask=m2, other=0.0)
            if TWO_LEVEL:
                # Forward over the whole sub-chunk once, keeping only the state entering each piece, so that
                # the per-step states live for one piece only: a slot small enough to stay in cache
                slast = ts1 - 1
                ud = (pid_b * L + ts0) * D + d
                bc = (pid_b * L + ts0) * (G * N) + bc0
                dt_a = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                u_a = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                t_b = tl.minimum(ts0 + 1, slast)
                ud = (pid_b * L + t_b) * D + d
                bc = (pid_b * L + t_b) * (G * N) + bc0
                dt_b = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                u_b = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                B_b = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                for t in tl.range(ts0, ts1, loop_unroll_factor=2):
                    t_c = tl.minimum(t + 2, slast)
                    ud = (pid_b * L + t_c) * D + d
                    bc = (pid_b * L + t_c) * (G * N) + bc0
                    dt_c = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                    u_c = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                    B_c = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                    if (t - ts0) % PIECE == 0:
                        tl.store(scratch_ptr + mids + ((t - ts0) // PIECE) * (NP * BD) + sc, h, mask=m2)
                    dt = dt_a.to(tl.float32)
                    if HAS_BIAS:
                        dt += bias
                    if SOFTPLUS:
                        dt = _softplus(dt)
                    Bt = _state_row(B_a, LANES, ONE_GROUP)
                    if PACKED:
                        s = tl.load(seq_ptr + t)
                        s_prev = tl.where(t > 0, tl.load(seq_ptr + tl.maximum(t - 1, 0)), -1)
                        start = s != s_prev
                        if start:
                            h = _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0)
                    h = tl.exp2(dt[None, :] * A2) * h + (dt * u_a.to(tl.float32))[None, :] * Bt
                    dt_a = dt_b
                    u_a = u_b
                    B_a = B_b
                    dt_b = dt_c
                    u_b = u_c
                    B_b = B_c
                tl.debug_barrier()
            npieces = (ts1 - ts0 + PIECE - 1) // PIECE
            for q in range(npieces):
                ps0 = ts0 + (npieces - 1 - q) * PIECE
                ps1 = tl.minimum(ps0 + PIECE, ts1)
                last = ps1 - 1
                if TWO_LEVEL:
                    h = tl.load(scratch_ptr + mids + (ps0 - ts0) // PIECE * (NP * BD) + sc, mask=m2, other=0.0)
                # Forward over the piece from its entering state; the state after each step goes to the slot.
                # Two-step software pipeline as in _chunk_end_kernel.
                ud = (pid_b * L + ps0) * D + d
                bc = (pid_b * L + ps0) * (G * N) + bc0
                dt_a = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                u_a = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                t_b = tl.minimum(ps0 + 1, last)
                ud = (pid_b * L + t_b) * D + d
                bc = (pid_b * L + t_b) * (G * N) + bc0
                dt_b = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                u_b = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                B_b = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                for t in tl.range(ps0, ps1, loop_unroll_factor=2):
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
                    Bt = _state_row(B_a, LANES, ONE_GROUP)
                    if PACKED:
                        s = tl.load(seq_ptr + t)
                        s_prev = tl.where(t > 0, tl.load(seq_ptr + tl.maximum(t - 1, 0)), -1)
                        start = s != s_prev
                        if start:
                            h = _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0)
                    h = tl.exp2(dt[None, :] * A2) * h + (dt * u_a.to(tl.float32))[None, :] * Bt
                    tl.store(scratch_ptr + slot + (t - ps0) * (NP * BD) + sc, h, mask=m2)
                    dt_a = dt_b
                    u_a = u_b
                    B_a = B_b
                    dt_b = dt_c
                    u_b = u_c
                    B_b = B_c
                # the slot is read back below (and rewritten by the next sub-chunk): order it across threads
                tl.debug_barrier()
                # Backward over the same steps, last to first, with the adjoint mu in registers:
                # mu_t = a_{t+1} mu_{t+1} + C_t gy_t.
                first = ps0
                ud = (pid_b * L + last) * D + d
                bc = (pid_b * L + last) * (G * N) + bc0
                dt_a = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                u_a = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                g_a = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
                B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                C_a = tl.load(C_ptr + bc, mask=bmask, other=0.0)
                if HAS_Z:
                    z_a = tl.load(z_ptr + ud, mask=dmask, other=0.0)
                t_b = tl.maximum(last - 1, first)
                ud = (pid_b * L + t_b) * D + d
                bc = (pid_b * L + t_b) * (G * N) + bc0
                dt_b = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                u_b = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                g_b = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
                B_b = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                C_b = tl.load(C_ptr + bc, mask=bmask, other=0.0)
                if HAS_Z:
                    z_b = tl.load(z_ptr + ud, mask=dmask, other=0.0)
                for i in tl.range(0, ps1 - ps0):
                    t = last - i
                    h = tl.load(scratch_ptr + slot + (t - ps0) * (NP * BD) + sc, mask=m2, other=0.0)  # state after t
                    t_c = tl.maximum(t - 2, first)
                    ud = (pid_b * L + t_c) * D + d
                    bc = (pid_b * L + t_c) * (G * N) + bc0
                    dt_c = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                    u_c = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                    g_c = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
                    B_c = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                    C_c = tl.load(C_ptr + bc, mask=bmask, other=0.0)
                    if HAS_Z:
                        z_c = tl.load(z_ptr + ud, mask=dmask, other=0.0)
                    raw = dt_a.to(tl.float32)
                    if HAS_BIAS:
                        raw += bias
                    if SOFTPLUS:
                        dt = _softplus(raw)
                    else:
                        dt = raw
                    u = u_a.to(tl.float32)
                    go = g_a.to(tl.float32)
                    if HAS_Z:
                        zz = z_a.to(tl.float32)
                        sig = _sigmoid(zz)
                        gy = go * zz * sig
                    else:
                        gy = go
                    Bt = _state_row(B_a, LANES, ONE_GROUP)
                    Ct = _state_row(C_a, LANES, ONE_GROUP)
                    dtu = dt * u
                    hx = h - dtu[None, :] * Bt  # a_t h_{t-1}: the decayed previous state (a_t h0 at a sequence start)
                    c = Ct * gy[None, :]
                    if PACKED:
                        s = tl.load(seq_ptr + t)
                        s_prev = tl.where(t > 0, tl.load(seq_ptr + tl.maximum(t - 1, 0)), -1)
                        start = s != s_prev
                        if HAS_GFIN:
                            s_next = tl.where(t + 1 < L, tl.load(seq_ptr + tl.minimum(t + 1, L - 1)), -1)
                            if s != s_next:
                                c += tl.load(gfin_ptr + s.to(tl.int64) * D * N + n[:, None] * D + dl[None, :],
                                             mask=m2, other=0.0)
                    if PACKED:
                        mu = (tl.exp2(dt_next[None, :] * A2) * keep_next[None, :]) * mu + c
                        if HAS_H0:
                            if start:
                                tl.store(gh0_ptr + s.to(tl.int64) * D * N + n[:, None] * D + dl[None, :],
                                         tl.exp2(dt[None, :] * A2) * mu, mask=m2)
                        keep_next = tl.where(start, 0.0, 1.0) + tl.full((BD,), 0.0, tl.float32)  # no adjoint crosses a start
                    else:
                        mu = tl.exp2(dt_next[None, :] * A2) * mu + c
                    dt_next = dt
                    muh = mu * hx
                    gA_acc += muh * dt[None, :]
                    # A2 carries log2(e): the A term is scaled back by ln(2) after the sum over states
                    muB = tl.reduce(mu * Bt, 0, _add)  # (BD,): shared by the u and delta gradients
                    gdt = u * muB + tl.reduce(muh * A2, 0, _add) * 0.6931471805599453
                    gu = dt * muB
                    y = tl.reduce(Ct * h, 0, _add)
                    if LANES:
                        # every row of a `_lane_sums` result is the same: take row 0 without arithmetic
                        gBl = tl.reduce(_lane_sums(mu * dtu[None, :]), 0, _keep_first)  # (BD,)
                        gCl = tl.reduce(_lane_sums(h * gy[None, :]), 0, _keep_first)
                        row = (pid_b * L + t) * (G * N) + g0 * N
                        tl.atomic_add(gB_ptr + row + lane_state, gBl, mask=lane_first, sem="relaxed")
                        tl.atomic_add(gC_ptr + row + lane_state, gCl, mask=lane_first, sem="relaxed")
                    elif ONE_GROUP:
                        gBt, gCt = tl.reduce((mu * dtu[None, :], h * gy[None, :]), 1, _add_pair)  # (NP,) each
                        row = (pid_b * L + t) * (G * N) + g0 * N + n + (unit - 1)  # through `unit`: not vectorised
                        tl.atomic_add(gB_ptr + row, gBt, mask=nmask, sem="relaxed")
                        tl.atomic_add(gC_ptr + row, gCt, mask=nmask, sem="relaxed")
                    else:
                        bc = (pid_b * L + t) * (G * N) + bc0
                        tl.atomic_add(gB_ptr + bc, mu * dtu[None, :], mask=m2, sem="relaxed")
                        tl.atomic_add(gC_ptr + bc, h * gy[None, :], mask=m2, sem="relaxed")
                    if HAS_D:
                        y += Dv * u
                        gu += gy * Dv
                        gD_acc += gy * u
                    off = (pid_b * L + t) * D + d
                    if HAS_Z:
                        tl.store(gz_ptr + off, go * y * sig * (1.0 + zz * (1.0 - sig)), mask=dmask)
                    if SOFTPLUS:
                        gdt = tl.where(raw <= 20.0, gdt * _sigmoid(raw), gdt)  # softplus' = sigmoid
                    if HAS_BIAS:
                        gb_acc += gdt
                    tl.store(gu_ptr + off, gu, mask=dmask)
                    tl.store(gdt_ptr + off, gdt, mask=dmask)
                    dt_a = dt_b
                    u_a = u_b
                    g_a = g_b
                    dt_b = dt_c
                    u_b = u_c
                    g_b = g_c
                    B_a = B_b
                    C_a = C_b
                    B_b = B_c
                    C_b = C_c
                    if HAS_Z:
                        z_a = z_b
                        z_b = z_c
                tl.debug_barrier()
        tl.store(gA_ptr + st + tile, gA_acc, mask=m2)
        part = (pid_b * nchunks + pid_c) * D + d
        if HAS_D:
            tl.store(gD_ptr + part, gD_acc, mask=dmask)
        if HAS_BIAS:
            tl.store(gbias_ptr + part, gb_acc, mask=dmask)


def seq_programs(batch, nchunks, dim, device, cfg) -> int:
    """How many persistent programs the walk launches: `seq_programs_per_sm` per SM (one SM when interpreting),
    at most one per work item. Each needs a scratch slot (`bwd_seq` takes them as one tensor)."""
    nwork = nchunks * triton.cdiv(dim, cfg.seq_block_d) * batch
    slots = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return min(nwork, slots * cfg.seq_programs_per_sm)


def bwd_seq(u, delta, At, B, C, D, z, delta_bias, gout, seq_idx, h0, gfin, hsub, nu, scratch,
            gu, gdt, gz, gB, gC, gA, gD, gbias, gh0, delta_softplus, cfg):
    """Launch the walk. Inputs as `bwd_chunk` takes them, with hsub its checkpoints, nu (batch, nchunks, N, dim)
    the adjoint at each chunk end, and scratch (nprog, seq_piece + sub / seq_piece, NP, seq_block_d) fp32 one slot
    per program (`seq_programs`). Writes gu, gdt (like u), gz (like z, or None), adds into gB, gC (like B, zeroed
    fp32), and writes the per-chunk partials gA (batch, nchunks, N, dim), gD and gbias (batch, nchunks, dim) and,
    in a packed batch with initial states, gh0 (nseq, N, dim), zeroed."""
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    nchunks = nu.shape[1]
    ndblk = triton.cdiv(dim, cfg.seq_block_d)
    nprog = scratch.shape[0]
    KERNELS.get("_bwd_seq_kernel", u.device)[(nprog,)](
        u_ptr=u, dt_ptr=delta, A_ptr=At, B_ptr=B, C_ptr=C, D_ptr=D, z_ptr=z, bias_ptr=delta_bias, gout_ptr=gout,
        seq_ptr=seq_idx, h0_ptr=h0, gfin_ptr=gfin, hsub_ptr=hsub, nu_ptr=nu, scratch_ptr=scratch,
        gu_ptr=gu, gdt_ptr=gdt, gz_ptr=gz, gB_ptr=gB, gC_ptr=gC, gA_ptr=gA, gD_ptr=gD, gbias_ptr=gbias, gh0_ptr=gh0,
        L=L, D=dim, G=G, nchunks=nchunks, nsub=hsub.shape[1], ndblk=ndblk, nwork=nchunks * ndblk * batch,
        nprog=nprog, unit=1,
        N=N, CHUNK=cfg.chunk, SUB=cfg.sub, BD=cfg.seq_block_d, SOFTPLUS=delta_softplus, PIECE=cfg.seq_piece,
        LANES=cfg.seq_lanes(N, dim, G), num_warps=cfg.seq_warps)
