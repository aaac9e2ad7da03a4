"""Triton selective scan, forward and backward, chunk-parallel over time.

File order follows mamba_ssm: kernels, then launchers, then the autograd.Function, then the public
function. The math (DESIGN.md, "The selective-scan kernels"):

    delta = softplus(delta + delta_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
    y_t = C_t . h_t + D u_t;  out = y * silu(z)

Forward, three launches:
  1. `_chunk_end_kernel`: each program owns one chunk of `chunk` steps x `block_d` channels and walks
     time sequentially from h = 0, with the (dstate, block_d) state tile in registers (each thread
     owns whole channels, so the sum over dstate never leaves the thread). It writes the chunk's end
     state and its total decay exp(A * sum(delta)).
  2. `_carry_kernel`: one short sequential pass over chunks turns those into each chunk's true
     starting state (and the final state).
  3. `_chunk_out_kernel`: each chunk again from its true start, writing the outputs.
  That is two exponentials per (t, d, n): the floor DESIGN.md names for this route.

Backward, four launches, nothing of shape (batch, seqlen, dim, dstate):
  1. `_bwd_chunk_kernel`: forward again from the saved chunk-start states, writing the state every
     `sub` steps (seqlen/sub checkpoints), and the chunk's local adjoint
     sum_t (prod_{r<=t} dA_r) C_t dy_t, computed forwards with a running product (no division).
  2. `_carry_kernel` in reverse: the adjoint at every chunk end.
  3. One of two kernels, chosen by `ScanConfig.bwd_mode`:
     "tile", `_bwd_out_kernel`: per sub-tile of `sub` steps (last to first) and per state n: a forward
     associative scan rebuilds h inside the tile from its checkpoint, a reverse scan gives the
     adjoint, and every gradient is formed. dB and dC are summed over the block's channels and added
     atomically; dA, dD and d(delta_bias) go to per-chunk partial sums reduced afterwards.
     "seq" (the default), `_bwd_seq_kernel`: time stays inside each thread, as in the forward.
     Persistent programs each own a scratch slot. For each sub-tile, last to first, a program replays
     the forward from the checkpoint, once to keep the state entering each piece of `seq_piece` steps,
     then per piece (last to first) again to keep every step's state in the slot. It then walks the
     piece backwards with the adjoint mu_t = a_{t+1} mu_{t+1} + C_t gy_t in registers. dB and dC are
     summed over the program's 32 channels each step, by one PTX reduce-scatter across the warp
     (`_lane_sums`), and added atomically (one add per state from each channel block); the partial
     sums are as in "tile".

Every kernel but the tile one reads the B and C row of a step one value a lane and shares it across the
warp with shuffles (`_lane_broadcast`), so rows loaded ahead cost one register a lane instead of 16.

Packed sequences (`cu_seqlens`) use a per-step sequence index: at a sequence start the state is
replaced by that sequence's initial state (or zeros), read only there, and a chunk containing a start
passes no state across it (its total decay is 0). All offsets that scale with seqlen are int64.
"""
from __future__ import annotations

import os
import types
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.runtime.jit import JITFunction

from .naive import compute_dtype

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

DEFAULT_SUB = 64
DEFAULT_BLOCK_D = 128
DEFAULT_WARPS = 4
DEFAULT_BWD_BLOCK_D = 16
DEFAULT_BWD_WARPS = 1
DEFAULT_CARRY_BLOCK = 512
DEFAULT_BWD_MODE = "seq"
DEFAULT_SEQ_BLOCK_D = 32
DEFAULT_SEQ_WARPS = 1
DEFAULT_SEQ_PROGRAMS_PER_SM = 8
DEFAULT_SEQ_PIECE = 8
DEFAULT_LANE_SUMS = True
DEFAULT_SEQ_BC_LANES = True
DEFAULT_BC_LANES = True
DEFAULT_SEQ_WALK_UNROLL = 1
# Register caps for `_bwd_chunk_kernel` ("auto"): 168 lets three 4-warp programs share an SM instead of two;
# with B and C loaded one value a lane (bc_lanes) the kernel needs fewer registers and 128 fits four
BWD_CHUNK_MAXNREG = 168
BWD_CHUNK_MAXNREG_BC_LANES = 128


# The scan combine functions are always compiled-mode JITFunctions: the interpreter calls their
# plain Python body (`.fn`), the compiler needs the JITFunction, so one object serves both.
def _affine_combine(a_early, x_early, a_late, x_late):
    # h = a_late * (a_early * h_in + x_early) + x_late
    return a_early * a_late, a_late * x_early + x_late


def _adjoint_combine(pa_late, m_late, b_late, pa_early, m_early, b_early):
    # A segment [i..j] stands for mu_i = b + m * nu, where nu = a_{j+1} mu_{j+1} comes from the right,
    # and pa = a_i is the decay a segment to its left must apply. Joining early [i..k] with late
    # [k+1..j]: nu_early = pa_late * (b_late + m_late * nu).
    w = m_early * pa_late
    return pa_early, w * m_late, b_early + w * b_late


_affine_combine = JITFunction(_affine_combine)
# Triton's own sum combine: the interpreter recognises it and sums with numpy; tl.sum itself is a
# jit function fixed at triton's import to one mode, so the kernels call tl.reduce with this directly.
_add = tl.standard._sum_combine
_adjoint_combine = JITFunction(_adjoint_combine)


# Softplus and sigmoid, each written once and called from every kernel. Compiled, the softplus's log is the
# hardware lg2.approx (one MUFU op, relative error about 2^-22) instead of the precise log's ~25-instruction
# polynomial, a sixth of a forward step's instructions. The interpreter has no libdevice and cannot call a
# JITFunction from kernel code, so interpreted kernels see the plain functions of `_INTERPRETER_HELPERS`
# under the same names (see `_kernel`). Exponentials are exp2 of a pre-scaled argument: tl.exp adds range
# fix-up instructions around the same MUFU op.
def _softplus(x):
    # log(1 + e^x); above 20 it equals x in fp32
    return tl.where(x <= 20.0, libdevice.fast_log2f(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453, x)


def _softplus_interpreted(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp2(x * 1.4426950408889634)), x)


def _sigmoid_interpreted(x):
    return 1.0 / (1.0 + tl.exp2(x * -1.4426950408889634))


_softplus = JITFunction(_softplus)
_sigmoid = JITFunction(_sigmoid_interpreted)


def _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0):
    # the state a packed sequence `s` starts from: its initial state, (N, D) like every state tile, or zeros.
    # The kernels call this under `if start:`, so the tile is read only at sequence starts.
    if HAS_H0:
        h = tl.load(h0_ptr + s.to(tl.int64) * D * N + n[:, None] * D + dl[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.full(m2.shape, 0.0, tl.float32)
    return h


def _lane_sums_ptx() -> str:
    """PTX for `_lane_sums`: a reduce-scatter over the 32 lanes of a warp. Each lane brings 16 values
    (one channel's states) and keeps half of what it holds at each of four butterfly steps, so 15
    shuffles replace the 80 of summing each state across the warp separately. After a fifth step every
    lane holds the sum over all 32 lanes of one state: lane j (and j + 16) holds state bitrev4(j)."""
    lines = ["{", ".reg .pred p;", ".reg .b32 lane, bit, s, r, k;", ".reg .b32 v<16>;", "mov.u32 lane, %laneid;"]
    lines += [f"mov.b32 v{j}, ${16 + j};" for j in range(16)]
    half = 8
    for m in (1, 2, 4, 8):
        # lanes with this bit set keep the upper half of their values and send the lower half
        lines += [f"and.b32 bit, lane, {m};", "setp.ne.u32 p, bit, 0;"]
        for j in range(half):
            lines += [f"selp.b32 s, v{j}, v{j + half}, p;", f"shfl.sync.bfly.b32 r, s, {m}, 31, 0xffffffff;",
                      f"selp.b32 k, v{j + half}, v{j}, p;", f"add.f32 v{j}, k, r;"]
        half //= 2
    lines += ["shfl.sync.bfly.b32 r, v0, 16, 31, 0xffffffff;", "add.f32 v0, v0, r;"]
    lines += [f"mov.b32 ${j}, v0;" for j in range(16)]  # the same sum in every row
    return "\n".join(lines + ["}"])


_LANE_SUMS_PTX = tl.constexpr(_lane_sums_ptx())
_LANE_SUMS_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 16 + ["r"] * 16))


