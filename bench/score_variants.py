"""Variant-scoring throughput: `score-variants` with every REF/ALT window read whole (method=plain), the
shared-context reading (method=shared) and the tile-context score (context=tile, a different score), and
the code before the shared-context engine (`--before`), all on the same variants, model and GPU in one run.

    # GPU machine, from the repository root; FASTA copied there (the machine has no data folder);
    # .before_scoring holds the package as it was before the engine (see --before)
    PYTHONPATH=. python3 bench/score_variants.py --fasta hs37_chr20.fa.gz --contig 20 \\
        --before .before_scoring --cli before,shared --profile --out bench/results/score_variants_h200.json

    # CPU, tiny sizes (a check that it runs)
    python bench/score_variants.py --fasta data/hs37_chr20.fa.gz --contig 20 --device cpu \\
        --precision fp32 --d-model 32 --n-layer 2 --n-variants 300 --windows 64,512 --long-variants 100 \\
        --batch-size 32 --out /tmp/score_variants_cpu.json

The model is random-init (8 layers at d_model 256 by default): speed does not depend on the weights. The
variants are random SNVs at non-N positions of one contig (ALT a random other base), sorted. Windows of
`--long-from` bases or more score only the first `--long-variants` of them (a stretch of the contig, so the
density of variants, which context=tile profits from, stays that of the whole set).

Two timings per (window, method), each after a warm-up run on 64 variants (kernel compilation, caches):
- `variants_per_s`: `score_vcf` in this process, as the CLI calls it: loading the export, reading the VCF
  twice, scoring, writing the TSV; not Python start-up;
- `cli_variants_per_s` (for the methods `--cli` names): `python -m dnamamba.cli score-variants` in a subprocess, start-up included.

`--before DIR` names a copy of the package from before the engine (dnamamba/ with conf/ and pipelines/ inside it,
kernels/ as dnamamba_kernels/; `git archive` of that commit, rearranged so). A subprocess with DIR first on
sys.path writes the export (in the layout that code reads, which this code reads too, so every method scores the
same weights) and times its own score_vcf and CLI the same way.

Scores of every method are compared with method=plain on the same variants (max |difference|): in bf16 the
methods batch the model's matmuls differently, so they agree to bf16 rounding, not bit for bit. For "tile" the
score itself differs; only its correlation means something.
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dnamamba.data.fasta import FastaFile
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf
from dnamamba.model import MambaConfig, MambaLM, save_export
from dnamamba.model import fused as fused_path

ROOT = Path(__file__).resolve().parent.parent

METHODS = {  # name -> ScoreVariantsConfig overrides
    "plain": {"method": "plain"},
    "shared": {"method": "shared"},
    "tile": {"method": "shared", "context": "tile"},
}

# The model's forward with the scan as it runs by default (one pass a sequence without a backward, where enough
# programs run), and as a training forward runs it (chunk ends, carry, outputs), timed at the scoring row shapes.
SCAN_VARIANTS = {"one_pass": fused_path.SCAN_CONFIG,
                 "chunked": dataclasses.replace(fused_path.SCAN_CONFIG, one_pass_programs=1 << 62)}

# Run by the package before the engine (--before): its ScoreVariantsConfig has no method or context keys.
BEFORE_DRIVER = r"""
import json, sys, time, torch
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf
from dnamamba.model import MambaConfig, MambaLM, save_export
job = json.loads(sys.argv[1])
if job["action"] == "export":
    torch.manual_seed(job["seed"])
    save_export(MambaLM(MambaConfig(d_model=job["d_model"], n_layer=job["n_layer"])).eval(), job["out"])
else:
    score_vcf(ScoreVariantsConfig(vcf=job["warm"], out=job["warm_out"], **job["settings"]))
    t = time.perf_counter()
    score_vcf(ScoreVariantsConfig(vcf=job["vcf"], out=job["out"], **job["settings"]))
    print(json.dumps({"wall_s": time.perf_counter() - t}))
