"""The layout `_lane_sums` and `_lane_broadcast` need, checked in the compiler's own output (no GPU needed).

The PTX in both takes each lane's 16 register values to be one channel's 16 states in order. That
holds when the compiler gives the (dstate, channels) tiles the layout sizePerThread [1, 1], threadsPerWarp
[1, 32], order [1, 0] (warps side by side along channels). These tests compile the kernels for sm_90 with
the installed Triton and read the layout of every inline-assembly operand from the TTGIR.
"""
from __future__ import annotations

import re

import pytest

from dnamamba_kernels import ScanConfig, offline

pytest.importorskip("triton.backends.nvidia")

WANTED = "sizePerThread = [1, 1], threadsPerWarp = [1, 32], warpsPerCTA = [1, 1], order = [1, 0]"


def kernel_ttgir(name="_bwd_seq_kernel", absent=offline.ABSENT, **flags):
    """The TTGIR of kernel `name` at the benchmark's launch, with the pointers in `absent` passed as None and the
    constexprs in `flags` set (the rest follow from the kernel's heuristics, as at a launch)."""
    explicit, warps, _ = offline.BENCH_LAUNCHES[name]
    constexprs = offline.launch_constexprs(name, dict(explicit, **flags), absent)
    try:
        kernel = offline.compile_sm90(name, constexprs, warps, absent=absent)
    except Exception as e:  # a Triton without the compile API or the toolchain this test expects
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")
    return kernel.asm["ttgir"]


def asm_operand_layouts(ttgir):
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.blocked<\{(.*)\}>$", ttgir, re.M))
    found = [re.search(r"tensor<16x\d+xf32, (#\w+)>", line).group(1)
             for line in ttgir.splitlines() if "elementwise_inline_asm" in line]
    return [layouts[name] for name in found]


# the benchmark's optional inputs (D, z, delta_bias present), and none of them
ALL_OPTIONS = offline.ABSENT
NO_OPTIONS = offline.ABSENT | {"D_ptr", "z_ptr", "bias_ptr", "gD_ptr", "gz_ptr", "gbias_ptr"}
PACKED = {"init_ptr"}  # sequence index, initial states and final-state gradient present
PACKED_NO_H0 = {"init_ptr", "h0_ptr", "gh0_ptr"}


@pytest.mark.parametrize("absent,flags", [
    (ALL_OPTIONS, dict()),
    (NO_OPTIONS, dict(SOFTPLUS=False, PIECE=64)),
    (PACKED, dict()),
    (PACKED_NO_H0, dict(PIECE=64)),
], ids=["all_options", "no_options_one_level", "packed", "packed_no_initial_state_one_level"])
def test_lane_asm_operands_have_one_channel_per_lane(absent, flags):
    """Packed batches included: their initial and final states are (N, D) tiles like every other state
    tile (`_states_nd`); read as (D, N) tiles, they gave some of these operands the layout
    sizePerThread [8, 1], threadsPerWarp [2, 16], and wrong dB/dC on the GPU."""
    layouts = asm_operand_layouts(kernel_ttgir(absent=absent, **flags))
    # dB and dC in the walk, the B and C rows of the walk and the B rows of the replays
    assert len(layouts) >= 5
    assert all(lay == WANTED for lay in layouts), layouts


@pytest.mark.parametrize("name", ["_chunk_end_kernel", "_chunk_out_kernel", "_bwd_chunk_kernel"])
@pytest.mark.parametrize("packed", [False, True])
def test_block_kernels_lane_broadcast_operands_have_one_channel_per_lane(name, packed):
    """The forward passes and the backward recompute with `bc_lanes`: 128 channels in 4 warps, each lane one
    channel's 16 states in order, warps side by side along channels."""
    layouts = asm_operand_layouts(kernel_ttgir(name, absent=PACKED if packed else ALL_OPTIONS, BC_LANES=True))
    assert len(layouts) >= 2
    assert all(lay == WANTED.replace("warpsPerCTA = [1, 1]", "warpsPerCTA = [1, 4]") for lay in layouts), layouts


def test_lanes_apply_only_where_the_ptx_fits():
    cfg = ScanConfig()
    assert cfg.seq_lanes(16, 1024, 1)
    assert cfg.seq_lanes(16, 64, 2)  # 32 channels a group: each block inside one group
    assert not cfg.seq_lanes(16, 96, 2)  # 48 channels a group: blocks straddle groups
    assert not cfg.seq_lanes(8, 1024, 1)
    assert not ScanConfig(seq_block_d=64, seq_warps=2).seq_lanes(16, 1024, 1)
    assert cfg.block_lanes(16, 1024, 1)
    assert not ScanConfig(block_d=64).block_lanes(16, 1024, 1)  # not 32 channels a warp
    assert not cfg.block_lanes(16, 192, 2)  # 96 channels a group
    assert not cfg.block_lanes(8, 1024, 1)
    assert cfg.bwd_chunk_maxnreg(16, 1024, 1) == 128 and cfg.bwd_chunk_maxnreg(8, 1024, 1) == 168
