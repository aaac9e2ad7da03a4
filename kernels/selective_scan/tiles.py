"""Pieces shared by the kernels that hold a (dstate, block_d) state tile: B/C rows, packed-sequence starts, and the
heuristics that derive their shape constexprs from the launch arguments.

Every state tile is (N, block_d) with channels contiguous, and each thread owns whole channels, so sums over dstate
stay inside the thread. Offsets into those tiles go through `unit`, a runtime 1 that is never specialised
(`UNIT_ARGS`): written as channel + (unit - 1), the offsets stay contiguous along channels but of unknown alignment,
so the compiler does not vectorise those few loads. A vectorised load makes it spread dstate over warps (or, with
triton 3.6 and the form channel * unit, over 16 lanes), and then every step's sum over dstate crosses threads
through shuffles or shared memory (kernels/NOTES.md, "Triton 3.6 lays dstate across lanes").
"""
from __future__ import annotations

import triton
import triton.language as tl

from .config import block_in_one_group
from .registry import KERNELS
from .warp import _lane_broadcast

# do_not_specialize for the kernels that take `unit`
UNIT_ARGS = ["unit"]


def padded_dstate(args) -> int:
    """Heuristic NP: dstate rounded up to a power of two (the tile height)."""
    return triton.next_power_of_2(args["N"])


def one_group(args) -> bool:
    """Heuristic ONE_GROUP: every block of BD channels reads a single B/C group."""
    return block_in_one_group(args["D"], args["G"], args["BD"])


@KERNELS.helper()
def _sequence_start_state(h0_ptr, s, n, dl, m2, D, N, HAS_H0):
    # the state a packed sequence `s` starts from: its initial state, (N, D) like every state tile, or zeros.
    # The kernels call this under `if start:`, so the tile is read only at sequence starts.
    if HAS_H0:
        h = tl.load(h0_ptr + s.to(tl.int64) * D * N + n[:, None] * D + dl[None, :], mask=m2, other=0.0).to(tl.float32)
    else:
        h = tl.full(m2.shape, 0.0, tl.float32)
    return h


@KERNELS.helper()
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


@KERNELS.helper()
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
