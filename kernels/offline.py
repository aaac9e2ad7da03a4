"""Compile the scan kernels for sm_90 without a GPU and count what their SASS does.

    python -m dnamamba_kernels.offline                       # every kernel at the benchmark's launch
    python -m dnamamba_kernels.offline _bwd_seq_kernel --maxnreg 200 --set SUB=32
    python -m dnamamba_kernels.offline --packed --md5        # the packed launches, with a digest of each SASS

For each kernel: registers and stack bytes per thread (spills show as stack), the md5 of its SASS instruction
stream (`--md5`: equal digests mean the same machine code, so a refactor can be checked without a GPU), and for
each loop the instruction mix (MUFU, SHFL, loads, stores, FMA). The launch settings are the benchmark's (B=1,
L=2^20, D=1024, N=16, bf16 u/delta/z/output gradient, fp32 B and C, with D, z, delta_bias and softplus, no
initial state) at the default ScanConfig, with the kernels' heuristics applied as at a launch. kernels/NOTES.md
quotes these counts next to the GPU timings. Needs Triton's NVIDIA backend, whose wheel ships ptxas and
cuobjdump; no device.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import subprocess
import tempfile

from .selective_scan import ScanConfig
from .selective_scan.registry import KERNELS

# pointer arguments that hold 16-bit data in the benchmark (the rest are fp32 or int32)
BF16_POINTERS = {"u_ptr", "dt_ptr", "z_ptr", "gout_ptr", "out_ptr", "gu_ptr", "gdt_ptr", "gz_ptr"}
INT32_POINTERS = {"seq_ptr"}  # the packed sequence index; initial and final states are fp32
# integer arguments the launcher passes as multiples of 16 at the benchmark's shapes (Triton specialises those)
MULTIPLES_OF_16 = {"L", "D", "nchunks", "nsub", "nwork", "ndblk", "DN", "nprog"}
# the inputs and outputs of a packed batch, and the carry's initial value: None in the benchmark's launches
PACKED_POINTERS = {"seq_ptr", "h0_ptr", "gfin_ptr", "gh0_ptr", "final_ptr"}
ABSENT = PACKED_POINTERS | {"init_ptr"}
BENCH_SHAPE = dict(N=16, D=1024, G=1)

_cfg = ScanConfig()
_lanes = dict(BC_LANES=_cfg.block_lanes(16, 1024, 1))
# (explicit constexprs, num_warps, maxnreg) of each kernel as the default ScanConfig launches it at L=2^20
BENCH_LAUNCHES = {
    "_chunk_end_kernel": (dict(N=16, CHUNK=1024, BD=_cfg.block_d, SOFTPLUS=True, **_lanes), _cfg.warps, None),
    "_carry_kernel": (dict(BLOCK=_cfg.carry_block, REVERSE=False, STAGES=_cfg.carry_stages), 4, None),
    "_chunk_out_kernel": (dict(N=16, CHUNK=1024, BD=_cfg.block_d, SOFTPLUS=True, **_lanes), _cfg.warps, None),
    "_bwd_chunk_kernel": (dict(N=16, CHUNK=1024, SUB=_cfg.sub, BD=_cfg.block_d, SOFTPLUS=True, **_lanes),
                          _cfg.warps, _cfg.bwd_chunk_maxnreg(16, 1024, 1)),
    "_bwd_seq_kernel": (dict(N=16, CHUNK=1024, SUB=_cfg.sub, BD=_cfg.seq_block_d, SOFTPLUS=True, PIECE=_cfg.seq_piece,
                             LANES=_cfg.seq_lanes(16, 1024, 1)), _cfg.seq_warps, None),
}


def launch_constexprs(name: str, explicit: dict, absent=ABSENT, shape=BENCH_SHAPE) -> dict:
    """Every constexpr of kernel `name` at a launch with the `explicit` ones, the pointers in `absent` passed as
    None, and the sizes of `shape`: the kernel's heuristics fill in the rest (unless `explicit` sets them)."""
    jit = KERNELS.jit(name)
    args = {arg: None if arg in absent else arg for arg in jit.arg_names if arg.endswith("_ptr")}
    args.update(shape)
    args.update(explicit)
    for key, heuristic in KERNELS.heuristics(name).items():
        if key not in explicit:
            args[key] = heuristic(args)
    return {arg: args[arg] for i, arg in enumerate(jit.arg_names) if jit.params[i].is_constexpr}


