"""Benchmark: the Triton selective scan against mamba_ssm's CUDA scan, on the same inputs, in one process.

    python bench/scan.py --anchors .anchors --out bench/results

Builds mamba_ssm's CUDA scan from the anchors folder, a copy of mamba_ssm 2.3.2.post1's source (about two minutes), then for each (batch, L) at
D=1024, N=16, bf16, with z gating and softplus: forward and forward+backward medians from
triton.testing.do_bench, and the extra peak memory of one forward+backward over the inputs already
allocated. Layouts are transposed for mamba_ssm (channels first) outside the timed region. At
L = 2^20 it also reports ||ours - mamba|| / ||mamba|| for the output and every gradient, the time of
each kernel (torch.profiler) and a few launch-shape variants. Imports only torch, triton and
dnamamba_kernels. `--packed` times packed sequences instead. `--baseline PATH` instead times the kernels against
another copy of the kernels package (e.g. the code before a refactor) in the same process:

    python bench/scan.py --baseline .before_split/kernels --out bench/results
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import torch
import triton

from dnamamba_kernels import ScanConfig, selective_scan_triton

SHAPES = [(8, 4096), (1, 32768), (1, 131072), (1, 1048576), (1, 2097152)]
DIM, DSTATE = 1024, 16
EXP_RATE = 4.0e12  # exp2 per second on the H200, measured (docs/architecture.md, "Measured floors")


def make_inputs(batch, L, seed=0):
    """Mamba-like values: A = -(1..16) per channel, dt from softplus(delta + bias) in about [1e-3, 1e-1]."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    bf = torch.bfloat16
    u = torch.randn(batch, L, DIM, device="cuda", generator=g, dtype=bf)
    delta = (torch.randn(batch, L, DIM, device="cuda", generator=g) * 0.5).to(bf)
    z = torch.randn(batch, L, DIM, device="cuda", generator=g, dtype=bf)
    A = -torch.arange(1, DSTATE + 1, device="cuda", dtype=torch.float32).repeat(DIM, 1)
    A = A * torch.exp(torch.randn(DIM, DSTATE, device="cuda", generator=g) * 0.1)
    B = torch.randn(batch, L, 1, DSTATE, device="cuda", generator=g, dtype=bf)
    C = torch.randn(batch, L, 1, DSTATE, device="cuda", generator=g, dtype=bf)
    D = torch.randn(DIM, device="cuda", generator=g)
    dt = torch.exp(torch.rand(DIM, device="cuda", generator=g) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
    bias = dt + torch.log(-torch.expm1(-dt))  # inverse softplus, as mamba_ssm initialises dt_proj
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


def to_mamba(x):
    """Channel-last (batch, L, dim) and (batch, L, G, N) to mamba_ssm's channels-first layouts."""
    return dict(u=x["u"].transpose(1, 2).contiguous(), delta=x["delta"].transpose(1, 2).contiguous(),
                A=x["A"], B=x["B"].permute(0, 2, 3, 1).contiguous(), C=x["C"].permute(0, 2, 3, 1).contiguous(),
                D=x["D"], z=x["z"].transpose(1, 2).contiguous(), delta_bias=x["delta_bias"])


def runner(impl, x, mamba_fn, cfg):
    if impl == "triton":
        return lambda **t: selective_scan_triton(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                                 delta_bias=t["delta_bias"], delta_softplus=True, config=cfg)
    return lambda **t: mamba_fn(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                                delta_bias=t["delta_bias"], delta_softplus=True)


def measure(fn, x, rep=200):
    """Forward ms, forward+backward ms, extra peak GB of one forward+backward (grads included)."""
    x = {k: v.detach() for k, v in x.items()}
    with torch.no_grad():
        fwd = triton.testing.do_bench(lambda: fn(**x), rep=rep, return_mode="median")
    leaves = {k: v.clone().requires_grad_(True) for k, v in x.items()}
    out = fn(**leaves)
    gy = torch.randn_like(out)
    del out

    def step():
        fn(**leaves).backward(gy)

    fb = triton.testing.do_bench(step, rep=rep, grad_to_none=list(leaves.values()), return_mode="median")
    for v in leaves.values():
        v.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 1e9
    grads = {k: v.grad for k, v in leaves.items()}
    return fwd, fb, peak, grads, gy


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def kernel_times(fn, x):
    """Median-ish per-kernel CUDA time of one forward+backward, from torch.profiler."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
    out = fn(**leaves)
    gy = torch.randn_like(out)
    for _ in range(2):
        fn(**leaves).backward(gy)
    torch.cuda.synchronize()
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            for v in leaves.values():
                v.grad = None  # else accumulating .grad adds an elementwise kernel that is not the scan's
            fn(**leaves).backward(gy)
        torch.cuda.synchronize()
    rows = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if t > 0:
            rows[e.key[:60]] = t / 3 / 1e3  # ms per forward+backward
    return dict(sorted(rows.items(), key=lambda kv: -kv[1])[:12])


# --variants: each changes one launch setting of the default configuration, at L=2^20
VARIANTS = [dict(carry_stages=1), dict(sub=32), dict(seq_piece=16)]


def check_float64(cfg):
    """Max |error| of the output and every gradient against the float64 reference, at the shapes of
    tests/kernels/test_gpu.py, with mamba_ssm's tolerances; returns {case: {tensor: error} | failure text}."""
    from dnamamba_kernels import selective_scan_ref

    tol = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}
    cases = [(2, 2049, 96, 2, torch.float32, None), (1, 2048, 200, 1, torch.bfloat16, None),
             (1, 3000, 64, 1, torch.float32, [0, 700, 701, 2500, 3000])]
    report = {}
    for batch, L, dim, G, dtype, cu in cases:
        g = torch.Generator(device="cuda").manual_seed(L)

        def rand(*shape, scale=1.0):
            return torch.randn(*shape, device="cuda", generator=g) * scale

        nstate = len(cu) - 1 if cu else batch
        x = dict(u=rand(batch, L, dim).to(dtype), delta=rand(batch, L, dim, scale=0.5).to(dtype),
                 A=-(torch.rand(dim, 16, device="cuda", generator=g) * 2 + 0.1), B=rand(batch, L, G, 16).to(dtype),
                 C=rand(batch, L, G, 16).to(dtype), D=rand(dim), z=rand(batch, L, dim).to(dtype),
                 delta_bias=rand(dim, scale=0.3), initial_state=rand(nstate, dim, 16))
        gy = rand(batch, L, dim).to(dtype).float()  # the output gradient as the kernels receive it
        gf = rand(nstate, dim, 16)
        cu_t = torch.tensor(cu, device="cuda", dtype=torch.int32) if cu else None

        def run(fn, dt=None):
            leaves = {k: (v if dt is None else v.to(dt)).detach().clone().requires_grad_() for k, v in x.items()}
            y, f = fn(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                      z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=True,
                      initial_state=leaves["initial_state"], return_final_state=True, cu_seqlens=cu_t)
            ((y.double() * gy.double()).sum() + (f.double() * gf.double()).sum()).backward()
            return {"out": y, "final": f, **{k: v.grad for k, v in leaves.items()}}

        got = run(lambda *a, **k: selective_scan_triton(*a, config=cfg, **k))
        ref = run(selective_scan_ref, torch.float64)
        name = f"{batch}x{L}x{dim} G={G} {str(dtype)[6:]}" + (" packed" if cu else "")
        t = tol[torch.float32] if cu else tol[dtype]
        try:
            for k in ref:
                torch.testing.assert_close(got[k].double(), ref[k], **t, msg=lambda m, k=k: f"{k}: {m}")
            report[name] = {k: float(f"{(got[k].double() - ref[k]).abs().max().item():.2e}") for k in ref}
        except AssertionError as e:
            report[name] = "FAILED " + str(e)[:400]
        print(name, report[name], flush=True)
    return report