"""


def random_snvs(fasta: FastaFile, contig: str, n: int, seed: int) -> list[tuple[int, str, str]]:
    """n distinct sorted (pos 1-based, ref, alt) SNVs at A/C/G/T positions of `contig`."""
    rng = random.Random(seed)
    length = fasta.lengths[contig]
    seen: dict[int, tuple[str, str]] = {}
    while len(seen) < n:
        for pos in [rng.randrange(length) for _ in range(2 * (n - len(seen)))]:
            base = fasta.fetch(contig, pos, pos + 1).decode().upper()
            if base in "ACGT" and pos + 1 not in seen and len(seen) < n:
                seen[pos + 1] = (base, rng.choice([b for b in "ACGT" if b != base]))
    return [(p, *seen[p]) for p in sorted(seen)]


def write_vcf(path: Path, contig: str, length: int, snvs) -> None:
    with open(path, "w") as f:
        f.write(f"##fileformat=VCFv4.2\n##contig=<ID={contig},length={length}>\n"
                "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\n")
        for pos, ref, alt in snvs:
            f.write(f"{contig}\t{pos}\t.\t{ref}\t{alt}\t.\t.\t.\n")


def read_scores(path: Path) -> np.ndarray:
    rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
    return np.array([float(r[5]) if r[5] != "NA" else np.nan for r in rows])


def package_env(tree: Path | None) -> dict:
    """The environment of a subprocess that imports dnamamba from `tree` (None: this checkout)."""
    env = dict(os.environ)
    keep = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env["PYTHONPATH"] = os.pathsep.join([str(tree or ROOT), *keep])
    return env


def run_before(tree: Path, job: dict, cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", BEFORE_DRIVER, json.dumps(job)], env=package_env(tree), cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"--before run failed: {done.stderr.strip().splitlines()[-1:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def cli_wall(tree: Path | None, settings: dict, vcf: Path, out: Path, warm: Path, cwd: Path) -> float:
    """Wall time of `python -m dnamamba.cli score-variants` on vcf, after one warm-up call on `warm`."""
    def call(v: Path, o: Path) -> float:
        args = [f"{k}={v}" for k, v in settings.items()] + [f"vcf={v}", f"out={o}"]
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "dnamamba.cli", "score-variants", *args],
                              env=package_env(tree), cwd=cwd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"score-variants failed: {done.stderr.strip().splitlines()[-1:]}")
        return time.perf_counter() - t

    call(warm, out.with_suffix(".warm.tsv"))
    return call(vcf, out)


def profile_scoring(settings: dict, vcf: Path, out: Path) -> str:
    """torch.profiler table (GPU kernels by total time) of one score_vcf, with its wall and GPU-busy time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        score_vcf(ScoreVariantsConfig(vcf=str(vcf), out=str(out), **settings))
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    head = f"wall {wall * 1e3:.1f} ms, GPU kernels {gpu_us / 1e3:.1f} ms ({100 * gpu_us / 1e6 / wall:.0f}% busy)\n"
    return head + events.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=70)


