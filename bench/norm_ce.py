"""Benchmark: the fused residual add + RMSNorm and the chunked linear + cross-entropy against plain PyTorch.

    # on the GPU machine, from the repository root
    mkdir -p /tmp/shim && ln -sfn $PWD/kernels /tmp/shim/dnamamba_kernels
    PYTHONPATH=/tmp/shim python3 bench/norm_ce.py --out bench/results [--variants]

At B=1, L=2^20, d=256 (the whole-model benchmark's d_model), bf16:
- add + RMSNorm: x bf16 (the mixer output) added to the fp32 residual stream, weight fp32, out bf16. `add_rms_norm`
  (Triton) against `add_rms_norm_ref` (the same math in eager PyTorch) and against torch's own F.rms_norm after the
  add. Forward and forward+backward (gradients of out and residual_out) medians from triton.testing.do_bench, the
  extra peak memory of one forward+backward, the bandwidth the Triton forward and backward reach (bytes they must
  move over their time), and the largest difference from the eager version. The low-level `rms_norm_fwd` /
  `rms_norm_bwd` are timed alone, the backward with rstd read back and recomputed. `--variants` adds launch shapes.
- linear + cross-entropy over the tied 256-way byte head, bf16 hidden under bf16 autocast, fp32 weight, loss a
  weighted mean of the per-row nll: `linear_cross_entropy` at its default chunk and other chunk sizes against
  `linear_cross_entropy_ref` (F.linear, then F.cross_entropy of the whole fp32 logits).
Writes `norm_ce_h200.json` under --out. Imports only torch, triton and dnamamba_kernels. `--smoke` runs tiny
shapes on CPU (set TRITON_INTERPRET=1 to run the Triton kernels there) and prints the JSON instead of writing it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

from dnamamba_kernels.cross_entropy import default_chunk_size, linear_cross_entropy, linear_cross_entropy_ref
from dnamamba_kernels.rms_norm import (NormLaunch, add_rms_norm, add_rms_norm_ref, rms_norm_bwd, rms_norm_fwd)

EPS = 1e-5
VOCAB = 256
HBM_BYTES_PER_S = 4.24e12  # H200, docs/architecture.md ("Measured floors")


def timer(fn, grad_to_none=None, rep=100):
    """Median ms: do_bench on the GPU, a few wall-clock runs on CPU."""
    if torch.cuda.is_available():
        return triton.testing.do_bench(fn, rep=rep, grad_to_none=grad_to_none, return_mode="median")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def peak_extra_gb(step):
    """Peak memory of one call above what is allocated before it, in GB (None on CPU)."""
    if not torch.cuda.is_available():
        step()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 1e9


def torch_rms_norm(x, residual, weight, eps=EPS, out_dtype=None):
    """The add in eager PyTorch, then torch's own F.rms_norm."""
    r = residual + x.float()
    return F.rms_norm(r, (r.shape[-1],), weight, eps).to(out_dtype or x.dtype), r


def bench_norm(L, d, device, variants):
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, L, d, device=device, generator=g).to(torch.bfloat16)
    res = torch.randn(1, L, d, device=device, generator=g) * 4
    w = 1 + 0.1 * torch.randn(d, device=device, generator=g)
    gout = torch.randn(1, L, d, device=device, generator=g).to(torch.bfloat16)
    gres = torch.randn(1, L, d, device=device, generator=g)
    n = L
    rows = []
    outs = {}
    impls = {"triton": add_rms_norm, "torch_eager": add_rms_norm_ref, "torch_F.rms_norm": torch_rms_norm}
    for name, fn in impls.items():
        leaves = [t.clone().requires_grad_() for t in (x, res, w)]
        with torch.no_grad():
            fwd = timer(lambda: fn(x, res, w, EPS))

        def step():
            out, res_out = fn(*leaves, EPS)
            torch.autograd.backward((out, res_out), (gout, gres))

        fb = timer(step, grad_to_none=leaves)
        for t in leaves:
            t.grad = None
        peak = peak_extra_gb(step)
        outs[name] = (fn(x, res, w, EPS), [t.grad for t in leaves])
        rows.append(dict(op="add_rms_norm", impl=name, L=L, d=d, fwd_ms=fwd, fwdbwd_ms=fb, peak_extra_gb=peak))
    (out_e, res_e), grads_e = outs["torch_eager"]
    for row in rows:
        (out, res_out), grads = outs[row["impl"]]
        row["max_abs_diff_vs_eager"] = {
            "out": (out.float() - out_e.float()).abs().max().item(),
            "residual_out": (res_out - res_e).abs().max().item(),
            **{f"grad_{k}": (a.float() - b.float()).abs().max().item() for k, a, b in zip(("x", "residual", "weight"),
                                                                                        grads, grads_e)}}
    # bytes the fused kernels must move: forward reads x (2) and residual (4), writes residual_out (4), out (2);
    # backward reads dout (2), residual_out (4), d residual_out (4), writes d residual (4) and d x (2)
    elems = n * d
    fwd_bytes, bwd_bytes = 12 * elems, 16 * elems
    _, res_out, rstd = rms_norm_fwd(x, res, w, EPS)
    low = {"fwd_ms": timer(lambda: rms_norm_fwd(x, res, w, EPS)),
           "bwd_saved_rstd_ms": timer(lambda: rms_norm_bwd(gout, res_out, w, rstd, EPS, gres)),
           "bwd_recomputed_rstd_ms": timer(lambda: rms_norm_bwd(gout, res_out, w, None, EPS, gres))}
    low["fwd_fraction_of_hbm_peak"] = fwd_bytes / (low["fwd_ms"] * 1e-3) / HBM_BYTES_PER_S
    # rms_norm_bwd writes d residual in fp32 only (no bf16 copy): 14 bytes an element
    low["bwd_fraction_of_hbm_peak"] = 14 * elems / (low["bwd_saved_rstd_ms"] * 1e-3) / HBM_BYTES_PER_S
    low["fwd_floor_ms"] = fwd_bytes / HBM_BYTES_PER_S * 1e3
    low["fwdbwd_floor_ms"] = (fwd_bytes + bwd_bytes) / HBM_BYTES_PER_S * 1e3
    launches = []
    if variants:
        for block_rows in (2, 4, 8, 16, 32, 64):
            for warps in (1, 2, 4, 8, 16):
                cfg = NormLaunch(block_rows=block_rows, bwd_block_rows=block_rows, warps=warps)
                launches.append(dict(block_rows=block_rows, warps=warps,
                                     fwd_ms=timer(lambda: rms_norm_fwd(x, res, w, EPS, launch=cfg)),
                                     bwd_ms=timer(lambda: rms_norm_bwd(gout, res_out, w, rstd, EPS, gres,
                                                                       launch=cfg))))
        for programs_per_sm in (1, 2, 4, 8, 16):
            sms = torch.cuda.get_device_properties(device).multi_processor_count if device == "cuda" else 1
            cfg = NormLaunch(bwd_programs=sms * programs_per_sm)
            launches.append(dict(bwd_programs_per_sm=programs_per_sm,
                                 bwd_ms=timer(lambda: rms_norm_bwd(gout, res_out, w, rstd, EPS, gres, launch=cfg))))
    return rows, low, launches


