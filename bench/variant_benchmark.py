"""The variant benchmark: zero-shot and supervised numbers for a model and for the Markov baseline.

    python bench/variant_benchmark.py --export runs/vb/pretrain/export --bench runs/vb/bench --work runs/vb \
        --device cuda --out bench/results/variant_benchmark_h200.json
    python bench/variant_benchmark.py --cpu-smoke      # tiny model trained briefly here; numbers mean nothing

On the benchmark built from the Klebsiella K-locus GenBank file (dnamamba build-variant-benchmark), it
reports, on the test loci only:
- zero-shot AUROC of -LLR (a lower score, a more damaging change) for synonymous vs nonsense, synonymous vs
  missense and synonymous vs stop_lost, for the model and for an order-k Markov model fitted on the
  training loci (`train.fa`), both through score-variants;
- supervised macro AUROC (one-vs-rest over the classes) of `dnamamba finetune task=variant_classification`
  with a frozen and with a fine-tuned backbone, and of a multinomial logistic regression on Markov
  features (the per-position log-likelihood changes the variant makes on both strands, REF and ALT);
- coding against non-coding accuracy on the test windows of `intervals.tsv`: `task=sequence_classification`
  with the frozen backbone, and a Markov baseline (one model fitted on the coding and one on the
  non-coding training windows; a window goes to the model that gives it the higher likelihood).

Without --export it pretrains a tiny model on the training loci on the CPU first (--cpu-smoke sets every
size small enough for a 2-core machine).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np
import pysam
import torch
from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

from dnamamba.data.fasta import FastaFile
from dnamamba.data.variant_benchmark import BuildVariantBenchmarkConfig, build_variant_benchmark
from dnamamba.inference.markov import FitMarkovConfig, MarkovLM, fit_markov, load_scorer
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf
from dnamamba.pipelines import finetune, pretrain


GBK = os.path.join(os.environ.get("DNAMAMBA_DATA_DIR", "data"), "klebsiella_k_locus.gbk.gz")
ZERO_SHOT_PAIRS = (("synonymous", "nonsense"), ("synonymous", "missense"), ("synonymous", "stop_lost"))


def compose(name: str, overrides: list[str]):
    """The packaged conf/<name>.yaml with overrides, as the dnamamba command composes it."""
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="dnamamba.conf", version_base="1.3"):
        return hydra_compose(config_name=name, overrides=overrides)


def read_tsv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def test_vcf(bench: str, out: str, max_sites: int | None, seed: int) -> str:
    """The benchmark VCF's test-split sites (a seeded sample of at most max_sites)."""
    with pysam.VariantFile(os.path.join(bench, "variants.vcf.gz")) as src:
        sites = [rec for rec in src if rec.info["SPLIT"] == "test"]
        if max_sites is not None and len(sites) > max_sites:
            keep = np.sort(np.random.default_rng(seed).choice(len(sites), size=max_sites, replace=False))
            sites = [sites[i] for i in keep]
        with pysam.VariantFile(out, "w", header=src.header) as dst:
            for rec in sites:
                dst.write(rec)
    return out


def zero_shot(model: str, bench: str, vcf: str, out: str, window: int, device: str) -> dict:
    score_vcf(ScoreVariantsConfig(model=model, fasta=os.path.join(bench, "records.fa"), vcf=vcf, out=out,
                                  window=window, device=device, progress=False))
    labels = {(r["chrom"], r["pos"], r["alt"]): r["label"] for r in read_tsv(os.path.join(bench, "labels.tsv"))}
    scores: dict[str, list[float]] = {}
    for row in read_tsv(out):
        if row["status"] == "ok":
            scores.setdefault(labels[(row["chrom"], row["pos"], row["alt"])], []).append(float(row["score"]))
    result = {"n": {k: len(v) for k, v in scores.items()}}
    for neg, pos in ZERO_SHOT_PAIRS:
        if scores.get(neg) and scores.get(pos):
            s = torch.tensor(scores[neg] + scores[pos], dtype=torch.float64)
            y = torch.tensor([0] * len(scores[neg]) + [1] * len(scores[pos]))
            result[f"auroc_{neg}_vs_{pos}"] = float(binary_auroc(-s, y))
    return result


def finetune_run(backbone: str, bench: str, run_dir: str, task: str, args, *overrides: str) -> dict:
    table = "labels.tsv" if task == "variant_classification" else "intervals.tsv"
    cfg = compose("finetune", [f"backbone={backbone}", f"task={task}", f"run_dir={run_dir}",
                               f"task.data.fasta={os.path.join(bench, 'records.fa')}",
                               f"task.data.table={os.path.join(bench, table)}",
                               f"trainer.max_epochs={args.epochs}", f"task.data.batch_size={args.batch_size}",
                               f"trainer.enable_progress_bar={str(args.progress).lower()}",
                               *(["trainer=gpu"] if args.device == "cuda" else []),
                               *([f"task.data.max_per_split={args.max_per_split}"] if args.max_per_split else []),
                               *overrides])
    metrics = finetune.run(cfg)
    return {"test": metrics["test"], "best_val": metrics["val"], "epochs": len(metrics["val_history"]),
            "data": metrics["data"]}


