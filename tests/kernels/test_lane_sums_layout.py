"""The layout `_lane_sums` and `_lane_broadcast` need, checked in the compiler's own output (no GPU needed).

The PTX in both takes each lane's 16 register values to be one channel's 16 states in order. That
holds when the compiler gives the (dstate, channels) tiles the layout sizePerThread [1, 1], threadsPerWarp
[1, 32], order [1, 0] (warps side by side along channels). These tests compile the kernels for sm_90 with
the installed Triton and read the layout of every inline-assembly operand from the TTGIR.
"""
from __future__ import annotations

import re

import pytest

from dnamamba_kernels import offline
from dnamamba_kernels import triton_scan as ts

pytest.importorskip("triton.backends.nvidia")

WANTED = "sizePerThread = [1, 1], threadsPerWarp = [1, 32], warpsPerCTA = [1, 1], order = [1, 0]"


def kernel_ttgir(name="_bwd_seq_kernel", **flags):
    constexprs, warps, _ = offline.BENCH_LAUNCHES[name]
    if name == "_bwd_seq_kernel":
        flags = {"LANE_SUMS": True, **flags}
    try:
        kernel = offline.compile_sm90(name, dict(constexprs, **flags), warps)
    except Exception as e:  # a Triton without the compile API or the toolchain this test expects
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")
    return kernel.asm["ttgir"]


def asm_operand_layouts(ttgir):
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.blocked<\{(.*)\}>$", ttgir, re.M))
    found = [re.search(r"tensor<16x\d+xf32, (#\w+)>", line).group(1)
             for line in ttgir.splitlines() if "elementwise_inline_asm" in line]
    return [layouts[name] for name in found]


OPTIONS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, PACKED=False, HAS_H0=False, HAS_GFIN=False)


PACKED = dict(OPTIONS, PACKED=True, HAS_H0=True, HAS_GFIN=True)


@pytest.mark.parametrize("flags", [
    dict(OPTIONS, TWO_LEVEL=True, PREFETCH_H=False, BC_LANES=False),
    dict(OPTIONS, TWO_LEVEL=True, PREFETCH_H=False, BC_LANES=True),
    dict(OPTIONS, HAS_D=False, HAS_Z=False, HAS_BIAS=False, SOFTPLUS=False, TWO_LEVEL=False, PREFETCH_H=True,
         PREFETCH_BC=False, CHUNKS_FIRST=True, BC_LANES=True),
    dict(PACKED, TWO_LEVEL=True, PREFETCH_H=False, BC_LANES=False),
    dict(PACKED, HAS_H0=False, TWO_LEVEL=False, PREFETCH_H=True, BC_LANES=True),
    dict(PACKED, TWO_LEVEL=True, PREFETCH_H=False, BC_LANES=True, LANE_SUMS=False),
], ids=["all_options", "all_options_bc_lanes", "no_options_and_the_other_launch_options", "packed",
        "packed_no_initial_state_bc_lanes", "packed_bc_lanes_plain_sums"])
def test_lane_asm_operands_have_one_channel_per_lane(flags):
    """Packed batches included: their initial and final states are (N, D) tiles like every other state
    tile (`_states_nd`); read as (D, N) tiles, they gave some of these operands the layout
    sizePerThread [8, 1], threadsPerWarp [2, 16], and wrong dB/dC on the GPU."""
    layouts = asm_operand_layouts(kernel_ttgir(**flags))
    # dB and dC in the walk, and with BC_LANES the B and C rows of the walk and the B rows of the replays
    assert len(layouts) >= 2 * flags.get("LANE_SUMS", True) + 3 * flags["BC_LANES"]
    assert all(lay == WANTED for lay in layouts), layouts


@pytest.mark.parametrize("name", ["_chunk_end_kernel", "_chunk_out_kernel", "_bwd_chunk_kernel"])
@pytest.mark.parametrize("packed", [False, True])
def test_block_kernels_lane_broadcast_operands_have_one_channel_per_lane(name, packed):
    """The forward passes and the backward recompute with `bc_lanes`: 128 channels in 4 warps, each lane one
    channel's 16 states in order, warps side by side along channels."""
    flags = dict(BC_LANES=True, PACKED=packed, HAS_H0=packed)
    if name == "_bwd_chunk_kernel":
        flags["HAS_GFIN"] = packed
    layouts = asm_operand_layouts(kernel_ttgir(name, **flags))
    assert len(layouts) >= 2
    assert all(lay == WANTED.replace("warpsPerCTA = [1, 1]", "warpsPerCTA = [1, 4]") for lay in layouts), layouts


def test_lane_sums_apply_only_where_the_ptx_fits():
    cfg = ts.ScanConfig()
    assert ts._lane_sums_apply(cfg, 16, 1024, 1)
    assert ts._lane_sums_apply(cfg, 16, 64, 2)  # 32 channels a group: each block inside one group
    assert not ts._lane_sums_apply(cfg, 16, 96, 2)  # 48 channels a group: blocks straddle groups
    assert not ts._lane_sums_apply(cfg, 8, 1024, 1)
    assert not ts._lane_sums_apply(ts.ScanConfig(unit_add=False), 16, 1024, 1)
    assert not ts._lane_sums_apply(ts.ScanConfig(lane_sums=False), 16, 1024, 1)
    assert ts._bc_lanes_apply(ts.ScanConfig(seq_bc_lanes=True), 16, 1024, 1)
    assert not ts._bc_lanes_apply(ts.ScanConfig(seq_bc_lanes=True), 16, 96, 2)
    assert not ts._bc_lanes_apply(ts.ScanConfig(seq_bc_lanes=True, seq_block_d=64, seq_warps=2), 16, 1024, 1)
    assert not ts._bc_lanes_apply(ts.ScanConfig(seq_bc_lanes=False), 16, 1024, 1)
    assert ts._bc_lanes_block_apply(ts.ScanConfig(bc_lanes=True), 16, 1024, 1)
    assert not ts._bc_lanes_block_apply(ts.ScanConfig(bc_lanes=True, block_d=64), 16, 1024, 1)  # not 32 channels a warp
    assert not ts._bc_lanes_block_apply(ts.ScanConfig(bc_lanes=True), 16, 192, 2)  # 96 channels a group
    assert not ts._bc_lanes_block_apply(ts.ScanConfig(bc_lanes=False), 16, 1024, 1)