def _lane_sums(x):
    # x: (16, 32) fp32 in the one-warp layout where each lane holds one channel's 16 states in order.
    # Returns (16, 32) whose rows are all the same: element (i, j) holds sum_d x[bitrev4(j), d] for j < 16
    # (`lane_state` in _bwd_seq_kernel).
    return tl.inline_asm_elementwise(_LANE_SUMS_PTX, _LANE_SUMS_CONSTRAINTS, [x], dtype=tl.float32, is_pure=True,
                                     pack=16)


def _lane_sums_reference(x):
    # the same placement of the same sums, for the interpreter (no inline assembly there)
    j = tl.arange(0, 32)
    state = ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3)
    sums = tl.reduce(x, 1, _add)  # (16,)
    row = tl.reduce(tl.where(tl.arange(0, 16)[:, None] == state[None, :], sums[:, None], 0.0), 0, _add)  # (32,)
    return tl.broadcast_to(row[None, :], (16, 32))


def _lane_broadcast_ptx() -> str:
    """PTX for `_lane_broadcast`: lane j's output j' is lane j''s value, for j' = 0..15 (16 shuffles)."""
    lines = ["{", ".reg .b32 v;", "mov.b32 v, $16;"]
    lines += [f"shfl.sync.idx.b32 ${j}, v, {j}, 31, 0xffffffff;" for j in range(16)]
    return "\n".join(lines + ["}"])


_LANE_BROADCAST_PTX = tl.constexpr(_lane_broadcast_ptx())


def _lane_broadcast(v):
    # v: (BD,) fp32, one value a lane, BD a multiple of 32 with warps along channels. Returns (16, BD) in the
    # layout of `_lane_sums` (each lane one channel's 16 states in order) with element (i, j) = v[32 w + i],
    # w the warp of channel j: the shuffles stay inside each warp. A row of 16 values (B or C at one step) that
    # every lane needs thus takes one register a lane while it is in flight instead of 16. The asm reads row 0 of
    # its operand; the other rows are zeros rather than copies because the compiler would move an elementwise op
    # on a broadcast tensor before the broadcast, where the asm would see one value a lane instead of 16.
    i = tl.arange(0, 16)
    x = tl.where(i[:, None] == 0, v[None, :], 0.0)  # (16, BD)
    return tl.inline_asm_elementwise(_LANE_BROADCAST_PTX, _LANE_SUMS_CONSTRAINTS, [x], dtype=tl.float32,
                                     is_pure=True, pack=16)


def _lane_broadcast_reference(v):
    # the same result for the interpreter, where v holds the same 16 values in every warp
    i = tl.arange(0, 16)
    j = tl.arange(0, v.shape[0])
    row = tl.reduce(tl.where(i[:, None] == j[None, :], v[None, :], 0.0), 1, _add)  # (16,)
    return tl.broadcast_to(row[:, None], (16, v.shape[0]))


def _state_row(x, BC_LANES, ONE_GROUP):
    # B or C at one step, as the factor the (N, block_d) state tiles are multiplied by: shared across the warp
    # from one value a lane (BC_LANES), one (N,) row for the whole block (ONE_GROUP, as (N, 1)), or an (N, block_d)
    # tile when the block's channels span groups
    if BC_LANES:
        row = _lane_broadcast(x)
    elif ONE_GROUP:
        row = x.to(tl.float32)[:, None]
    else:
        row = x.to(tl.float32)
    return row


