"""Compile the scan kernels for sm_90 without a GPU and count what their SASS does.

    python -m dnamamba_kernels.offline                       # every kernel at the benchmark's shapes
    python -m dnamamba_kernels.offline _bwd_seq_kernel --maxnreg 200 --set PREFETCH_BC=0

For each kernel: registers and stack bytes per thread (spills show as stack), and for each loop the
instruction mix (MUFU, SHFL, loads, stores, FMA). The launch settings are the benchmark's (B=1, L=2^20,
D=1024, N=16, bf16 u/delta/z/output gradient, fp32 B and C, with D, z, delta_bias and softplus) at the
default ScanConfig. kernels/NOTES.md quotes these counts next to the GPU timings. Needs Triton's NVIDIA
backend, whose wheel ships ptxas and cuobjdump; no device.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import tempfile

from . import triton_scan as ts

# pointer arguments that hold 16-bit data in the benchmark (the rest are fp32 or int32)
BF16_POINTERS = {"u_ptr", "dt_ptr", "z_ptr", "gout_ptr", "out_ptr", "gu_ptr", "gdt_ptr", "gz_ptr"}
INT32_POINTERS = {"seq_ptr"}  # the packed sequence index; initial and final states are fp32
# integer arguments the launcher passes as multiples of 16 at the benchmark's shapes (Triton specialises those)
MULTIPLES_OF_16 = {"L", "D", "nchunks", "nsub", "nwork", "ndblk", "DN", "nprog"}

_cfg = ts.ScanConfig()
_OPTIONS = dict(HAS_BIAS=True, SOFTPLUS=True, PACKED=False, HAS_H0=False, ONE_GROUP=True, UNIT_ADD=_cfg.unit_add,
                N=16, NP=16, BC_LANES=ts._bc_lanes_block_apply(_cfg, 16, 1024, 1))
# (constexprs, num_warps, maxnreg) of each kernel as the default ScanConfig launches it at L=2^20
BENCH_LAUNCHES = {
    "_chunk_end_kernel": (dict(_OPTIONS, CHUNK=1024, BD=_cfg.block_d), _cfg.warps, _cfg.fwd_maxnreg),
    "_chunk_out_kernel": (dict(_OPTIONS, CHUNK=1024, BD=_cfg.block_d, HAS_D=True, HAS_Z=True), _cfg.warps,
                          _cfg.fwd_maxnreg),
    "_bwd_chunk_kernel": (dict(_OPTIONS, CHUNK=1024, SUB=_cfg.sub, BD=_cfg.block_d, HAS_Z=True, HAS_GFIN=False),
                          _cfg.warps, ts._bwd_chunk_maxnreg(_cfg, 16, 1024, 1)),
    "_bwd_seq_kernel": (dict(_OPTIONS, CHUNK=1024, SUB=_cfg.sub, BD=_cfg.seq_block_d, HAS_D=True, HAS_Z=True,
                             HAS_GFIN=False, PIECE=_cfg.seq_piece, TWO_LEVEL=_cfg.seq_piece < _cfg.sub,
                             LANE_SUMS=ts._lane_sums_apply(_cfg, 16, 1024, 1),
                             BC_LANES=ts._bc_lanes_apply(_cfg, 16, 1024, 1), PREFETCH_H=_cfg.seq_prefetch_h,
                             CHUNKS_FIRST=_cfg.seq_chunks_first, PREFETCH_BC=_cfg.seq_prefetch_bc,
                             WALK_UNROLL=_cfg.seq_walk_unroll),
                        _cfg.seq_warps, _cfg.seq_maxnreg),
}


def compile_sm90(name: str, constexprs: dict, num_warps: int, maxnreg: int | None = None):
    """The Triton kernel `name` compiled for sm_90 with the given constexprs (G is fixed to 1)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = ts._COMPILED[name]
    signature, attrs, constants = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            signature[arg], constants[arg] = "constexpr", constexprs[arg]
        elif arg == "G":
            signature[arg], constants[arg] = "constexpr", 1  # one group: Triton specialises an argument of 1
        elif arg.endswith("_ptr"):
            signature[arg] = "*bf16" if arg in BF16_POINTERS else "*i32" if arg in INT32_POINTERS else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
            if arg in MULTIPLES_OF_16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    options = dict(num_warps=num_warps) if maxnreg is None else dict(num_warps=num_warps, maxnreg=maxnreg)
    return triton.compile(ASTSource(fn, signature, constexprs=constants, attrs=attrs),
                          target=GPUTarget("cuda", 90, 32), options=options)


def _cuobjdump(kernel, flag: str) -> str:
    import triton.backends.nvidia as nvidia

    tool = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(kernel.asm["cubin"])
        return subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout


def resources(kernel) -> dict:
    """Registers and stack bytes per thread, from the cubin."""
    usage = _cuobjdump(kernel, "--dump-resource-usage")
    return {"regs": int(re.search(r"REG:(\d+)", usage).group(1)),
            "stack": int(re.search(r"STACK:(\d+)", usage).group(1))}


def loop_mixes(sass: str) -> list:
    """(first address, last address, Counter of opcodes) for every loop: each backward branch and its body."""
    lines = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)(.*)", line)
        if m:
            lines.append((int(m.group(1), 16), m.group(2).split(".")[0], m.group(3)))
    mixes = []
    for addr, op, rest in lines:
        target = re.search(r"0x([0-9a-f]+)", rest) if op == "BRA" else None
        if target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            mixes.append((start, addr, collections.Counter(o for a, o, _ in lines if start <= a <= addr)))
    return mixes


SHOWN = ("MUFU", "SHFL", "LDL", "STL", "LDG", "STG", "REDG", "FFMA", "FMUL", "FADD")


def describe(name: str, constexprs: dict, num_warps: int, maxnreg: int | None) -> str:
    kernel = compile_sm90(name, constexprs, num_warps, maxnreg)
    res = resources(kernel)
    out = [f"{name} (num_warps={num_warps}, maxnreg={maxnreg}): {res['regs']} registers, {res['stack']} B stack"]
    for start, end, mix in loop_mixes(_cuobjdump(kernel, "-sass")):
        counts = " ".join(f"{op}={mix[op]}" for op in SHOWN if mix[op])
        out.append(f"  loop {start:#x}-{end:#x}: {sum(mix.values())} instructions, {counts}")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernels", nargs="*", default=list(BENCH_LAUNCHES), help="kernel names (default: all)")
    ap.add_argument("--maxnreg", type=int, default=None, help="register cap (default: the ScanConfig default)")
    ap.add_argument("--warps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="override a constexpr, e.g. --set SUB=32 --set LANE_SUMS=0")
    args = ap.parse_args(argv)
    for name in args.kernels:
        if name not in BENCH_LAUNCHES:
            ap.error(f"unknown kernel {name!r}; choose from {', '.join(BENCH_LAUNCHES)}")
        constexprs, warps, maxnreg = BENCH_LAUNCHES[name]
        constexprs = dict(constexprs)
        for item in args.set:
            key, _, value = item.partition("=")
            if key not in constexprs:
                ap.error(f"{name} has no constexpr {key!r}")
            constexprs[key] = int(value)
        print(describe(name, constexprs, args.warps or warps, args.maxnreg or maxnreg), flush=True)


if __name__ == "__main__":
    main()