def compile_sm90(name: str, constexprs: dict, num_warps: int, maxnreg: int | None = None, absent=ABSENT):
    """The Triton kernel `name` compiled for sm_90 with the given constexprs and the pointers in `absent` passed as
    None (G is fixed to 1)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = KERNELS.jit(name)
    signature, attrs, constants = {}, {}, {}
    for i, arg in enumerate(fn.arg_names):
        if fn.params[i].is_constexpr:
            signature[arg], constants[arg] = "constexpr", constexprs[arg]
        elif arg == "G":
            signature[arg], constants[arg] = "constexpr", 1  # one group: Triton specialises an argument of 1
        elif arg.endswith("_ptr") and arg in absent:
            signature[arg], constants[arg] = "constexpr", None  # Triton specialises a None argument the same way
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


_SASS_LINE = re.compile(r"\s+/\*([0-9a-f]+)\*/\s+(.*?)\s*;")


def instructions(sass: str) -> list:
    """The instructions of a `cuobjdump -sass` listing, without addresses and encodings."""
    return [m.group(2) for m in map(_SASS_LINE.match, sass.splitlines()) if m]


def sass_md5(sass: str, params: bool = True) -> str:
    """md5 of the instruction stream. params=False masks the constant-bank offsets of the kernel parameters
    (c[0x0][...]), which move when the parameter list changes, e.g. when an absent input is passed as None."""
    text = "\n".join(instructions(sass))
    if not params:
        text = re.sub(r"c\[0x0\]\[0x[0-9a-f]+\]", "c[0x0][_]", text)
    return hashlib.md5(text.encode()).hexdigest()


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


def describe(name: str, constexprs: dict, num_warps: int, maxnreg: int | None, absent=ABSENT,
             md5: bool = False) -> str:
    kernel = compile_sm90(name, constexprs, num_warps, maxnreg, absent)
    res = resources(kernel)
    sass = _cuobjdump(kernel, "-sass")
    out = [f"{name} (num_warps={num_warps}, maxnreg={maxnreg}): {res['regs']} registers, {res['stack']} B stack, "
           f"{len(instructions(sass))} instructions"]
    if md5:
        out[0] += f", SASS md5 {sass_md5(sass)}"
    for start, end, mix in loop_mixes(sass):
        counts = " ".join(f"{op}={mix[op]}" for op in SHOWN if mix[op])
        out.append(f"  loop {start:#x}-{end:#x}: {sum(mix.values())} instructions, {counts}")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernels", nargs="*", default=list(BENCH_LAUNCHES), help="kernel names (default: all)")
    ap.add_argument("--maxnreg", type=int, default=None, help="register cap (default: the ScanConfig default)")
    ap.add_argument("--warps", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=INT",
                    help="set a constexpr, e.g. --set SUB=32 --set LANES=0 (others follow from the heuristics)")
    ap.add_argument("--packed", action="store_true",
                    help="a packed batch with initial states and a final-state gradient (sequence index and state "
                         "pointers present)")
    ap.add_argument("--md5", action="store_true", help="also print the md5 of each kernel's SASS instructions")
    args = ap.parse_args(argv)
    absent = ABSENT - PACKED_POINTERS if args.packed else ABSENT
    for name in args.kernels:
        if name not in BENCH_LAUNCHES:
            ap.error(f"unknown kernel {name!r}; choose from {', '.join(BENCH_LAUNCHES)}")
        explicit, warps, maxnreg = BENCH_LAUNCHES[name]
        explicit = dict(explicit)
        for item in args.set:
            key, _, value = item.partition("=")
            if key not in launch_constexprs(name, explicit, absent):
                ap.error(f"{name} has no constexpr {key!r}")
            explicit[key] = int(value)
        constexprs = launch_constexprs(name, explicit, absent)
        print(describe(name, constexprs, args.warps or warps, args.maxnreg or maxnreg, absent, args.md5), flush=True)


if __name__ == "__main__":
    main()