def markov_features(model: MarkovLM, fasta: FastaFile, rows: list[dict]) -> np.ndarray:
    """Per variant: the change in log P of each of the k+1 positions from the variant on, on both strands,
    their sums, and one-hot REF and ALT. (n, 2(k+1) + 2 + 8) float32."""
    k = model.k
    feats = []
    comp = bytes.maketrans(b"ACGTN", b"TGCAN")
    for b in range(0, len(rows), 512):
        chunk = rows[b:b + 512]
        ref_w, alt_w = [], []
        for r in chunk:
            pos, n = int(r["pos"]) - 1, fasta.length(r["chrom"])
            lo, hi = max(0, pos - k), min(n, pos + k + 1)
            ctx = fasta.fetch(r["chrom"], lo, hi)
            pad_l, pad_r = b"N" * (k - (pos - lo)), b"N" * (k + 1 - (hi - pos))
            ref = pad_l + ctx + pad_r  # 2k+1 bases, the variant in the middle
            alt = ref[:k] + r["alt"].encode() + ref[k + 1:]
            ref_w += [ref, ref.translate(comp)[::-1]]
            alt_w += [alt, alt.translate(comp)[::-1]]
        with torch.no_grad():
            lp = []
            for windows in (ref_w, alt_w):
                tokens = torch.tensor([list(w) for w in windows])  # (2n, 2k+1)
                logp = torch.log_softmax(model(tokens).double(), -1)[:, :-1]  # predicts tokens[:, 1:]
                lp.append(logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)[:, k - 1:])  # positions k..2k
            delta = (lp[1] - lp[0]).reshape(len(chunk), 2, k + 1)  # (n, strand, k+1)
        onehot = np.zeros((len(chunk), 8), dtype=np.float32)
        for i, r in enumerate(chunk):
            onehot[i, "ACGT".index(r["ref"])] = 1
            onehot[i, 4 + "ACGT".index(r["alt"])] = 1
        feats.append(np.concatenate([delta.reshape(len(chunk), -1).numpy(), delta.sum(-1).numpy(), onehot], 1))
    return np.concatenate(feats).astype(np.float32)