PACKED_SEQLEN = 2 ** 17  # --packed: 2^20 tokens as 8 sequences of this length in batch 1


def packed_runner(scan, config, cu):
    return lambda **t: scan(t["u"], t["delta"], t["A"], t["B"], t["C"], D=t["D"], z=t["z"],
                            delta_bias=t["delta_bias"], delta_softplus=True, cu_seqlens=cu, config=config)


def packed(out_path: Path, rep: int):
    """Packed sequences: 2^20 tokens as 8 sequences of 2^17 in batch 1 (cu_seqlens), forward and
    forward+backward at the default config."""
    x = make_inputs(1, 2 ** 20)
    cu = torch.arange(0, 2 ** 20 + 1, PACKED_SEQLEN, device="cuda", dtype=torch.int32)
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cu_seqlens": cu.tolist(), "rows": []}
    cfg = ScanConfig()
    fwd, fb, peak, g, _ = measure(packed_runner(selective_scan_triton, cfg, cu), x, rep=rep)
    del g
    res["rows"].append(dict(config=repr(cfg), fwd_ms=round(fwd, 3), fwdbwd_ms=round(fb, 3),
                            peak_extra_gb=round(peak, 3)))
    print(json.dumps(res["rows"][-1]), flush=True)
    out_path.write_text(json.dumps(res, indent=1) + "\n")