def forward_tokens_per_s(model: MambaLM, rows: int, length: int, device, precision: str) -> float:
    """Model forward (logits) throughput at one row shape of the scoring calls."""
    tokens = torch.randint(1, 256, (rows, length), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        for _ in range(3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return rows * length / min(times[1:])


def render(path: Path) -> Path:
    """A markdown table beside a result JSON: variants/s per (window, method), and the ratio to `before` in the
    same run."""
    r = json.loads(path.read_text())
    before = {row["window"]: row for row in r["rows"] if row["method"] == "before" and "variants_per_s" in row}
    lines = [f"{r['device']}, {r['n_layer']} x {r['d_model']} model, {r['precision']}, batch {r['batch_size']}, random "
             f"SNVs of {r['fasta']} ({r['contig']}); variants/s of score_vcf in-process, and of the CLI with start-up "
             f"where timed; x before: the same run's package before the engine.", "",
             "| window | method | variants | variants/s | x before | CLI variants/s | CLI x before | peak GB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in r["rows"]:
        b = before.get(row["window"], {})
        ratio = (f"{row['variants_per_s'] / b['variants_per_s']:.2f}"
                 if b and row["method"] != "before" and "variants_per_s" in row else "")
        cli_ratio = (f"{row['cli_variants_per_s'] / b['cli_variants_per_s']:.2f}"
                     if row["method"] != "before" and "cli_variants_per_s" in row and "cli_variants_per_s" in b else "")
        lines.append(f"| {row['window']} | {row['method']} | {row['n_variants']} | {row.get('variants_per_s', row.get('error'))}"
                     f" | {ratio} | {row.get('cli_variants_per_s', '')} | {cli_ratio} | {row.get('peak_gb', '')} |")
    fwd = r.get("forward_tokens_per_s", {})
    if fwd and isinstance(next(iter(fwd.values())), dict):
        lines += ["", "Model forward, tokens/s at the scoring row shapes:", "",
                  "| scan | " + " | ".join(next(iter(fwd.values()))) + " |",
                  "| --- |" + " --- |" * len(next(iter(fwd.values())))]
        lines += [f"| {name} | " + " | ".join(f"{v / 1e6:.2f}M" for v in shapes.values()) + " |"
                  for name, shapes in fwd.items()]
    out = path.with_suffix(".md")
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--render", nargs="+", type=Path, metavar="JSON", help="only write the markdown table of each")
    ap.add_argument("--fasta")
    ap.add_argument("--contig", default=None, help="default: the FASTA's first record")
    ap.add_argument("--n-variants", type=int, default=20000)
    ap.add_argument("--windows", default="1024,32768")
    ap.add_argument("--long-from", type=int, default=8192, help="windows from this size score --long-variants")
    ap.add_argument("--long-variants", type=int, default=2000)
    ap.add_argument("--methods", default="plain,shared,tile")
    ap.add_argument("--long-methods", default=None, help="methods at windows from --long-from (default: --methods)")
    ap.add_argument("--before", type=Path, help="the package before the engine, timed on the same variants")
    ap.add_argument("--cli", default="", help="methods (and 'before') also timed as the CLI in a subprocess, "
                                              "start-up included; comma-separated")
    ap.add_argument("--profile", action="store_true", help="profile method=shared on the first 4096 variants")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/score_variants_h200.json")
    ap.add_argument("--excerpt", metavar="START-END:OUT.fa.gz",
                    help="only write bases [START, END) of the contig to OUT.fa.gz (to copy to the GPU machine)")
    args = ap.parse_args()
    if args.render:
        for path in args.render:
            print(f"wrote {render(path)}")
        return
    if not args.fasta:
        ap.error("--fasta is required")

    work = Path(tempfile.mkdtemp(prefix="bench_score_variants_"))
    os.environ.setdefault("DNAMAMBA_CACHE", str(work / "cache"))
    fasta_path = os.path.abspath(args.fasta)
    fasta = FastaFile(fasta_path)
    contig = args.contig or fasta.names[0]
    if args.excerpt:
        span, out = args.excerpt.split(":", 1)
        lo, hi = (int(x) for x in span.split("-"))
        seq = fasta.fetch(contig, lo, hi).decode()
        with gzip.open(out, "wt") as f:
            f.write(f">{contig}\n" + "\n".join(seq[i:i + 60] for i in range(0, len(seq), 60)) + "\n")
        print(f"wrote {out}: {contig}[{lo}, {hi}) as record {contig}")
        return

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    before = args.before.resolve() if args.before else None
    export = work / "export"
    if before is not None:
        run_before(before, {"action": "export", "seed": args.seed, "d_model": args.d_model, "n_layer": args.n_layer,
                            "out": str(export)}, work)
    else:
        torch.manual_seed(args.seed)
        save_export(MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.n_layer)).eval(), export)
    from dnamamba.model import load_export
    model = load_export(str(export), device)
    snvs = random_snvs(fasta, contig, args.n_variants, args.seed)
    length = fasta.lengths[contig]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "fasta": os.path.basename(args.fasta), "contig": contig,
              "contig_length": length, "n_variants": len(snvs), "batch_size": args.batch_size,
              "precision": args.precision, "d_model": args.d_model, "n_layer": args.n_layer,
              "parameters": model.num_parameters(), "before": str(args.before) if before else None, "rows": []}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    warm = work / "warm.vcf"
    write_vcf(warm, contig, length, snvs[:64])
    profiles = []
    for window in (int(w) for w in args.windows.split(",")):
        long = window >= args.long_from
        chosen = snvs[:args.long_variants] if long else snvs
        methods = (["before"] if before else []) + (args.long_methods or args.methods if long else args.methods).split(",")
        vcf = work / f"snvs_{window}.vcf"
        write_vcf(vcf, contig, length, chosen)
        span_bp = chosen[-1][0] - chosen[0][0] + 1
        scores = {}
        for name in methods:
            base = dict(model=str(export), fasta=fasta_path, window=window, batch_size=args.batch_size,
                        precision=args.precision, device=device.type, progress=False)
            settings = dict(base, **METHODS.get(name, {}))
            row = {"window": window, "method": name, "settings": METHODS.get(name, {}), "n_variants": len(chosen),
                   "span_bp": span_bp, "variants_per_kb": round(1000 * len(chosen) / span_bp, 3)}
            out = work / f"{name}_{window}.tsv"
            try:
                if name == "before":
                    wall = run_before(before, {"action": "score", "settings": base, "warm": str(warm),
                                               "warm_out": str(work / "warm.tsv"), "vcf": str(vcf),
                                               "out": str(out)}, work)["wall_s"]
                else:
                    score_vcf(ScoreVariantsConfig(vcf=str(warm), out=str(work / "warm.tsv"), **settings))
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    t = time.perf_counter()
                    score_vcf(ScoreVariantsConfig(vcf=str(vcf), out=str(out), **settings))
                    wall = time.perf_counter() - t
                    if device.type == "cuda":
                        row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
                scores[name] = read_scores(out)
                row.update(wall_s=round(wall, 3), variants_per_s=round(len(chosen) / wall, 2),
                           scored=int(np.isfinite(scores[name]).sum()))
                if name in args.cli.split(","):
                    torch.cuda.empty_cache()  # the subprocess shares the GPU with this process's cached blocks
                    cli = cli_wall(before if name == "before" else None, settings, vcf, work / f"cli_{name}.tsv",
                                   warm, work)
                    row.update(cli_wall_s=round(cli, 3), cli_variants_per_s=round(len(chosen) / cli, 2))
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                torch.cuda.empty_cache()
            if "plain" in scores and name != "plain" and name in scores:
                a, b = scores["plain"], scores[name]
                row["max_abs_diff_vs_plain"] = float(np.nanmax(np.abs(a - b)))
                row["pearson_r_vs_plain"] = float(np.corrcoef(a, b)[0, 1])
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            out_path.write_text(json.dumps(result, indent=2) + "\n")  # kept after every run
        if "before" in scores and "plain" in scores:
            for row in result["rows"]:
                if row["window"] == window and row["method"] == "before":
                    row["max_abs_diff_vs_plain"] = float(np.nanmax(np.abs(scores["before"] - scores["plain"])))
        if args.profile and device.type == "cuda":
            sub = work / f"profile_{window}.vcf"
            write_vcf(sub, contig, length, chosen[:4096 if window < args.long_from else 256])
            settings = dict(model=str(export), fasta=fasta_path, window=window, batch_size=args.batch_size,
                            precision=args.precision, device=device.type, progress=False, method="shared")
            profiles.append(f"== window {window}, method=shared, {min(len(chosen), 4096 if window < args.long_from else 256)}"
                            f" variants ==\n" + profile_scoring(settings, sub, work / "profile.tsv"))
            out_path.with_name(out_path.stem + "_profile.txt").write_text("\n\n".join(profiles) + "\n")
        half = max(1, window // 2)
        rows = max(1, min(args.batch_size, (1 << 22) // half))
        for name, cfg in SCAN_VARIANTS.items():
            fused_path.SCAN_CONFIG = cfg
            result.setdefault("forward_tokens_per_s", {}).setdefault(name, {})[f"{rows}x{half}"] = \
                round(forward_tokens_per_s(model, rows, half, device, args.precision))
        fused_path.SCAN_CONFIG = SCAN_VARIANTS["one_pass"]
        out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path} and {render(out_path)}")


if __name__ == "__main__":
    main()