def logistic_regression(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-3):
    """A multinomial logistic regression on standardised features: (the fitted layer, mean, std)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y)
    weight = torch.bincount(yt, minlength=n_classes).clamp(min=1).float()
    weight = weight.sum() / (n_classes * weight)  # balanced, as the finetune default
    lin = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(xt), yt, weight=weight) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lin, mean, std


def markov_classifier(markov: str, bench: str, max_per_split: int | None, seed: int) -> dict:
    model = load_scorer(markov)
    rows = read_tsv(os.path.join(bench, "labels.tsv"))
    classes = sorted({r["label"] for r in rows})
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
    if max_per_split:
        rng = np.random.default_rng(seed)
        by_split = {s: [v[i] for i in np.sort(rng.choice(len(v), size=min(len(v), max_per_split), replace=False))]
                    for s, v in by_split.items()}
    with FastaFile(os.path.join(bench, "records.fa")) as fasta:
        x = {s: markov_features(model, fasta, v) for s, v in by_split.items()}
    y = {s: np.array([classes.index(r["label"]) for r in v]) for s, v in by_split.items()}
    lin, mean, std = logistic_regression(x["train"], y["train"], len(classes))
    with torch.no_grad():
        probs = lin(torch.from_numpy((x["test"] - mean) / std)).softmax(-1)
    target = torch.from_numpy(y["test"])
    per_class = multiclass_auroc(probs, target, len(classes), average=None)
    present = torch.bincount(target, minlength=len(classes)) > 0
    out = {f"auroc_{c}": float(per_class[i]) for i, c in enumerate(classes) if present[i]}
    out["auroc_macro"] = float(per_class[present].mean())
    out["n_train"], out["n_test"] = len(y["train"]), len(y["test"])
    return out


def markov_coding(bench: str, k: int) -> dict:
    """Two Markov models (coding and non-coding training windows); test windows go to the likelier one."""
    rows = read_tsv(os.path.join(bench, "intervals.tsv"))
    with FastaFile(os.path.join(bench, "records.fa")) as fasta:
        seqs = [(fasta.fetch(r["chrom"], int(r["start"]), int(r["end"])), r["label"], r["split"]) for r in rows]
    models = {label: MarkovLM.fit([s for s, lab, sp in seqs if lab == label and sp == "train"], k=k)
              for label in ("coding", "noncoding")}
    test = [(s, lab) for s, lab, sp in seqs if sp == "test"]
    tokens = torch.tensor([list(s) for s, _ in test])  # equal lengths
    with torch.no_grad():
        ll = {}
        for label, m in models.items():
            logp = torch.log_softmax(m(tokens).double(), -1)[:, :-1]
            ll[label] = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1).sum(-1)
    predicted = np.where((ll["coding"] > ll["noncoding"]).numpy(), "coding", "noncoding")
    return {"accuracy": float(np.mean(predicted == np.array([lab for _, lab in test]))), "n_test": len(test), "k": k}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gbk", default=GBK)
    p.add_argument("--bench", help="a benchmark folder built before (default: build one into WORK/bench)")
    p.add_argument("--work", default="runs/variant_benchmark")
    p.add_argument("--export", help="pretrained export; without it a tiny model is pretrained on train.fa here")
    p.add_argument("--out", default="bench/results/variant_benchmark.json")
    p.add_argument("--label", default="", help="what this run is, written into the JSON")
    p.add_argument("--positions-per-cds", type=int, default=10)
    p.add_argument("--window", type=int, default=1024, help="score-variants and classifier window")
    p.add_argument("--markov-k", type=int, default=6)
    p.add_argument("--coding-markov-k", type=int, default=4, help="the two coding / non-coding Markov models")
    p.add_argument("--max-test-sites", type=int, default=None, help="zero-shot on a sample of the test sites")
    p.add_argument("--max-per-split", type=int, default=None, help="supervised rows per split (seeded sample)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=200, help="without --export")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true", help="every size small: a CPU check that it all runs")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.positions_per_cds, args.window, args.max_test_sites = "cpu", 2, 64, 150
        args.max_per_split, args.epochs, args.pretrain_steps, args.markov_k = 160, 2, 40, 4
        args.coding_markov_k = 3
        args.label = args.label or ("CPU smoke run: a tiny random-init model pretrained for a few steps on 2 CPU "
                                    "cores, small samples; checks that the pipeline runs end to end, says nothing "
                                    "about the method")
        if args.out == p.get_default("out"):
            args.out = "bench/results/variant_benchmark_cpu_smoke.json"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    work = os.path.abspath(args.work)
    bench = os.path.abspath(args.bench) if args.bench else os.path.join(work, "bench")
    if not args.bench:
        build_variant_benchmark(BuildVariantBenchmarkConfig(gbk=args.gbk, out=bench, seed=args.seed,
                                                            positions_per_cds=args.positions_per_cds))
    summary = json.load(open(os.path.join(bench, "summary.json")))
    export = args.export
    pretrained = None
    if export is None:
        pre = pretrain.run(compose("pretrain", [
            f"data.fasta={os.path.join(bench, 'train.fa')}", "model=tiny", "data.seq_len=256",
            f"trainer.max_steps={args.pretrain_steps}", "trainer.enable_progress_bar=false",
            f"run_dir={os.path.join(work, 'pretrain')}", *(["trainer=gpu"] if args.device == "cuda" else [])]))
        export = pre["export_dir"]
        pretrained = {"steps": pre["global_step"], "val_bits_per_base": pre["val_bits_per_base"],
                      "parameters": pre["parameters"]}
    export = os.path.abspath(export)
    markov = os.path.join(work, f"markov_k{args.markov_k}")
    fit_markov(FitMarkovConfig(fasta=os.path.join(bench, "train.fa"), out=markov, k=args.markov_k))

    vcf = test_vcf(bench, os.path.join(work, "test_sites.vcf"), args.max_test_sites, args.seed)
    results = {"label": args.label, "argv": sys.argv[1:] if argv is None else list(argv), "device": args.device,
               "export": export, "pretrained_here": pretrained, "window": args.window,
               "benchmark": {k: summary[k] for k in ("records", "cds", "records_per_split", "variants", "labels")}}
    results["zero_shot"] = {
        "model": zero_shot(export, bench, vcf, os.path.join(work, "scores_model.tsv"), args.window, args.device),
        f"markov_k{args.markov_k}": zero_shot(markov, bench, vcf, os.path.join(work, "scores_markov.tsv"),
                                              args.window, args.device),
    }
    window = [f"task.data.window={args.window}"]
    results["supervised"] = {
        "frozen": finetune_run(export, bench, os.path.join(work, "vc_frozen"), "variant_classification", args, *window),
        "finetuned": finetune_run(export, bench, os.path.join(work, "vc_finetuned"), "variant_classification", args,
                                  *window, "task.module.freeze_backbone=false"),
        f"markov_k{args.markov_k}_features": markov_classifier(markov, bench, args.max_per_split, args.seed),
    }
    coding = finetune_run(export, bench, os.path.join(work, "coding"), "sequence_classification", args)
    results["coding_vs_noncoding"] = {"model_frozen": {"accuracy": coding["test"]["accuracy"],
                                                       "auroc": coding["test"]["auroc_macro"]},
                                      "markov": markov_coding(bench, args.coding_markov_k)}
    results["wall_time_s"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps({k: results[k] for k in ("zero_shot", "supervised", "coding_vs_noncoding")}, indent=2))
    return results


if __name__ == "__main__":
    main()