def load_baseline(path: Path):
    """A copy of the kernels package (the folder installed as dnamamba_kernels) imported under another name, so
    that it runs beside the installed one in this process."""
    name = "dnamamba_kernels_baseline"
    spec = importlib.util.spec_from_file_location(name, path / "__init__.py", submodule_search_locations=[str(path)])
    if spec is None:
        raise SystemExit(f"bench/scan.py: error: {path} is not a copy of the kernels folder (no __init__.py)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def baseline(out_path: Path, rep: int, base_path: Path, shapes):
    """The installed kernels ("new") against the package at `base_path` ("baseline"), each at its default config,
    in one process: forward and forward+backward at each shape and for packed sequences (8 x 2^17), each measured
    twice in the order new, baseline, baseline, new so that drift hits both alike; the largest difference of the
    output and every gradient between the two on one output gradient; per-kernel times at L=2^20. Saved after
    every row."""
    base = load_baseline(base_path)
    impls = {"new": (selective_scan_triton, ScanConfig()), "baseline": (base.selective_scan_triton, base.ScanConfig())}
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "baseline": str(base_path), "configs": {k: repr(c) for k, (_, c) in impls.items()}, "rows": []}

    def save():
        out_path.write_text(json.dumps(res, indent=1) + "\n")

    cases = [(b, L, None) for b, L in shapes]
    cases.append((1, 2 ** 20, torch.arange(0, 2 ** 20 + 1, PACKED_SEQLEN, device="cuda", dtype=torch.int32)))
    for batch, L, cu in cases:
        x = make_inputs(batch, L)
        fns = {k: packed_runner(scan, cfg, cu) for k, (scan, cfg) in impls.items()}
        times = {k: [] for k in fns}
        for k in ("new", "baseline", "baseline", "new"):
            fwd, fb, peak, g, _ = measure(fns[k], x, rep=rep)
            del g
            times[k].append((fwd, fb, peak))
        row = dict(batch=batch, seqlen=L, packed=None if cu is None else f"{(len(cu) - 1)} x {PACKED_SEQLEN}")
        for k, t in times.items():
            row[k] = dict(fwd_ms=[round(v[0], 3) for v in t], fwdbwd_ms=[round(v[1], 3) for v in t],
                          peak_extra_gb=round(max(v[2] for v in t), 3))
        mean = {k: (sum(v[0] for v in t) / 2, sum(v[1] for v in t) / 2) for k, t in times.items()}
        row["ratio_new_to_baseline"] = dict(fwd=round(mean["new"][0] / mean["baseline"][0], 4),
                                            fwdbwd=round(mean["new"][1] / mean["baseline"][1], 4))
        # the same inputs and output gradient through both
        got = {}
        gy = None
        for k, fn in fns.items():
            leaves = {n: v.detach().clone().requires_grad_(True) for n, v in x.items()}
            y = fn(**leaves)
            gy = torch.randn_like(y) if gy is None else gy
            y.backward(gy)
            got[k] = {"out": y.detach(), **{n: v.grad for n, v in leaves.items()}}
            del leaves, y
        row["max_abs_diff"] = {n: float(f"{(got['new'][n].float() - got['baseline'][n].float()).abs().max().item():.3e}")
                               for n in got["new"]}
        del got, gy
        torch.cuda.empty_cache()
        if L == 2 ** 20 and cu is None:
            row["kernel_ms"] = {k: kernel_times(fn, x) for k, fn in fns.items()}
        res["rows"].append(row)
        print(json.dumps(row), flush=True)
        save()
        del x
        torch.cuda.empty_cache()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", default=".anchors", help="a copy of mamba_ssm's source to build the CUDA scan from")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--shapes", default=None, help="comma list of batchxL, e.g. 8x4096,1x1048576")
    ap.add_argument("--variants", action="store_true", help="also time launch-shape variants at L=2^20")
    ap.add_argument("--no-mamba", action="store_true")
    ap.add_argument("--rep", type=int, default=200, help="do_bench time budget per measurement, ms")
    ap.add_argument("--packed", action="store_true",
                    help="only time packed sequences (8 x 2^17 through cu_seqlens) at the defaults; "
                         "writes scan_packed_h200.json")
    ap.add_argument("--baseline", type=Path, default=None, metavar="PATH",
                    help="only time the kernels against the kernels package copied at PATH (a kernels/ folder), "
                         "without mamba_ssm, at --shapes (default 1x1048576,8x4096,1x131072) and packed; writes "
                         "scan_baseline_h200.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shapes = SHAPES if not args.shapes else [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.packed:
        packed(out / "scan_packed_h200.json", args.rep)
        return
    if args.baseline:
        baseline(out / "scan_baseline_h200.json", args.rep, args.baseline,
                 shapes if args.shapes else [(1, 2 ** 20), (8, 4096), (1, 2 ** 17)])
        return
    mamba_fn = None
    if not args.no_mamba:
        sys.path.insert(0, str(Path(args.anchors).resolve()))
        from mamba_ssm_anchor import load

        t = time.time()
        mamba_fn = load()[0]
        print(f"built mamba_ssm's CUDA scan in {time.time() - t:.0f} s", flush=True)
    cfg = ScanConfig()
    rows, extra = [], {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "triton": triton.__version__, "config": repr(cfg)}
    extra["check_float64"] = check_float64(cfg)
    for batch, L in shapes:
        x = make_inputs(batch, L)
        floor_ms = batch * L * DIM * DSTATE / EXP_RATE * 1e3
        res = {}
        for impl in (["triton", "mamba_ssm"] if mamba_fn else ["triton"]):
            xi = x if impl == "triton" else to_mamba(x)
            fn = runner(impl, xi, mamba_fn, cfg)
            fwd, fb, peak, grads, gy = measure(fn, xi)
            res[impl] = (fwd, fb, grads, gy)
            row = dict(impl=impl, batch=batch, seqlen=L, dim=DIM, dstate=DSTATE, dtype="bfloat16",
                       fwd_ms=round(fwd, 3), fwdbwd_ms=round(fb, 3), peak_extra_gb=round(peak, 3),
                       exp_floor_ms=round(floor_ms, 3), fwd_floor_share=round(floor_ms / fwd, 3))
            rows.append(row)
            print(json.dumps(row), flush=True)
            del grads
            torch.cuda.empty_cache()
        if mamba_fn:
            t, m = res["triton"], res["mamba_ssm"]
            rows[-2]["fwd_ratio"] = round(t[0] / m[0], 3)
            rows[-2]["fwdbwd_ratio"] = round(t[1] / m[1], 3)
            print(f"ratio to mamba_ssm at {batch}x{L}: fwd {t[0] / m[0]:.3f}, fwd+bwd {t[1] / m[1]:.3f}", flush=True)
        if L == 2 ** 20 and mamba_fn:
            # the same inputs and the same output gradient through both
            leaves = {k: v.detach().clone().requires_grad_(True) for k, v in x.items()}
            y_t = runner("triton", x, None, cfg)(**leaves)
            gy = torch.randn_like(y_t)
            y_t.backward(gy)
            mx = {k: v.detach().clone().requires_grad_(True) for k, v in to_mamba(x).items()}
            y_m = runner("mamba_ssm", mx, mamba_fn, cfg)(**mx)
            y_m.backward(gy.transpose(1, 2).contiguous())
            back = {"u": lambda g: g.transpose(1, 2), "delta": lambda g: g.transpose(1, 2),
                    "z": lambda g: g.transpose(1, 2), "B": lambda g: g.permute(0, 3, 1, 2),
                    "C": lambda g: g.permute(0, 3, 1, 2)}
            errs = {"out": rel(y_t, y_m.transpose(1, 2))}
            for k in leaves:
                errs["grad_" + k] = rel(leaves[k].grad, back.get(k, lambda g: g)(mx[k].grad))
            extra["rel_error_vs_mamba_at_2^20"] = {k: float(f"{v:.3e}") for k, v in errs.items()}
            print("relative error vs mamba_ssm at L=2^20:", json.dumps(extra["rel_error_vs_mamba_at_2^20"]),
                  flush=True)
            del leaves, mx, y_t, y_m
            torch.cuda.empty_cache()
        if L == 2 ** 20:
            extra["kernel_ms_per_fwdbwd_at_2^20"] = kernel_times(runner("triton", x, None, cfg), x)
            print("kernel times:", json.dumps(extra["kernel_ms_per_fwdbwd_at_2^20"]), flush=True)
            if args.variants:
                var = []
                for kw in VARIANTS:
                    c = ScanConfig(**kw)
                    fwd, fb, peak, grads, _ = measure(runner("triton", x, None, c), x, rep=100)
                    del grads
                    var.append(dict(config=repr(c), fwd_ms=round(fwd, 3), fwdbwd_ms=round(fb, 3),
                                    peak_extra_gb=round(peak, 3),
                                    kernel_ms=kernel_times(runner("triton", x, None, c), x)))
                    print(json.dumps(var[-1]), flush=True)
                extra["variants_at_2^20"] = var
        del x
        torch.cuda.empty_cache()
        (out / "scan_h200.json").write_text(json.dumps({"rows": rows, "extra": extra}, indent=1) + "\n")
    from make_table import write_outputs

    write_outputs(out / "scan_h200.json")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
