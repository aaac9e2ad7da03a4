"""Warp-level helpers in inline PTX, with the plain-Triton references the interpreter runs in their place.

Both need the layout in which each lane holds one channel's 16 states in order (warps side by side along channels):
`ScanConfig.seq_lanes` and `ScanConfig.block_lanes` decide where it holds, and tests/kernels/test_lane_sums_layout.py
checks it in the compiler's output. kernels/NOTES.md, sections "Lane sums" and "Lane broadcast", has the design.
"""
from __future__ import annotations

import triton.language as tl

from .registry import KERNELS

# Triton's own sum combine: the interpreter recognises it and sums with numpy; tl.sum itself is a jit function
# fixed at triton's import to one mode, so the kernels call tl.reduce with this directly
_add = tl.standard._sum_combine


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
_LANE_ASM_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 16 + ["r"] * 16))


def _lane_sums_reference(x):
    # the same placement of the same sums, for the interpreter (no inline assembly there)
    j = tl.arange(0, 32)
    state = ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3)
    sums = tl.reduce(x, 1, _add)  # (16,)
    row = tl.reduce(tl.where(tl.arange(0, 16)[:, None] == state[None, :], sums[:, None], 0.0), 0, _add)  # (32,)
    return tl.broadcast_to(row[None, :], (16, 32))


@KERNELS.helper(interpreted=_lane_sums_reference)
def _lane_sums(x):
    # x: (16, 32) fp32 in the one-warp layout where each lane holds one channel's 16 states in order.
    # Returns (16, 32) whose rows are all the same: element (i, j) holds sum_d x[bitrev4(j), d] for j < 16
    # (`lane_state` in _bwd_seq_kernel).
    return tl.inline_asm_elementwise(_LANE_SUMS_PTX, _LANE_ASM_CONSTRAINTS, [x], dtype=tl.float32, is_pure=True,
                                     pack=16)


def _lane_broadcast_ptx() -> str:
    """PTX for `_lane_broadcast`: lane j's output j' is lane j''s value, for j' = 0..15 (16 shuffles)."""
    lines = ["{", ".reg .b32 v;", "mov.b32 v, $16;"]
    lines += [f"shfl.sync.idx.b32 ${j}, v, {j}, 31, 0xffffffff;" for j in range(16)]
    return "\n".join(lines + ["}"])


_LANE_BROADCAST_PTX = tl.constexpr(_lane_broadcast_ptx())


def _lane_broadcast_reference(v):
    # the same result for the interpreter, where v holds the same 16 values in every warp
    i = tl.arange(0, 16)
    j = tl.arange(0, v.shape[0])
    row = tl.reduce(tl.where(i[:, None] == j[None, :], v[None, :], 0.0), 1, _add)  # (16,)
    return tl.broadcast_to(row[:, None], (16, v.shape[0]))


@KERNELS.helper(interpreted=_lane_broadcast_reference)
def _lane_broadcast(v):
    # v: (BD,) fp32, one value a lane, BD a multiple of 32 with warps along channels. Returns (16, BD) in the
    # layout of `_lane_sums` (each lane one channel's 16 states in order) with element (i, j) = v[32 w + i],
    # w the warp of channel j: the shuffles stay inside each warp. A row of 16 values (B or C at one step) that
    # every lane needs thus takes one register a lane while it is in flight instead of 16. The asm reads row 0 of
    # its operand; the other rows are zeros rather than copies because the compiler would move an elementwise op
    # on a broadcast tensor before the broadcast, where the asm would see one value a lane instead of 16.
    i = tl.arange(0, 16)
    x = tl.where(i[:, None] == 0, v[None, :], 0.0)  # (16, BD)
    return tl.inline_asm_elementwise(_LANE_BROADCAST_PTX, _LANE_ASM_CONSTRAINTS, [x], dtype=tl.float32,
                                     is_pure=True, pack=16)