def bench_ce(L, d, device, chunks):
    g = torch.Generator(device=device).manual_seed(1)
    hidden = torch.randn(L, d, device=device, generator=g).to(torch.bfloat16)
    weight = torch.randn(VOCAB, d, device=device, generator=g) / d ** 0.5
    targets = torch.randint(0, VOCAB, (L,), device=device, generator=g)
    lw = (torch.rand(L, device=device, generator=g) > 0.1).float()  # e.g. N and padding masked out
    impls = {f"chunked_{c or default_chunk_size(VOCAB)}": (linear_cross_entropy, dict(chunk_size=c)) for c in chunks}
    impls["torch_full_logits"] = (linear_cross_entropy_ref, {})
    rows, results = [], {}
    for name, (fn, kw) in impls.items():
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()

        def forward():
            with torch.autocast(device, dtype=torch.bfloat16):
                return fn(h, w, targets, **kw)

        def step():
            ((forward() * lw).sum() / lw.sum()).backward()

        with torch.no_grad():
            fwd = timer(forward)
        fb = timer(step, grad_to_none=[h, w])
        h.grad = w.grad = None
        peak = peak_extra_gb(step)
        results[name] = (forward().detach(), h.grad, w.grad)
        rows.append(dict(op="linear_cross_entropy", impl=name, L=L, d=d, vocab=VOCAB, fwd_ms=fwd, fwdbwd_ms=fb,
                         peak_extra_gb=peak))
    ref = results["torch_full_logits"]
    for row in rows:
        got = results[row["impl"]]
        row["vs_full_logits"] = {
            "nll_max_abs_diff": (got[0] - ref[0]).abs().max().item(),
            **{f"grad_{k}_rel_err": ((a.double() - b.double()).norm() / b.double().norm()).item()
               for k, a, b in zip(("hidden", "weight"), got[1:], ref[1:])}}
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--seqlen", type=int, default=2 ** 20)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--variants", action="store_true", help="also time launch shapes of the norm kernels")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU; print the JSON instead of writing it")
    args = ap.parse_args()
    if args.smoke:
        device, L, chunks = "cpu", 300, (None, 64)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("dnamamba: error: bench/norm_ce.py needs a CUDA device (or --smoke)")
        device, L, chunks = "cuda", args.seqlen, (None, 2 ** 15, 2 ** 16, 2 ** 18)
    norm_rows, low, launches = bench_norm(L, args.d_model, device, args.variants)
    ce_rows = bench_ce(L, args.d_model, device, chunks)
    res = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "triton": triton.__version__, "batch": 1, "seqlen": L, "d_model": args.d_model, "dtype": "bfloat16",
           "rows": norm_rows + ce_rows, "rms_norm_low_level": low, "rms_norm_launches": launches}
    text = json.dumps(res, indent=1) + "\n"
    if args.smoke:
        print(text)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "norm_ce_h200.json.tmp"
    tmp.write_text(text)
    tmp.replace(out / "norm_ce_h200.json")
    for row in res["rows"]:
        print(f"{row['op']:22s} {row['impl']:18s} fwd {row['fwd_ms']:7.3f} ms  fwd+bwd {row['fwdbwd_ms']:7.3f} ms  "
              f"peak +{row['peak_extra_gb']:.2f} GB")
    print(json.dumps(low, indent=1))


if __name__ == "__main__":
    main()
