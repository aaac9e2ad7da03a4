"""Variant-scoring throughput: `score-variants` end to end (score_vcf, as the CLI runs it) with every
REF/ALT window read whole (method=plain) against the shared-context reading (method=shared), and the
tile-context score (context=tile, a different score), all in one process on the same variants.

    # GPU machine, from the repository root; FASTA copied there (the machine has no data folder)
    PYTHONPATH=. python3 bench/score_variants.py --fasta hs37_chr20.fa.gz --contig 20 \\
        --out bench/results/score_variants_h200.json

    # CPU, tiny sizes (a check that it runs)
    python bench/score_variants.py --fasta data/hs37_chr20.fa.gz --contig 20 --device cpu \\
        --precision fp32 --d-model 32 --n-layer 2 --n-variants 300 --windows 64,512 --long-variants 100 \\
        --batch-size 32 --out /tmp/score_variants_cpu.json

The model is random-init (the throughput configuration of docs/architecture.md, 8 layers at d_model 256 by default):
speed does not depend on the weights. The variants are random SNVs at non-N positions of one contig
(ALT a random other base), sorted. Windows of `--long-from` bases or more score only the first
`--long-variants` of them (a stretch of the contig, so the density of variants, which context=tile
profits from, stays that of the whole set).

Each (window, method) is first run once on 64 variants (kernel compilation, caches), then timed on
the full set: wall time of score_vcf, which includes loading the export, reading the VCF twice and
writing the TSV, as the CLI does, but not Python start-up. Scores of method=shared are compared to
method=plain on the same variants (max |difference|): in bf16 the two batch the model's matmuls
differently, so they agree to bf16 rounding, not bit for bit.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dnamamba.data.fasta import FastaFile
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf
from dnamamba.model import MambaConfig, MambaLM, save_export

# Before this change (per-record prefix sharing with a device sync per batch), as measured on the H200 with
# the same settings: `dnamamba score-variants` wall time, 8x256 random-init model, bf16, batch 256, 20,000
# random chr20 SNVs; variants/s by window. Quoted in the JSON for comparison, not measured by this script.
BEFORE_CLI_VARIANTS_PER_S = {1024: 879, 32768: 45}

METHODS = {  # name -> ScoreVariantsConfig overrides
    "plain": {"method": "plain"},
    "shared": {"method": "shared"},
    "tile": {"method": "shared", "context": "tile"},
}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fasta", required=True)
    ap.add_argument("--contig", default=None, help="default: the FASTA's first record")
    ap.add_argument("--n-variants", type=int, default=20000)
    ap.add_argument("--windows", default="1024,32768")
    ap.add_argument("--long-from", type=int, default=8192, help="windows from this size score --long-variants")
    ap.add_argument("--long-variants", type=int, default=2000)
    ap.add_argument("--methods", default="plain,shared,tile")
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

    work = Path(tempfile.mkdtemp(prefix="bench_score_variants_"))
    os.environ.setdefault("DNAMAMBA_CACHE", str(work / "cache"))
    fasta = FastaFile(args.fasta)
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
    torch.manual_seed(args.seed)
    model = MambaLM(MambaConfig(d_model=args.d_model, n_layer=args.n_layer)).eval()
    export = save_export(model, work / "export")
    model = model.to(device)
    snvs = random_snvs(fasta, contig, args.n_variants, args.seed)
    length = fasta.lengths[contig]
    result = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "fasta": os.path.basename(args.fasta), "contig": contig,
              "contig_length": length, "n_variants": len(snvs), "batch_size": args.batch_size,
              "precision": args.precision, "d_model": args.d_model, "n_layer": args.n_layer,
              "parameters": model.num_parameters(), "before_cli_variants_per_s": BEFORE_CLI_VARIANTS_PER_S,
              "rows": []}
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    warm = work / "warm.vcf"
    write_vcf(warm, contig, length, snvs[:64])
    for window in (int(w) for w in args.windows.split(",")):
        chosen = snvs[:args.long_variants] if window >= args.long_from else snvs
        vcf = work / f"snvs_{window}.vcf"
        write_vcf(vcf, contig, length, chosen)
        span_bp = chosen[-1][0] - chosen[0][0] + 1
        scores = {}
        for name in args.methods.split(","):
            settings = dict(model=export, fasta=args.fasta, window=window, batch_size=args.batch_size,
                            precision=args.precision, device=device.type, progress=False, **METHODS[name])
            row = {"window": window, "method": name, "settings": METHODS[name], "n_variants": len(chosen),
                   "span_bp": span_bp, "variants_per_kb": round(1000 * len(chosen) / span_bp, 3)}
            try:
                score_vcf(ScoreVariantsConfig(vcf=str(warm), out=str(work / "warm.tsv"), **settings))
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                out = work / f"{name}_{window}.tsv"
                t = time.perf_counter()
                summary = score_vcf(ScoreVariantsConfig(vcf=str(vcf), out=str(out), **settings))
                wall = time.perf_counter() - t
                scores[name] = read_scores(out)
                row.update(wall_s=round(wall, 3), variants_per_s=round(len(chosen) / wall, 2),
                           scored=summary["scored"])
                if device.type == "cuda":
                    row["peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
            except torch.cuda.OutOfMemoryError as e:
                row["error"] = f"out of memory: {str(e).splitlines()[0]}"
                torch.cuda.empty_cache()
            if "plain" in scores and name != "plain" and name in scores:
                a, b = scores["plain"], scores[name]
                # For "tile" this compares two different scores: only the correlation means something.
                row["max_abs_diff_vs_plain"] = float(np.nanmax(np.abs(a - b)))
                row["pearson_r_vs_plain"] = float(np.corrcoef(a, b)[0, 1])
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            out_path.write_text(json.dumps(result, indent=2) + "\n")  # kept after every run
        half = max(1, window // 2)
        rows = max(1, min(args.batch_size, (1 << 22) // half))
        result.setdefault("forward_tokens_per_s", {})[f"{rows}x{half}"] = \
            round(forward_tokens_per_s(model, rows, half, device, args.precision))
        out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
