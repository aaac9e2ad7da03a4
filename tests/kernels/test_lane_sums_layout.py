"""The layout `_lane_sums` needs, checked in the compiler's own output (no GPU needed).

The PTX in `_lane_sums` takes each lane's 16 register values to be one channel's 16 states in order. That
holds when the compiler gives the (dstate, channels) tiles of `_bwd_seq_kernel` the layout
sizePerThread [1, 1], threadsPerWarp [1, 32], order [1, 0]. These tests compile the kernel for sm_90 with
the installed Triton and read the layout of every inline-assembly operand from the TTGIR.
"""
from __future__ import annotations

import re

import pytest

from dnamamba_kernels import triton_scan as ts

pytest.importorskip("triton.backends.nvidia")

WANTED = "sizePerThread = [1, 1], threadsPerWarp = [1, 32], warpsPerCTA = [1, 1], order = [1, 0]"
BF16 = {"u_ptr", "dt_ptr", "z_ptr", "gout_ptr", "seq_ptr", "h0_ptr", "gfin_ptr", "gu_ptr", "gdt_ptr", "gz_ptr"}


def seq_kernel_ttgir(**flags):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = ts._COMPILED["_bwd_seq_kernel"]
    consts = dict(N=16, NP=16, CHUNK=1024, SUB=64, BD=32, PIECE=8, UNIT_ADD=True, LANE_SUMS=True, ONE_GROUP=True,
                  CHUNKS_FIRST=False, PREFETCH_BC=True,
                  **flags)
    sig, attrs, cst = {}, {}, {}
    for i, name in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            sig[name], cst[name] = "constexpr", consts[name]
        elif name.endswith("_ptr"):
            sig[name] = "*bf16" if name in BF16 else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            sig[name] = "i32"
    try:
        k = triton.compile(ASTSource(fn, sig, constexprs=cst, attrs=attrs), target=GPUTarget("cuda", 90, 32),
                           options=dict(num_warps=1))
    except Exception as e:  # a Triton without the compile API or the toolchain this test expects
        pytest.skip(f"cannot compile for sm_90 here: {type(e).__name__}: {str(e)[:200]}")
    return k.asm["ttgir"]


def asm_operand_layouts(ttgir):
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.blocked<\{(.*)\}>$", ttgir, re.M))
    found = [re.search(r"tensor<16x32xf32, (#\w+)>", line).group(1)
             for line in ttgir.splitlines() if "elementwise_inline_asm" in line]
    return [layouts[name] for name in found]


OPTIONS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, PACKED=False, HAS_H0=False, HAS_GFIN=False)


@pytest.mark.parametrize("flags", [
    dict(OPTIONS, TWO_LEVEL=True, PREFETCH_H=False),
    dict(OPTIONS, HAS_D=False, HAS_Z=False, HAS_BIAS=False, SOFTPLUS=False, TWO_LEVEL=False, PREFETCH_H=True),
], ids=["all_options", "no_options_one_level_prefetch"])
def test_lane_sums_operands_have_one_channel_per_lane(flags):
    layouts = asm_operand_layouts(seq_kernel_ttgir(**flags))
    assert layouts and len(layouts) % 2 == 0  # dB and dC, in each copy of the unrolled walk
    assert all(lay == WANTED for lay in layouts), layouts


def test_packed_sequences_would_break_the_layout_so_the_launcher_turns_lane_sums_off():
    """With cu_seqlens the compiler picks another layout for some of these tiles; the launcher therefore
    never enables LANE_SUMS for packed batches (see scan_bwd)."""
    layouts = asm_operand_layouts(seq_kernel_ttgir(**dict(OPTIONS, PACKED=True, HAS_H0=True, HAS_GFIN=True,
                                                          TWO_LEVEL=True, PREFETCH_H=False)))
    assert any(lay != WANTED for lay in layouts)
    import inspect

    assert "and not packed" in inspect.getsource(ts.scan_bwd)