def _state_row_offsets(pid_d, d, n, m2, dpg, N, BD, BC_LANES, ONE_GROUP):
    # offsets of a step's B or C row inside one (ngroups * N) row of the (batch, seqlen, ngroups, N) tensor, and
    # their mask, in the shape `_state_row` takes: with BC_LANES lane j loads state j % 16 (rows loaded ahead
    # then take one register a lane), with ONE_GROUP the block's one (N,) row, else an (N, block_d) tile
    if BC_LANES:
        bc0 = ((pid_d * BD) // dpg) * N + tl.arange(0, BD) % N  # (BD,)
        bmask = tl.arange(0, BD) < BD
    elif ONE_GROUP:
        bc0 = ((pid_d * BD) // dpg) * N + n  # (NP,)
        bmask = n < N
    else:
        bc0 = (d[None, :] // dpg) * N + n[:, None]  # (NP, BD)
        bmask = m2
    return bc0, bmask


_sequence_start_state = JITFunction(_sequence_start_state)
_lane_sums = JITFunction(_lane_sums)
_lane_broadcast = JITFunction(_lane_broadcast)
_state_row = JITFunction(_state_row)
_state_row_offsets = JITFunction(_state_row_offsets)
_INTERPRETER_HELPERS = {"_softplus": _softplus_interpreted, "_sigmoid": _sigmoid_interpreted,
                        "_lane_sums": _lane_sums_reference, "_lane_broadcast": _lane_broadcast_reference,
                        "_sequence_start_state": _sequence_start_state.fn,
                        "_state_row_offsets": _state_row_offsets.fn}


def _with_interpreter_helpers(fn):
    """`fn` with the helper names bound to `_INTERPRETER_HELPERS`, for the interpreter: it runs kernel code as
    Python and cannot call a JITFunction from it."""
    return types.FunctionType(fn.__code__, {**fn.__globals__, **_INTERPRETER_HELPERS}, fn.__name__, fn.__defaults__,
                              fn.__closure__)


# `_state_row` calls `_lane_broadcast`, so its interpreted twin needs the interpreter's bindings too
_INTERPRETER_HELPERS["_state_row"] = _with_interpreter_helpers(_state_row.fn)


def _chunk_end_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, bias_ptr, seq_ptr, h0_ptr, hend_ptr, P_ptr,
                      L, D, G, nchunks, unit,
                      N: tl.constexpr, CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, HAS_BIAS: tl.constexpr,
                      SOFTPLUS: tl.constexpr, PACKED: tl.constexpr, HAS_H0: tl.constexpr,
                      ONE_GROUP: tl.constexpr, UNIT_ADD: tl.constexpr, BC_LANES: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, NP)  # (NP,)
    if UNIT_ADD:
        dl = d + (unit - 1)  # the same channels; see the note on `unit` above _COMPILED
    else:
        dl = d * unit
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


def _carry_kernel(P_ptr, e_ptr, init_ptr, out_ptr, last_ptr, nchunks, DN,
                  BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, STAGES: tl.constexpr):
    # s_{c} = P_c * s_{c-1} + e_c over chunks (or from the last chunk down with REVERSE);
    # out[c] receives the value entering chunk c, last the value after all chunks.
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    m = j < DN
    if HAS_INIT:
        s = tl.load(init_ptr + pid_b * DN + j, mask=m, other=0.0)
    else:
        s = tl.full((BLOCK,), 0.0, tl.float32)
    # each step waits on nothing but its own loads: pipelining them (STAGES in flight) is what makes the
    # pass fast, since the chain itself is one FMA a chunk
    for i in tl.range(0, nchunks, num_stages=STAGES):
        if REVERSE:
            c = nchunks - 1 - i
        else:
            c = i
        off = (pid_b * nchunks + c) * DN + j
        tl.store(out_ptr + off, s, mask=m)
        s = tl.load(P_ptr + off, mask=m, other=0.0) * s + tl.load(e_ptr + off, mask=m, other=0.0)
    tl.store(last_ptr + pid_b * DN + j, s, mask=m)


def _chunk_out_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, seq_ptr, h0_ptr, hstart_ptr,
                      out_ptr, final_ptr,
                      L, D, G, nchunks, unit,
                      N: tl.constexpr, CHUNK: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr, HAS_D: tl.constexpr,
                      HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PACKED: tl.constexpr,
                      HAS_H0: tl.constexpr, ONE_GROUP: tl.constexpr, UNIT_ADD: tl.constexpr,
                      BC_LANES: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    n = tl.arange(0, NP)  # (NP,)
    if UNIT_ADD:
        dl = d + (unit - 1)  # the same channels; see the note on `unit` above _COMPILED
    else:
        dl = d * unit
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


def _bwd_chunk_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, z_ptr, bias_ptr, gout_ptr, seq_ptr, h0_ptr, gfin_ptr,
                      hstart_ptr, hsub_ptr, local_ptr,
                      L, D, G, nchunks, unit, nsub,
                      N: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                      HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PACKED: tl.constexpr,
                      HAS_H0: tl.constexpr, HAS_GFIN: tl.constexpr, ONE_GROUP: tl.constexpr,
                      UNIT_ADD: tl.constexpr, BC_LANES: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)
    n = tl.arange(0, NP)
    if UNIT_ADD:
        dl = d + (unit - 1)  # the same channels; see the note on `unit` above _COMPILED
    else:
        dl = d * unit
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
            # the state entering each sub-tile: the backward tile kernel restarts from these
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


def _bwd_out_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, seq_ptr, h0_ptr, gfin_ptr,
                    hsub_ptr, nu_ptr,
                    gu_ptr, gdt_ptr, gz_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr, gh0_ptr,
                    L, D, G, nchunks, nsub,
                    N: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, HAS_D: tl.constexpr,
                    HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, PACKED: tl.constexpr,
                    HAS_H0: tl.constexpr, HAS_GFIN: tl.constexpr, ONE_GROUP: tl.constexpr,
                    REV_NATIVE: tl.constexpr):
    pid_c = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_b = tl.program_id(2).to(tl.int64)
    d = pid_d * BD + tl.arange(0, BD)  # (BD,)
    r = tl.arange(0, SUB)  # (SUB,)
    dmask = d < D
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
    if HAS_D:
        Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
    dpg = D // G
    g0 = (pid_d * BD) // dpg
    gd = d // dpg  # (BD,)
    t0 = pid_c * CHUNK
    t1 = tl.minimum(t0 + CHUNK, L)
    nsub_chunk = (t1 - t0 + SUB - 1) // SUB
    st = (pid_b * nchunks + pid_c) * N * D  # this chunk's (N, D) slab in nu / dA partials
    gD_acc = tl.full((BD,), 0.0, tl.float32)
    gb_acc = tl.full((BD,), 0.0, tl.float32)
    for k in range(nsub_chunk):
        j = nsub_chunk - 1 - k
        ts = t0 + j * SUB + r  # (SUB,)
        tmask = ts < t1
        m2 = tmask[:, None] & dmask[None, :]  # (SUB, BD)
        rows = pid_b * L + ts.to(tl.int64)  # (SUB,)
        off = rows[:, None] * D + d[None, :]  # (SUB, BD)
        raw = tl.load(dt_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if HAS_BIAS:
            raw += bias[None, :]
        if SOFTPLUS:
            dt = _softplus(raw)
        else:
            dt = raw
        dt = tl.where(m2, dt, 0.0)  # padded steps: decay 1, input 0, so they pass the adjoint through
        u = tl.load(u_ptr + off, mask=m2, other=0.0).to(tl.float32)
        go = tl.load(gout_ptr + off, mask=m2, other=0.0).to(tl.float32)
        if HAS_Z:
            zz = tl.load(z_ptr + off, mask=m2, other=0.0).to(tl.float32)
            sig = _sigmoid(zz)
            gy = go * zz * sig
        else:
            gy = go
        if PACKED:
            srow = tl.load(seq_ptr + ts, mask=tmask, other=-1)
            sprev = tl.load(seq_ptr + ts - 1, mask=tmask & (ts > 0), other=-1)
            snext = tl.load(seq_ptr + ts + 1, mask=tmask & (ts + 1 < L), other=-1)
            start = (srow != sprev) & tmask  # (SUB,)
            end = (srow != snext) & tmask
            sbase = srow.to(tl.int64) * D * N  # (SUB,)
        dtu = dt * u
        y = tl.full((SUB, BD), 0.0, tl.float32)
        gu = tl.full((SUB, BD), 0.0, tl.float32)
        gdt = tl.full((SUB, BD), 0.0, tl.float32)
        bc_rows = rows * G * N  # (SUB,)
        hs_row = (pid_b * nsub + (t0 // SUB + j)) * N * D
        for nn in range(N):
            A_n = tl.load(A_ptr + nn * D + d, mask=dmask, other=0.0)  # (BD,)
            if ONE_GROUP:
                Bn = tl.load(B_ptr + bc_rows + g0 * N + nn, mask=tmask, other=0.0).to(tl.float32)[:, None]
                Cn = tl.load(C_ptr + bc_rows + g0 * N + nn, mask=tmask, other=0.0).to(tl.float32)[:, None]
            else:
                bcn = bc_rows[:, None] + gd[None, :] * N + nn
                Bn = tl.load(B_ptr + bcn, mask=m2, other=0.0).to(tl.float32)
                Cn = tl.load(C_ptr + bcn, mask=m2, other=0.0).to(tl.float32)
            a = tl.exp2(dt * (A_n * 1.4426950408889634)[None, :])  # (SUB, BD)
            x = dtu * Bn
            a_s = a
            x_s = x
            if PACKED:
                # at a sequence start the previous state is that sequence's initial state, not the carry
                if HAS_H0:
                    hs = tl.load(h0_ptr + sbase[:, None] + nn * D + d[None, :],
                                 mask=m2 & start[:, None], other=0.0)
                    x_s = x + a * hs
                a_s = tl.where(start[:, None], 0.0, a)
            h_in = tl.load(hsub_ptr + hs_row + nn * D + d, mask=dmask, other=0.0)  # (BD,)
            cum_a, cum_x = tl.associative_scan((a_s, x_s), 0, _affine_combine)
            h = cum_x + cum_a * h_in[None, :]  # (SUB, BD): the state after each step
            y += Cn * h
            c = Cn * gy
            if PACKED:
                if HAS_GFIN:
                    c += tl.load(gfin_ptr + sbase[:, None] + nn * D + d[None, :],
                                 mask=m2 & end[:, None], other=0.0)
            nu = tl.load(nu_ptr + st + nn * D + d, mask=dmask, other=0.0)  # (BD,): a_{next} mu_{next}
            ones = tl.full((SUB, BD), 1.0, tl.float32)
            if REV_NATIVE:
                _, m_cum, b_cum = tl.associative_scan((a_s, ones, c), 0, _adjoint_combine, reverse=True)
            else:
                # Compiled: flip, scan forwards, flip back. A forward scan of the flipped tile calls the
                # combine with the same (later, earlier) argument order as a reverse scan.
                _, m_f, b_f = tl.associative_scan((tl.flip(a_s, 0), ones, tl.flip(c, 0)), 0, _adjoint_combine)
                m_cum = tl.flip(m_f, 0)
                b_cum = tl.flip(b_f, 0)
            mu = b_cum + m_cum * nu[None, :]  # (SUB, BD): adjoint of the state after each step
            amu = a_s * mu
            tl.store(nu_ptr + st + nn * D + d, tl.reduce(tl.where(r[:, None] == 0, amu, 0.0), 0, _add), mask=dmask)
            hx = h - x  # a * h_prev: the decayed previous state (a * h0 at a sequence start)
            if PACKED:
                if HAS_H0:
                    tl.store(gh0_ptr + sbase[:, None] + nn * D + d[None, :], a * mu, mask=m2 & start[:, None])
            gxb = mu * dtu  # (SUB, BD): dL/dB before the sum over channels
            gxc = gy * h
            if ONE_GROUP:
                tl.atomic_add(gB_ptr + bc_rows + g0 * N + nn, tl.reduce(tl.where(m2, gxb, 0.0), 1, _add), mask=tmask)
                tl.atomic_add(gC_ptr + bc_rows + g0 * N + nn, tl.reduce(tl.where(m2, gxc, 0.0), 1, _add), mask=tmask)
            else:
                tl.atomic_add(gB_ptr + bcn, gxb, mask=m2)
                tl.atomic_add(gC_ptr + bcn, gxc, mask=m2)
            gu += mu * dt * Bn
            gdt += mu * (u * Bn + A_n[None, :] * hx)
            ga = tl.reduce(tl.where(m2, mu * hx * dt, 0.0), 0, _add)  # (BD,)
            tl.atomic_add(gA_ptr + st + nn * D + d, ga, mask=dmask)  # this program's own slab: no contention
            # nu is written here and read back by other threads for the previous sub-tile: order them
            tl.debug_barrier()
        if HAS_D:
            y += Dv[None, :] * u
            gu += gy * Dv[None, :]
            gD_acc += tl.reduce(tl.where(m2, gy * u, 0.0), 0, _add)
        if HAS_Z:
            tl.store(gz_ptr + off, go * y * sig * (1.0 + zz * (1.0 - sig)), mask=m2)
        if SOFTPLUS:
            gdt = tl.where(raw <= 20.0, gdt * _sigmoid(raw), gdt)  # softplus' = sigmoid
        if HAS_BIAS:
            gb_acc += tl.reduce(tl.where(m2, gdt, 0.0), 0, _add)
        tl.store(gu_ptr + off, gu, mask=m2)
        tl.store(gdt_ptr + off, gdt, mask=m2)
    part = (pid_b * nchunks + pid_c) * D + d
    if HAS_D:
        tl.store(gD_ptr + part, gD_acc, mask=dmask)
    if HAS_BIAS:
        tl.store(gbias_ptr + part, gb_acc, mask=dmask)



def _keep_first(a, b):
    return a


_keep_first = JITFunction(_keep_first)


def _add_pair(a0, b0, a1, b1):
    return a0 + a1, b0 + b1


_add_pair = JITFunction(_add_pair)


def _bwd_seq_kernel(u_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, gout_ptr, seq_ptr, h0_ptr, gfin_ptr,
                    hsub_ptr, nu_ptr, scratch_ptr,
                    gu_ptr, gdt_ptr, gz_ptr, gB_ptr, gC_ptr, gA_ptr, gD_ptr, gbias_ptr, gh0_ptr,
                    L, D, G, nchunks, nsub, ndblk, nwork, nprog, unit,
                    N: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, BD: tl.constexpr, NP: tl.constexpr,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
                    PACKED: tl.constexpr, HAS_H0: tl.constexpr, HAS_GFIN: tl.constexpr, ONE_GROUP: tl.constexpr,
                    PIECE: tl.constexpr, TWO_LEVEL: tl.constexpr, UNIT_ADD: tl.constexpr, LANE_SUMS: tl.constexpr,
                    PREFETCH_H: tl.constexpr, CHUNKS_FIRST: tl.constexpr, PREFETCH_BC: tl.constexpr,
                    BC_LANES: tl.constexpr, WALK_UNROLL: tl.constexpr):
    # Persistent: program `pid` owns scratch slot `pid` and takes work items pid, pid + nprog, ...; an item
    # is (channel block, chunk, batch), by default channel block fastest so programs running together share
    # B/C rows (CHUNKS_FIRST: chunk fastest).
    pid = tl.program_id(0)
    n = tl.arange(0, NP)  # (NP,)
    nmask = n < N
    # The slot holds the states after each step of one piece of PIECE steps, then (TWO_LEVEL) the states
    # entering each piece of the current sub-chunk
    slot = pid.to(tl.int64) * ((PIECE + SUB // PIECE) * NP * BD)
    mids = slot + PIECE * NP * BD
    # (NP, BD) offsets inside one step of the slot; through `unit` like the state tiles, so that the
    # compiler keeps each channel's states in one thread
    if UNIT_ADD:
        sc = n[:, None] * BD + (tl.arange(0, BD) + (unit - 1))[None, :]
    else:
        sc = n[:, None] * BD + (tl.arange(0, BD) * unit)[None, :]
    if LANE_SUMS:
        # where `_lane_sums` leaves each state's sum over the warp: row 0, lanes 0-15, state bitrev4(lane)
        lane = tl.arange(0, BD)
        lane_state = ((lane & 1) << 3) | ((lane & 2) << 1) | ((lane & 4) >> 1) | ((lane & 8) >> 3)  # (BD,)
        lane_first = lane < 16  # lanes 16-31 hold the same sums again
    dpg = D // G
    for w in range(pid, nwork, nprog):
        if CHUNKS_FIRST:
            # programs running together take different chunks: their dB/dC atomics go to different rows
            pid_c = w % nchunks
            pid_d = (w // nchunks) % ndblk
        else:
            pid_d = w % ndblk
            pid_c = (w // ndblk) % nchunks
        pid_b = (w // (ndblk * nchunks)).to(tl.int64)
        d = pid_d * BD + tl.arange(0, BD)  # (BD,)
        if UNIT_ADD:
            dl = d + (unit - 1)
        else:
            dl = d * unit
        dmask = d < D
        m2 = nmask[:, None] & dmask[None, :]  # (NP, BD)
        tile = n[:, None] * D + dl[None, :]  # (NP, BD) offsets inside one (N, D) slab
        A2 = tl.load(A_ptr + tile, mask=m2, other=0.0) * 1.4426950408889634
        if HAS_BIAS:
            bias = tl.load(bias_ptr + d, mask=dmask, other=0.0)
        if HAS_D:
            Dv = tl.load(D_ptr + d, mask=dmask, other=0.0)
        g0 = (pid_d * BD) // dpg  # the block's group, where the block lies inside one (ONE_GROUP)
        bc0, bmask = _state_row_offsets(pid_d, d, n, m2, dpg, N, BD, BC_LANES, ONE_GROUP)
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
                    Bt = _state_row(B_a, BC_LANES, ONE_GROUP)
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
                    Bt = _state_row(B_a, BC_LANES, ONE_GROUP)
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
                if PREFETCH_H:
                    h_a = tl.load(scratch_ptr + slot + (last - ps0) * (NP * BD) + sc, mask=m2, other=0.0)
                for i in tl.range(0, ps1 - ps0, loop_unroll_factor=WALK_UNROLL):
                    t = last - i
                    if PREFETCH_H:
                        # the next (earlier) step's state, loaded a step ahead so its latency overlaps this step
                        h = h_a
                        h_a = tl.load(scratch_ptr + slot + (tl.maximum(t - 1, first) - ps0) * (NP * BD) + sc, mask=m2,
                                      other=0.0)
                    else:
                        h = tl.load(scratch_ptr + slot + (t - ps0) * (NP * BD) + sc, mask=m2, other=0.0)  # state after t
                    t_c = tl.maximum(t - 2, first)
                    ud = (pid_b * L + t_c) * D + d
                    bc = (pid_b * L + t_c) * (G * N) + bc0
                    dt_c = tl.load(dt_ptr + ud, mask=dmask, other=0.0)
                    u_c = tl.load(u_ptr + ud, mask=dmask, other=0.0)
                    g_c = tl.load(gout_ptr + ud, mask=dmask, other=0.0)
                    if PREFETCH_BC:
                        B_c = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                        C_c = tl.load(C_ptr + bc, mask=bmask, other=0.0)
                    else:
                        # B and C of this step, loaded here: 64 fewer registers than holding two steps ahead
                        bc = (pid_b * L + t) * (G * N) + bc0
                        B_a = tl.load(B_ptr + bc, mask=bmask, other=0.0)
                        C_a = tl.load(C_ptr + bc, mask=bmask, other=0.0)
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
                    Bt = _state_row(B_a, BC_LANES, ONE_GROUP)
                    Ct = _state_row(C_a, BC_LANES, ONE_GROUP)
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
                    if LANE_SUMS:
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
                    if PREFETCH_BC:
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

_UNIT_KERNELS = ("_chunk_end_kernel", "_chunk_out_kernel", "_bwd_chunk_kernel", "_bwd_seq_kernel")
_RAW = {f.__name__: f for f in (_chunk_end_kernel, _carry_kernel, _chunk_out_kernel, _bwd_chunk_kernel,
                                 _bwd_out_kernel, _bwd_seq_kernel)}
# `unit` is a runtime 1 that is never specialised. Offsets into the (dstate, block_d) state tiles go
# through it, so the compiler cannot prove them aligned and does not vectorise those few loads: a
# vectorised load makes it spread dstate over warps, and then every step's sum over dstate crosses
# warps through shared memory. Without it each thread keeps whole channels in registers.
# Two forms (ScanConfig.unit_add): channel + (unit - 1) keeps the offsets contiguous along channels but
# of unknown alignment; channel * unit hides the contiguity as well. With the second, triton 3.6 (not
# 3.9) orders the tiles dstate-fastest and puts dstate across 16 lanes (seen in its TTGIR/SASS offline:
# shuffles and barriers in every step); with the first, both versions keep dstate inside the thread.
_COMPILED = {name: JITFunction(f, do_not_specialize=["unit"] if name in _UNIT_KERNELS else None)
             for name, f in _RAW.items()}
_INTERPRETED: dict = {}


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1 is set now: kernels then run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _kernel(name: str, device: torch.device):
    """The compiled kernel for CUDA tensors, the interpreted one for CPU tensors (decided per call, not
    at import, so one process can run both)."""
    if device.type == "cuda":
        return _COMPILED[name]
    if name not in _INTERPRETED:
        from triton.runtime.interpreter import InterpretedFunction

        _INTERPRETED[name] = InterpretedFunction(_with_interpreter_helpers(_RAW[name]))
    return _INTERPRETED[name]


class ScanConfig:
    """Launch shapes. The defaults are the fastest of the variants timed on the H200 at L=2^20
    (bench/results/scan_h200.md, kernels/NOTES.md); the others stay selectable so a benchmark can time them
    in the same process.

    chunk: steps per forward program (None: chosen per call, see `resolve`).
    sub: steps between the backward's state checkpoints (divides chunk); 64 keeps them to 1 GB at
    L=2^20, D=1024, N=16 (32 costs 1.06 GB more at the same speed).
    block_d / warps: channels and warps per forward program (block_d = 32 * warps keeps each channel's
    states in one thread); bwd_block_d / bwd_warps: the same for the backward tile kernel.
    bwd_mode: "seq" (`_bwd_seq_kernel`, time walked sequentially inside each thread, 0.45x the time of "tile"
    for forward+backward on the H200) or "tile" (`_bwd_out_kernel`, associative scans over each sub-tile).
    seq_block_d / seq_warps: channels and warps per "seq" program. seq_programs_per_sm: persistent "seq"
    programs launched per SM (one "SM" when interpreting on CPU). seq_piece: steps whose states a "seq"
    program keeps at once (divides sub; below sub it replays each sub-tile once more to find the piece
    starts), so each program's scratch slot is (seq_piece + sub / seq_piece) x dstate x seq_block_d fp32.
    unit_add: the form of the offsets that keep each channel's states in one thread (see the note above
    _COMPILED; False is the earlier form).
    lane_sums: in the "seq" backward, sum dB and dC over the warp's channels with one reduce-scatter
    (`_lane_sums`) instead of a butterfly per state; see `_lane_sums_apply` for when it applies.
    fwd_maxnreg / bwd_chunk_maxnreg / seq_maxnreg: a register cap per thread for the two forward passes, the
    backward recompute and the "seq" kernel (None: the compiler's choice; bwd_chunk_maxnreg="auto": 128 where
    bc_lanes applies, else 168). Registers decide how many programs fit on an SM, so a lower cap trades spills
    for occupancy; with "seq", set seq_programs_per_sm to what fits (65536 / (32 * seq_warps * cap)).
    seq_prefetch_h: in the "seq" backward walk, load each step's state from the scratch slot one step ahead.
    seq_chunks_first: hand out "seq" work items chunk-first rather than channel-block-first.
    seq_prefetch_bc: in the backward walk, load B and C two steps ahead like the other inputs (False: at the
    step, which frees 64 registers for a lower seq_maxnreg).
    seq_bc_lanes: in the "seq" backward, each lane loads one value of every B and C row and `_lane_broadcast`
    shares the row across the warp at the step, so rows loaded ahead take 1 register a lane instead of 16;
    applies where `_lane_sums` can (`_bc_lanes_apply`).
    bc_lanes: the same for the two forward passes and the backward recompute (`_bc_lanes_block_apply`).
    seq_walk_unroll: how many steps of the "seq" backward walk the compiler sees at once (more overlaps the
    independent work of neighbouring steps, at the cost of registers).
    carry_stages: loads the chunk carry keeps in flight (Triton's loop pipelining; 1 turns it off)."""

    def __init__(self, chunk=None, sub=DEFAULT_SUB, block_d=DEFAULT_BLOCK_D, warps=DEFAULT_WARPS,
                 bwd_block_d=DEFAULT_BWD_BLOCK_D, bwd_warps=DEFAULT_BWD_WARPS, carry_block=DEFAULT_CARRY_BLOCK,
                 native_reverse_scan=True, bwd_mode=DEFAULT_BWD_MODE, seq_block_d=DEFAULT_SEQ_BLOCK_D,
                 seq_warps=DEFAULT_SEQ_WARPS, seq_programs_per_sm=DEFAULT_SEQ_PROGRAMS_PER_SM,
                 seq_piece=DEFAULT_SEQ_PIECE, unit_add=True, lane_sums=DEFAULT_LANE_SUMS, fwd_maxnreg=None,
                 bwd_chunk_maxnreg="auto", seq_maxnreg=None, seq_prefetch_h=False,
                 seq_chunks_first=False, seq_prefetch_bc=True, seq_bc_lanes=DEFAULT_SEQ_BC_LANES,
                 bc_lanes=DEFAULT_BC_LANES, seq_walk_unroll=DEFAULT_SEQ_WALK_UNROLL, carry_stages=8):
        if chunk is not None and chunk % sub:
            raise ValueError(f"chunk {chunk} must be a multiple of sub {sub}")
        for name, v in (("sub", sub), ("block_d", block_d), ("bwd_block_d", bwd_block_d),
                        ("carry_block", carry_block), ("seq_block_d", seq_block_d), ("seq_piece", seq_piece)):
            if v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if bwd_mode not in ("tile", "seq"):
            raise ValueError(f'bwd_mode must be "tile" or "seq", got {bwd_mode!r}')
        if seq_piece > sub:
            raise ValueError(f"seq_piece {seq_piece} must divide sub {sub}")
        if seq_programs_per_sm < 1:
            raise ValueError(f"seq_programs_per_sm must be at least 1, got {seq_programs_per_sm}")
        for name, v in (("fwd_maxnreg", fwd_maxnreg), ("bwd_chunk_maxnreg", bwd_chunk_maxnreg),
                        ("seq_maxnreg", seq_maxnreg)):
            if v is None or (name == "bwd_chunk_maxnreg" and v == "auto"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or not 24 <= v <= 255:
                allowed = 'None, "auto"' if name == "bwd_chunk_maxnreg" else "None"
                raise ValueError(f"{name} must be {allowed} or a register count from 24 to 255, got {v!r}")
        if seq_walk_unroll < 1 or carry_stages < 1:
            raise ValueError(f"seq_walk_unroll and carry_stages must be at least 1, got {seq_walk_unroll} and "
                             f"{carry_stages}")
        self.chunk, self.sub, self.block_d, self.warps = chunk, sub, block_d, warps
        self.bwd_block_d, self.bwd_warps, self.carry_block = bwd_block_d, bwd_warps, carry_block
        # True: Triton's reverse=True scan. False: flip, forward scan, flip back, kept as a fallback
        # because reverse=True has had layout-dependent bugs (triton-lang/triton#4362); on triton 3.6
        # both give identical gradients on the H200 and the flips cost about 2x in the backward tile
        # kernel. The interpreter always takes reverse=True: tl.flip is a jit function it cannot call
        # when triton was imported without TRITON_INTERPRET.
        self.native_reverse_scan = native_reverse_scan
        self.bwd_mode, self.seq_block_d, self.seq_warps = bwd_mode, seq_block_d, seq_warps
        self.seq_programs_per_sm, self.seq_piece = seq_programs_per_sm, seq_piece
        self.unit_add = unit_add  # which form of the `unit` offsets (see the note above _COMPILED)
        self.lane_sums = lane_sums
        self.fwd_maxnreg, self.bwd_chunk_maxnreg, self.seq_maxnreg = fwd_maxnreg, bwd_chunk_maxnreg, seq_maxnreg
        self.seq_prefetch_h, self.seq_chunks_first = seq_prefetch_h, seq_chunks_first
        self.seq_prefetch_bc, self.seq_bc_lanes, self.bc_lanes = seq_prefetch_bc, seq_bc_lanes, bc_lanes
        self.seq_walk_unroll, self.carry_stages = seq_walk_unroll, carry_stages

    def _fields(self):
        return dict(chunk=self.chunk, sub=self.sub, block_d=self.block_d, warps=self.warps,
                    bwd_block_d=self.bwd_block_d, bwd_warps=self.bwd_warps, carry_block=self.carry_block,
                    native_reverse_scan=self.native_reverse_scan, bwd_mode=self.bwd_mode,
                    seq_block_d=self.seq_block_d, seq_warps=self.seq_warps,
                    seq_programs_per_sm=self.seq_programs_per_sm, seq_piece=self.seq_piece,
                    unit_add=self.unit_add, lane_sums=self.lane_sums, fwd_maxnreg=self.fwd_maxnreg,
                    bwd_chunk_maxnreg=self.bwd_chunk_maxnreg, seq_maxnreg=self.seq_maxnreg,
                    seq_prefetch_h=self.seq_prefetch_h, seq_chunks_first=self.seq_chunks_first,
                    seq_prefetch_bc=self.seq_prefetch_bc, seq_bc_lanes=self.seq_bc_lanes, bc_lanes=self.bc_lanes,
                    seq_walk_unroll=self.seq_walk_unroll, carry_stages=self.carry_stages)

    def resolve(self, batch: int, seqlen: int, dim: int) -> "ScanConfig":
        """A copy with `chunk` fixed. Auto: the largest power of two up to 1024 that still gives about
        2048 forward programs, so short sequences fill the GPU too (each program walks its chunk in
        sequence, so fewer, longer chunks leave SMs idle)."""
        if self.chunk is not None:
            return self
        per_chunk = batch * triton.cdiv(dim, self.block_d)  # programs per chunk index
        want = triton.cdiv(2048, per_chunk)  # chunks per sequence
        chunk = 1024
        while chunk > self.sub and chunk * want > seqlen:
            chunk //= 2
        return ScanConfig(**{**self._fields(), "chunk": chunk})

    def __repr__(self):
        return "ScanConfig(" + ", ".join(f"{k}={v!r}" for k, v in self._fields().items()) + ")"


def _flags(D, G, block_d):
    return dict(ONE_GROUP=(G == 1) or ((D // G) % block_d == 0))


def _lane_layout(cfg, N, D, G) -> bool:
    """Whether the "seq" kernel's tiles have the layout the PTX of `_lane_sums` and `_lane_broadcast` needs: each
    lane holds one channel's 16 states in order. That takes 16 states, 32 channels in one warp, a channel block
    inside one group, and the layout that the `unit_add` offsets give to (N, D) tiles. Every state tile the
    kernels touch is (N, D) for that reason (`_states_nd`): with the packed path's initial and final states read
    as (D, N) tiles, the compiler laid some state tiles out differently and dB/dC came out wrong on the GPU.
    tests/kernels/test_lane_sums_layout.py checks the layout in the compiler's output."""
    return (N == 16 and cfg.seq_block_d == 32 and cfg.seq_warps == 1 and cfg.unit_add
            and _flags(D, G, cfg.seq_block_d)["ONE_GROUP"])


def _lane_sums_apply(cfg, N, D, G) -> bool:
    """Whether the "seq" backward sums dB and dC with `_lane_sums` (see `_lane_layout`)."""
    return cfg.lane_sums and _lane_layout(cfg, N, D, G)


def _bc_lanes_apply(cfg, N, D, G) -> bool:
    """Whether the "seq" backward loads B and C one value a lane and shares rows with `_lane_broadcast`."""
    return cfg.seq_bc_lanes and _lane_layout(cfg, N, D, G)


def _bc_lanes_block_apply(cfg, N, D, G) -> bool:
    """Whether the forward passes and `_bwd_chunk_kernel` use `_lane_broadcast`: 16 states, 32 channels a warp
    (block_d = 32 × warps), the `unit_add` layout and each channel block inside one group."""
    return (cfg.bc_lanes and N == 16 and cfg.block_d == 32 * cfg.warps and cfg.unit_add
            and _flags(D, G, cfg.block_d)["ONE_GROUP"])


def _bwd_chunk_maxnreg(cfg, N, D, G):
    """The register cap `_bwd_chunk_kernel` launches with (see ScanConfig.bwd_chunk_maxnreg)."""
    if cfg.bwd_chunk_maxnreg != "auto":
        return cfg.bwd_chunk_maxnreg
    return BWD_CHUNK_MAXNREG_BC_LANES if _bc_lanes_block_apply(cfg, N, D, G) else BWD_CHUNK_MAXNREG


def _states_nd(x):
    """A (batch|nseq, D, N) state tensor of the contract as the (batch|nseq, N, D) the kernels use (or None).

    Every state tile in the kernels is (N, D) with channels contiguous, like the chunk slabs, so that the
    compiler gives all of them one layout; a (D, N) tile beside them pulls some of them to another
    layout, which `_lane_sums` cannot take (see `_lane_sums_apply`)."""
    return None if x is None else x.transpose(1, 2).contiguous()


def _empty(*shape, dtype, device):
    return torch.empty(*shape, dtype=dtype, device=device)


def _empty_like(t):
    return torch.empty_like(t)


def _carry(P, e, init, reverse, cfg):
    """Run the chunk carry over (batch, nchunks, N*D) slabs; returns (per-chunk values, last value)."""
    batch, nchunks = P.shape[:2]
    DN = P[0, 0].numel()
    out = _empty_like(P)
    last = _empty(batch, *P.shape[2:], dtype=P.dtype, device=P.device)
    grid = (triton.cdiv(DN, cfg.carry_block), batch)
    _kernel("_carry_kernel", P.device)[grid](
        P, e, init if init is not None else P, out, last, nchunks, DN,
        BLOCK=cfg.carry_block, HAS_INIT=init is not None, REVERSE=reverse, STAGES=cfg.carry_stages, num_warps=4)
    return out, last


def _seq_index(cu_seqlens, seqlen, device):
    """(seqlen,) int32: which packed sequence each step belongs to."""
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    steps = torch.arange(seqlen, device=device)
    return (torch.searchsorted(cu[1:], steps, right=True)).to(torch.int32)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, seq_idx, nseq, cfg: ScanConfig):
    """Launch the forward. Returns out (batch, L, dim) in u's dtype, final state (batch|nseq, dim, N) fp32,
    and the chunk-start states (batch, nchunks, N, dim) fp32 with the chunk decays, kept for backward."""
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    NP = triton.next_power_of_2(N)
    packed = seq_idx is not None
    nchunks = triton.cdiv(L, cfg.chunk)
    dev = u.device
    At = A.t().contiguous()  # (N, dim): the kernels read A along channels, like every other operand
    hend = _empty(batch, nchunks, N, dim, dtype=torch.float32, device=dev)
    P = _empty_like(hend)
    grid = (nchunks, triton.cdiv(dim, cfg.block_d), batch)
    common = dict(HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus), PACKED=packed,
                  HAS_H0=h0 is not None, UNIT_ADD=cfg.unit_add, BC_LANES=_bc_lanes_block_apply(cfg, N, dim, G),
                  **_flags(dim, G, cfg.block_d))
    dummy = u
    h0_nd = _states_nd(h0)
    _kernel("_chunk_end_kernel", dev)[grid](
        u, delta, At, B, delta_bias if delta_bias is not None else dummy, seq_idx if packed else dummy,
        h0_nd if h0 is not None else dummy, hend, P, L, dim, G, nchunks, 1,
        N=N, CHUNK=cfg.chunk, BD=cfg.block_d, NP=NP, num_warps=cfg.warps, maxnreg=cfg.fwd_maxnreg, **common)
    hstart, last = _carry(P, hend, None if packed else h0_nd, False, cfg)
    out = _empty_like(u)
    # packed: the output kernel writes each sequence's final state at its last step
    final_nd = torch.zeros(nseq, N, dim, dtype=torch.float32, device=dev) if packed else last
    _kernel("_chunk_out_kernel", dev)[grid](
        u, delta, At, B, C, D if D is not None else dummy, z if z is not None else dummy,
        delta_bias if delta_bias is not None else dummy, seq_idx if packed else dummy,
        h0_nd if h0 is not None else dummy, hstart, out, final_nd, L, dim, G, nchunks, 1,
        N=N, CHUNK=cfg.chunk, BD=cfg.block_d, NP=NP, HAS_D=D is not None, HAS_Z=z is not None,
        num_warps=cfg.warps, maxnreg=cfg.fwd_maxnreg, **common)
    return out, final_nd.transpose(1, 2).contiguous(), hstart, P


def scan_bwd(gout, gfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, seq_idx, hstart, P,
             cfg: ScanConfig):
    """Launch the backward. Returns gradients for u, delta, A, B, C, D, z, delta_bias, h0 (None where absent)."""
    batch, L, dim = u.shape
    G, N = B.shape[2], B.shape[3]
    NP = triton.next_power_of_2(N)
    packed = seq_idx is not None
    nchunks = hstart.shape[1]
    nsub = triton.cdiv(L, cfg.sub)
    dev = u.device
    dummy = u
    At = A.t().contiguous()  # (N, dim)
    gout = gout.contiguous()
    hsub = _empty(batch, nsub, N, dim, dtype=torch.float32, device=dev)
    local = _empty_like(hstart)
    common = dict(HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=bool(delta_softplus),
                  PACKED=packed, HAS_H0=h0 is not None, HAS_GFIN=gfinal is not None and packed)
    h0_nd = _states_nd(h0) if packed else None  # without packing the kernels never read the initial state
    gfin_nd = _states_nd(gfinal)
    grid = (nchunks, triton.cdiv(dim, cfg.block_d), batch)
    _kernel("_bwd_chunk_kernel", dev)[grid](
        u, delta, At, B, C, z if z is not None else dummy, delta_bias if delta_bias is not None else dummy, gout,
        seq_idx if packed else dummy, h0_nd if h0_nd is not None else dummy,
        gfin_nd if gfinal is not None else dummy,
        hstart, hsub, local, L, dim, G, nchunks, 1, nsub,
        N=N, CHUNK=cfg.chunk, SUB=cfg.sub, BD=cfg.block_d, NP=NP, num_warps=cfg.warps, UNIT_ADD=cfg.unit_add,
        maxnreg=_bwd_chunk_maxnreg(cfg, N, dim, G), BC_LANES=_bc_lanes_block_apply(cfg, N, dim, G),
        **common, **_flags(dim, G, cfg.block_d))
    nu, gh_first = _carry(P, local, None if packed else gfin_nd, True, cfg)  # nu[c]: adjoint at chunk c's end
    gu = _empty_like(u)
    gdt = _empty_like(delta)
    gz = _empty_like(z) if z is not None else None
    gB = torch.zeros(B.shape, dtype=torch.float32, device=dev)
    gC = torch.zeros(C.shape, dtype=torch.float32, device=dev)
    gA = torch.zeros(batch, nchunks, N, dim, dtype=torch.float32, device=dev)
    gD = _empty(batch, nchunks, dim, dtype=torch.float32, device=dev) if D is not None else None
    gbias = _empty(batch, nchunks, dim, dtype=torch.float32, device=dev) if delta_bias is not None else None
    # packed: the kernels add each sequence's initial-state gradient at its first step
    gh0_nd = torch.zeros(h0.shape[0], N, dim, dtype=torch.float32, device=dev) if packed and h0 is not None else None
    if cfg.bwd_mode == "seq":
        ndblk = triton.cdiv(dim, cfg.seq_block_d)
        nwork = nchunks * ndblk * batch
        slots = (torch.cuda.get_device_properties(dev).multi_processor_count if dev.type == "cuda" else 1)
        nprog = min(nwork, slots * cfg.seq_programs_per_sm)
        scratch = _empty(nprog, cfg.seq_piece + cfg.sub // cfg.seq_piece, NP, cfg.seq_block_d, dtype=torch.float32,
                         device=dev)
        _kernel("_bwd_seq_kernel", dev)[(nprog,)](
            u, delta, At, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, gout, seq_idx if packed else dummy,
            h0_nd if h0_nd is not None else dummy, gfin_nd if gfinal is not None else dummy, hsub, nu,
            scratch, gu, gdt, gz if gz is not None else dummy, gB, gC, gA, gD if gD is not None else dummy,
            gbias if gbias is not None else dummy, gh0_nd if gh0_nd is not None else dummy,
            L, dim, G, nchunks, nsub, ndblk, nwork, nprog, 1,
            N=N, CHUNK=cfg.chunk, SUB=cfg.sub, BD=cfg.seq_block_d, NP=NP, HAS_D=D is not None,
            PIECE=cfg.seq_piece, TWO_LEVEL=cfg.seq_piece < cfg.sub, UNIT_ADD=cfg.unit_add, num_warps=cfg.seq_warps,
            maxnreg=cfg.seq_maxnreg, PREFETCH_H=cfg.seq_prefetch_h, CHUNKS_FIRST=cfg.seq_chunks_first,
            PREFETCH_BC=cfg.seq_prefetch_bc,
            LANE_SUMS=_lane_sums_apply(cfg, N, dim, G), BC_LANES=_bc_lanes_apply(cfg, N, dim, G),
            WALK_UNROLL=cfg.seq_walk_unroll,
            **common, **_flags(dim, G, cfg.seq_block_d))
    else:
        grid = (nchunks, triton.cdiv(dim, cfg.bwd_block_d), batch)
        _kernel("_bwd_out_kernel", dev)[grid](
            u, delta, At, B, C, D if D is not None else dummy, z if z is not None else dummy,
            delta_bias if delta_bias is not None else dummy, gout, seq_idx if packed else dummy,
            h0_nd if h0_nd is not None else dummy, gfin_nd if gfinal is not None else dummy, hsub, nu,
            gu, gdt, gz if gz is not None else dummy, gB, gC, gA, gD if gD is not None else dummy,
            gbias if gbias is not None else dummy, gh0_nd if gh0_nd is not None else dummy,
            L, dim, G, nchunks, nsub,
            N=N, CHUNK=cfg.chunk, SUB=cfg.sub, BD=cfg.bwd_block_d, HAS_D=D is not None, num_warps=cfg.bwd_warps,
            REV_NATIVE=cfg.native_reverse_scan or dev.type != "cuda",
            **common, **_flags(dim, G, cfg.bwd_block_d))
    gA = gA.sum((0, 1)).t()
    gD = gD.sum((0, 1)) if gD is not None else None
    gbias = gbias.sum((0, 1)) if gbias is not None else None
    gh0 = None if h0 is None else (gh0_nd if packed else gh_first).transpose(1, 2).contiguous()
    return gu, gdt, gA, gB.to(B.dtype), gC.to(C.dtype), gD, gz, gbias, gh0


@dataclass
class ScanSaved:
    """What the backward needs beyond the inputs: the chunk-start states and decays of the forward (small:
    (batch, nchunks, N, dim) fp32 each), the packed-sequence index and the resolved launch shapes."""

    hstart: torch.Tensor
    P: torch.Tensor
    seq_idx: torch.Tensor | None
    cfg: ScanConfig


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=None, cu_seqlens=None,
                       config: ScanConfig | None = None):
    """The forward without autograd, for callers that keep their own saved tensors (the fused mixer).

    Inputs as `selective_scan_triton` takes them, already prepared: u, delta, z contiguous (batch, seqlen, dim);
    A (dim, dstate), D, delta_bias (dim,) fp32; B, C (batch, seqlen, ngroups, dstate) fp32 contiguous;
    initial_state (batch|nseq, dim, dstate) fp32. Returns y (batch, seqlen, dim), the final state
    (batch|nseq, dim, dstate) fp32, and the `ScanSaved` that `selective_scan_bwd` takes with the same inputs.
    """
    batch, seqlen, dim = u.shape
    cfg = (config or ScanConfig()).resolve(batch, seqlen, dim)
    seq_idx, nseq = None, batch
    if cu_seqlens is not None:
        nseq = cu_seqlens.numel() - 1
        seq_idx = _seq_index(cu_seqlens, seqlen, u.device)
    y, final, hstart, P = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                                   nseq, cfg)
    return y, final, ScanSaved(hstart, P, seq_idx, cfg)


def selective_scan_bwd(gy, gfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                       saved: ScanSaved):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state) for the inputs of
    `selective_scan_fwd`, None where an input is absent; gy (batch, seqlen, dim), gfinal None or fp32."""
    return scan_bwd(gy, None if gfinal is None else gfinal.float().contiguous(), u, delta, A, B, C, D, z,
                    delta_bias, delta_softplus, initial_state, saved.seq_idx, saved.hstart, saved.P, saved.cfg)


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, cu_seqlens, cfg):
        out, final, saved = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0,
                                               cu_seqlens, cfg)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0)
        ctx.delta_softplus = delta_softplus
        ctx.scan_saved = saved
        return out, final

    @staticmethod
    def backward(ctx, gout, gfinal):
        u, delta, A, B, C, D, z, delta_bias, h0 = ctx.saved_tensors
        if gout is None:
            gout = torch.zeros_like(u)
        grads = selective_scan_bwd(gout, gfinal, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, h0,
                                   ctx.scan_saved)
        gu, gdt, gA, gB, gC, gD, gz, gbias, gh0 = grads
        return gu, gdt, gA, gB, gC, gD, gz, gbias, gh0, None, None, None


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, return_final_state=False, cu_seqlens=None, *,
                          config: ScanConfig | None = None):
    """Selective scan in Triton. Same contract as `selective_scan_ref`; computes in fp32 whatever the input dtype.

    u, delta, z: (batch, seqlen, dim); A: (dim, dstate) fp32; B, C: (batch, seqlen, ngroups, dstate)
    D, delta_bias: (dim,) fp32; initial_state: (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens
    cu_seqlens: (nseq+1,) int offsets of sequences packed in batch 1; the state resets at each boundary.
    Returns y (batch, seqlen, dim) in u's dtype, or (y, final_state (batch|nseq, dim, dstate) fp32).
    """
    cfg = (config or ScanConfig()).resolve(u.shape[0], u.shape[1], u.shape[2])
    if compute_dtype(u) == torch.float64:
        raise TypeError("the Triton scan computes in float32; use selective_scan_ref for float64")
    batch, seqlen, dim = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(2)
    if C.dim() == 3:
        C = C.unsqueeze(2)
    if dim % B.shape[2]:
        raise ValueError(f"dim {dim} is not divisible by ngroups {B.shape[2]}")
    if cu_seqlens is not None and batch != 1:
        raise ValueError("cu_seqlens needs batch size 1 (sequences packed along seqlen)")
    nseq = batch if cu_seqlens is None else cu_seqlens.numel() - 1
    if seqlen == 0:
        y = u.new_zeros(u.shape)
        fin = (torch.zeros(nseq, dim, A.shape[1], dtype=torch.float32, device=u.device)
               if initial_state is None else initial_state.float())
        return (y, fin) if return_final_state else y

    def prep(t, dtype=None):
        if t is None:
            return None
        return (t if dtype is None else t.to(dtype)).contiguous()

    h0 = prep(initial_state, torch.float32)
    # B and C go in as fp32: every thread reads all dstate values of both at every step, and unpacking
    # 16-bit values costs one or two instructions each, a fifth of the output pass's loop. The copies
    # are (batch, seqlen, ngroups, dstate), small beside the (batch, seqlen, dim) tensors.
    y, final = SelectiveScanFn.apply(prep(u), prep(delta), prep(A, torch.float32), prep(B, torch.float32),
                                     prep(C, torch.float32),
                                     prep(D, torch.float32), prep(z), prep(delta_bias, torch.float32), h0,
                                     bool(delta_softplus), cu_seqlens, cfg)
    if cu_seqlens is not None and initial_state is not None:
        # an empty packed sequence never reaches a start step: its final state is its initial state
        cu = cu_seqlens.to(u.device)
        final = torch.where((cu[1:] == cu[:-1])[:, None, None], initial_state.float(), final)
    return (y, final) if return_final_state else y
