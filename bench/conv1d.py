"""Benchmark: the Triton causal conv1d against PyTorch's F.conv1d path, at B=1, L=2^20, D=512, width 4, bf16.

    mkdir -p /tmp/shim && ln -sfn $PWD/kernels /tmp/shim/dnamamba_kernels
    PYTHONPATH=/tmp/shim python3 bench/conv1d.py --out bench/results

Medians from triton.testing.do_bench of the forward and of forward+backward (autograd, gradients for x, weight
and bias) for:
- triton: causal_conv1d(x, w, b, "silu") with x a column slice of a (1, L, 2D) bf16 tensor, as the mixer splits
  in_proj's output, and fp32 parameters;
- torch: silu(F.conv1d(x^T, w, b, padding=3, groups=D)[..., :L])^T under bf16 autocast with fp32 parameters, what
  an nn.Conv1d layer in the model runs (cuDNN's depthwise conv and the layout copies around it).
Then each Triton launch alone (causal_conv1d_fwd, causal_conv1d_bwd) at the default launch shapes and a few
others, with the bandwidth it reaches against its byte floor: forward reads x and writes y (4 bytes a bf16
element), backward reads x and dy and writes dx (6 bytes). Also the extra peak memory of one forward+backward
and the largest difference between the two paths' outputs. Writes results/conv1d_h200.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from dnamamba_kernels.conv1d import Conv1dConfig, causal_conv1d, causal_conv1d_bwd, causal_conv1d_fwd

L, DIM, WIDTH = 2 ** 20, 512, 4
# launch shapes timed beside the defaults: one field changed at a time
VARIANTS = {
    "fwd block_t=16": dict(block_t=16), "fwd block_t=64": dict(block_t=64),
    "fwd block_d=256 warps=8": dict(block_d=256, warps=8), "fwd block_d=64 warps=2": dict(block_d=64, warps=2),
    "bwd block_t=4": dict(bwd_block_t=4), "bwd block_t=16": dict(bwd_block_t=16),
    "bwd block_d=64": dict(bwd_block_d=64), "bwd block_d=256 warps=2": dict(bwd_block_d=256, bwd_warps=2),
}


def make_inputs(seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    xz = torch.randn(1, L, 2 * DIM, device="cuda", generator=g, dtype=torch.bfloat16)
    w = torch.randn(DIM, 1, WIDTH, device="cuda", generator=g) / 2  # nn.Conv1d's layout, fp32
    b = torch.randn(DIM, device="cuda", generator=g) * 0.1
    dy = torch.randn(1, L, DIM, device="cuda", generator=g, dtype=torch.bfloat16)
    return xz[..., :DIM], w, b, dy


def torch_conv(x, w, b):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = F.conv1d(x.transpose(1, 2), w, b, padding=WIDTH - 1, groups=DIM)[..., :x.shape[1]]
        return F.silu(y).transpose(1, 2)


def triton_conv(x, w, b):
    return causal_conv1d(x, w, b, "silu")


def bench(fn, rep):
    return triton.testing.do_bench(fn, rep=rep, return_mode="median")


def measure(conv, x, w, b, dy, rep):
    """Forward ms, forward+backward ms, extra peak GB of one forward+backward."""
    with torch.no_grad():
        fwd = bench(lambda: conv(x, w, b), rep)
    leaves = [t.detach().requires_grad_(True) for t in (x, w, b)]

    def step():
        conv(*leaves).backward(dy)

    fwdbwd = bench(step, rep)
    for t in leaves:
        t.grad = None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 1e9
    return dict(fwd_ms=fwd, fwdbwd_ms=fwdbwd, peak_extra_gb=peak)


def launches(x, w, b, dy, cfg, rep):
    """Each Triton launch alone: ms and GB/s over its byte floor."""
    fwd = bench(lambda: causal_conv1d_fwd(x, w, b, "silu", config=cfg), rep)
    bwd = bench(lambda: causal_conv1d_bwd(x, w, b, dy, "silu", config=cfg), rep)
    elems = x.numel()
    return dict(fwd_ms=fwd, fwd_gbps=4 * elems / fwd / 1e6, bwd_ms=bwd, bwd_gbps=6 * elems / bwd / 1e6)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results", help="folder for conv1d_h200.json")
    ap.add_argument("--rep", type=int, default=200, help="do_bench time budget per measurement, ms")
    ap.add_argument("--no-variants", action="store_true", help="time only the default launch shapes")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/conv1d.py: needs a CUDA device")
    x, w, b, dy = make_inputs()
    with torch.no_grad():
        diff = (triton_conv(x, w, b).float() - torch_conv(x, w, b).float()).abs().max().item()
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
               batch=1, seqlen=L, dim=DIM, width=WIDTH, dtype="bfloat16", activation="silu",
               max_abs_diff_triton_vs_torch=diff, paths={}, launches={})
    for name, conv in (("triton", triton_conv), ("torch", torch_conv)):
        res["paths"][name] = measure(conv, x, w, b, dy, args.rep)
        print(name, json.dumps(res["paths"][name]), flush=True)
    res["speedup"] = {k: res["paths"]["torch"][k] / res["paths"]["triton"][k] for k in ("fwd_ms", "fwdbwd_ms")}
    shapes = {"default": {}} if args.no_variants else {"default": {}, **VARIANTS}
    for name, change in shapes.items():
        cfg = Conv1dConfig(**change)
        res["launches"][name] = dict(config=vars(cfg), **launches(x, w, b, dy, cfg, args.rep))
        print(name, json.dumps({k: v for k, v in res["launches"][name].items() if k != "config"}), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "conv1d_h200.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    os.replace(tmp, path)
    print("wrote", path)


if __name__ == "__main__":
    main()
