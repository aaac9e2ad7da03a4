"""The variant benchmark: zero-shot and supervised numbers for a model and for the Markov baseline.

    python bench/variant_benchmark.py --export runs/vb/pretrain/export --bench runs/vb/bench --work runs/vb \
        --device cuda --out bench/results/variant_benchmark_h200.json
    python bench/variant_benchmark.py --cpu-smoke      # tiny model trained briefly here; numbers mean nothing

On the benchmark built from the Klebsiella K-locus GenBank file (dnamamba build-variant-benchmark), it
reports, on the test loci only:
- zero-shot AUROC of -LLR (a lower score, a more damaging change) for synonymous vs nonsense, synonymous vs
  missense and synonymous vs stop_lost, for the model (with --rc-average also averaged over both strands) and
  for order-k Markov models fitted on the training loci (`train.fa`), all through score-variants; beside each,
  the same with the stop-to-stop changes left out of the synonymous class (`sense_codons`);
- supervised macro AUROC (one-vs-rest over the classes) of `dnamamba finetune task=variant_classification`
  with a frozen and with a fine-tuned backbone, and of a multinomial logistic regression on Markov
  features (the per-position log-likelihood changes the variant makes on both strands, REF and ALT), all
  three trained and tested on the same rows (`WORK/supervised.tsv`, a seeded sample of labels.tsv);
- coding against non-coding accuracy on the test windows of `intervals.tsv`: `task=sequence_classification`
  with the frozen backbone, and a Markov baseline (one model fitted on the coding and one on the
  non-coding training windows; a window goes to the model that gives it the higher likelihood).

The results go to the JSON of --out, and the tables of the report to the same path with .md.
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
from dnamamba.data.variant_benchmark import SPLITS, BuildVariantBenchmarkConfig, build_variant_benchmark
from dnamamba.inference.markov import FitMarkovConfig, MarkovLM, fit_markov, load_scorer
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf
from dnamamba.io import atomic_path
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


def auroc(negatives, positives) -> float:
    """Binary AUROC of scores where positives should score higher.

    torchmetrics reads scores outside [0, 1] as logits and applies a sigmoid, which rounds every score
    above about 17 (float32) or 37 (float64) to 1.0, so the most extreme scores would tie. Dense ranks
    scaled into [0, 1] keep the order and the ties exactly.
    """
    s = torch.tensor([*negatives, *positives], dtype=torch.float64)
    ranks = torch.unique(s, return_inverse=True)[1].double()  # (n,) 0 for the lowest score
    y = torch.tensor([0] * len(negatives) + [1] * len(positives))
    return float(binary_auroc(ranks / max(1.0, float(ranks.max())), y))


def pair_aurocs(items: list[tuple[dict, float]]) -> dict:
    """AUROCs per class pair of (labels.tsv row, damage score) items, a higher score a more damaging change.

    Beside the plain AUROC: `sense_codons` leaves out the synonymous changes of stop codons (stop to stop),
    which the benchmark labels synonymous but samples at every stop-codon position; `within_substitution`
    compares only variants of the same REF>ALT change (the pair-weighted mean of the AUROCs within each of
    the 12 types). The classes differ in their mix of changes (synonymous ones are mostly transitions at third
    codon positions, stop-gaining ones mostly to A or T), so a score that only prefers some bases to others
    is already away from 0.5 overall, but not within a type.
    """
    def by_label(keep=lambda row: True):
        out: dict[str, list[float]] = {}
        for row, score in items:
            if keep(row):
                out.setdefault(row["label"], []).append(score)
        return out

    every, sense = by_label(), by_label(lambda row: row["ref_aa"] != "*")
    result = {"n": {k: len(v) for k, v in every.items()}}
    for neg, pos in ZERO_SHOT_PAIRS:
        if every.get(neg) and every.get(pos):
            result[f"auroc_{neg}_vs_{pos}"] = auroc(every[neg], every[pos])
    result["sense_codons"] = {"n_synonymous": len(sense.get("synonymous", []))}
    result["within_substitution"] = {}
    types = sorted({(row["ref"], row["alt"]) for row, _ in items})
    for neg, pos in ZERO_SHOT_PAIRS[:2]:
        if sense.get(neg) and sense.get(pos):
            result["sense_codons"][f"auroc_{neg}_vs_{pos}"] = auroc(sense[neg], sense[pos])
        total = weight = 0.0
        for t in types:
            of_type = by_label(lambda row: (row["ref"], row["alt"]) == t)
            if of_type.get(neg) and of_type.get(pos):
                w = len(of_type[neg]) * len(of_type[pos])
                total, weight = total + w * auroc(of_type[neg], of_type[pos]), weight + w
        if weight:
            result["within_substitution"][f"auroc_{neg}_vs_{pos}"] = total / weight
    return result


def zero_shot(model: str, bench: str, vcf: str, out: str, window: int, device: str, rc_average: bool = False,
              score: bool = True) -> dict:
    """score-variants on the test sites (without `score`: its table `out` from an earlier run), then
    `pair_aurocs` of -LLR."""
    if score:
        score_vcf(ScoreVariantsConfig(model=model, fasta=os.path.join(bench, "records.fa"), vcf=vcf, out=out,
                                      window=window, device=device, rc_average=rc_average, progress=False))
    labels = {(r["chrom"], r["pos"], r["alt"]): r for r in read_tsv(os.path.join(bench, "labels.tsv"))}
    items = [(labels[(row["chrom"], row["pos"], row["alt"])], -float(row["score"]))
             for row in read_tsv(out) if row["status"] == "ok"]
    return {**pair_aurocs(items), "window": window, "rc_average": rc_average}


def substitution_only(bench: str, vcf: str) -> dict:
    """`pair_aurocs` on the test sites of `vcf` for a score that knows only the REF>ALT change: the damaging
    class's share among the training-split variants of that change (add-one). It is fitted on labels, so it is
    a reference point for the zero-shot scores, not one of them."""
    rows = read_tsv(os.path.join(bench, "labels.tsv"))
    counts: dict[tuple, dict[str, int]] = {}
    for r in rows:
        if r["split"] == "train":
            c = counts.setdefault((r["ref"], r["alt"]), {})
            c[r["label"]] = c.get(r["label"], 0) + 1
    labels = {(r["chrom"], r["pos"], r["alt"]): r for r in rows}
    result = {}
    with pysam.VariantFile(vcf) as sites:
        keys = [(rec.chrom, str(rec.pos), alt) for rec in sites for alt in rec.alts]
    for neg, pos in ZERO_SHOT_PAIRS:
        items = []
        for key in keys:
            row = labels[key]
            c = counts.get((row["ref"], row["alt"]), {})
            items.append((row, (c.get(pos, 0) + 1) / (c.get(pos, 0) + c.get(neg, 0) + 2)))
        pairs = pair_aurocs(items)
        result[f"auroc_{neg}_vs_{pos}"] = pairs.get(f"auroc_{neg}_vs_{pos}")
        if (neg, pos) in ZERO_SHOT_PAIRS[:2]:
            for part in ("sense_codons", "within_substitution"):
                result.setdefault(part, {})[f"auroc_{neg}_vs_{pos}"] = pairs[part].get(f"auroc_{neg}_vs_{pos}")
        result["n"] = pairs["n"]
    return result


def supervised_table(bench: str, out: str, caps: dict[str, int | None], seed: int) -> str:
    """labels.tsv with at most caps[split] rows of each split (a seeded sample, file order kept): the one
    table that the finetune runs and the Markov-feature classifier all train and test on."""
    rows = read_tsv(os.path.join(bench, "labels.tsv"))
    keep = []
    for i, split in enumerate(SPLITS):
        idx = [j for j, r in enumerate(rows) if r["split"] == split]
        cap = caps.get(split)
        if cap is not None and len(idx) > cap:
            idx = [idx[j] for j in np.random.default_rng([seed, i]).choice(len(idx), size=cap, replace=False)]
        keep += idx
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows[j] for j in sorted(keep))
    return out


def finetune_run(backbone: str, bench: str, table: str, run_dir: str, task: str, args, *overrides: str) -> dict:
    if args.report_only:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics = json.load(f)
    else:
        metrics = finetune.run(compose("finetune", [
            f"backbone={backbone}", f"task={task}", f"run_dir={run_dir}",
            f"task.data.fasta={os.path.join(bench, 'records.fa')}", f"task.data.table={table}",
            f"trainer.max_epochs={args.epochs}", f"task.data.batch_size={args.batch_size}",
            f"early_stopping.patience={args.patience}", f"trainer.enable_progress_bar={str(args.progress).lower()}",
            *(["trainer=gpu"] if args.device == "cuda" else []),
            *([f"trainer.max_time={args.finetune_max_time}"] if args.finetune_max_time else []),
            *overrides]))
    return {"test": metrics["test"], "best_val": metrics["val"], "epochs": len(metrics["val_history"]),
            "data": metrics["data"], "wall_time_s": metrics.get("wall_time_s")}


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


def markov_classifier(markov: str, bench: str, table: str) -> dict:
    """A logistic regression on Markov features, fitted on the train rows of `table`, tested on its test rows."""
    model = load_scorer(markov)
    rows = read_tsv(table)
    classes = sorted({r["label"] for r in rows})
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "test")}
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
    out["n_train"], out["n_test"], out["k"] = len(y["train"]), len(y["test"]), model.k
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


TARGETS = {"auroc_synonymous_vs_nonsense": 0.80, "auroc_synonymous_vs_missense": 0.65, "auroc_macro": 0.90}


def _cell(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    """The report's tables: zero-shot, supervised and coding/non-coding, with their targets."""
    lines = ["# Variant benchmark: test loci", ""]
    if results["label"]:
        lines += [results["label"], ""]
    b = results["benchmark"]
    lines.append(f"Benchmark: {b['records']} records ({', '.join(f'{s} {n}' for s, n in b['records_per_split'].items())}),"
                 f" {b['cds']} CDS; test variants: "
                 f"{', '.join(f'{c} {n}' for c, n in b['labels']['test'].items())}.")
    pre = results.get("pretraining")
    if pre:
        lines.append(f"Model: {pre.get('parameters', 0):,} parameters, {pre.get('global_step')} steps, "
                     f"{pre.get('tokens', 0):,} tokens at L={pre.get('seq_len')}, validation "
                     f"{_cell(pre.get('val_bits_per_base'))} bits/base.")
    pairs = [f"auroc_{n}_vs_{p}" for n, p in ZERO_SHOT_PAIRS]
    scorers = dict(results["zero_shot"])
    if results.get("substitution_type_only"):
        scorers["reference: REF>ALT type only, fitted on train labels"] = results["substitution_type_only"]
    lines += ["", f"Zero-shot AUROC of -LLR (window {results['window']}; the damaging class positive):", "",
              "| scorer | syn vs nonsense | syn vs missense | syn vs stop_lost |", "| --- | --- | --- | --- |"]
    for name, z in scorers.items():
        lines.append(f"| {name} | " + " | ".join(_cell(z.get(k)) for k in pairs) + " |")
    lines.append(f"| target | ≥ {TARGETS[pairs[0]]:.2f} | ≥ {TARGETS[pairs[1]]:.2f} | |")
    lines += ["", "The same, controlled: sense codons leaves the stop-to-stop changes out of synonymous; within "
                  "REF>ALT compares only variants of the same base change (pair-weighted mean over the 12 types):", "",
              "| scorer | sense codons: syn vs nonsense | sense codons: syn vs missense | within REF>ALT: syn vs "
              "nonsense | within REF>ALT: syn vs missense |", "| --- | --- | --- | --- | --- |"]
    for name, z in scorers.items():
        cells = [_cell(z["sense_codons"].get(k)) for k in pairs[:2]]
        cells += [_cell(z["within_substitution"].get(k)) for k in pairs[:2]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sup = results["supervised"]
    classes = sorted({k[len("auroc_"):] for v in sup.values() for k in (v.get("test", v))
                      if k.startswith("auroc_") and k != "auroc_macro"})
    n_test = next((v["n_test"] for v in sup.values() if "n_test" in v), None)
    lines += ["", "Supervised AUROC on the test rows (one-vs-rest; macro = mean over the classes)"
                  + (f", {n_test} rows" if n_test else "") + ":", "",
              "| classifier | macro | " + " | ".join(classes) + " |", "|---" * (len(classes) + 2) + "|"]
    for name, v in sup.items():
        m = v.get("test", v)
        lines.append(f"| {name} | {_cell(m.get('auroc_macro'))} | "
                     + " | ".join(_cell(m.get(f"auroc_{c}")) for c in classes) + " |")
    lines.append(f"| target | ≥ {TARGETS['auroc_macro']:.2f} |" + " |" * len(classes))
    coding = results["coding_vs_noncoding"]
    lines += ["", f"Coding against non-coding windows ({coding['markov']['n_test']} test windows, half each):", "",
              "| method | accuracy | macro AUROC |", "| --- | --- | --- |",
              f"| frozen backbone + head | {_cell(coding['model_frozen']['accuracy'])} | "
              f"{_cell(coding['model_frozen'].get('auroc'))} |",
              f"| Markov k={coding['markov']['k']}: coding vs non-coding likelihood | "
              f"{_cell(coding['markov']['accuracy'])} | – |", ""]
    return "\n".join(lines)


def write_results(results: dict, out: str) -> str:
    """The JSON at `out` and its tables at the same path with .md; both written atomically."""
    with atomic_path(out) as tmp, open(tmp, "w") as f:
        json.dump(results, f, indent=2)
    md = os.path.splitext(out)[0] + ".md"
    with atomic_path(md) as tmp, open(tmp, "w") as f:
        f.write(markdown(results))
    return md


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gbk", default=GBK)
    p.add_argument("--bench", help="a benchmark folder built before (default: build one into WORK/bench)")
    p.add_argument("--work", default="runs/variant_benchmark")
    p.add_argument("--export", help="pretrained export; without it a tiny model is pretrained on train.fa here")
    p.add_argument("--out", default="bench/results/variant_benchmark.json", help="JSON; the tables go beside it (.md)")
    p.add_argument("--label", default="", help="what this run is, written into the JSON")
    p.add_argument("--positions-per-cds", type=int, default=10)
    p.add_argument("--window", type=int, default=1024, help="score-variants window (zero-shot)")
    p.add_argument("--rc-average", action="store_true", help="also score the model averaged over both strands")
    p.add_argument("--classifier-window", type=int, default=256, help="finetune task=variant_classification window")
    p.add_argument("--markov-k", type=int, nargs="+", default=[6],
                   help="orders of the zero-shot Markov baselines; the first also gives the supervised features")
    p.add_argument("--coding-markov-k", type=int, default=4, help="the two coding / non-coding Markov models")
    p.add_argument("--max-test-sites", type=int, default=None, help="zero-shot on a sample of the test sites")
    p.add_argument("--max-train-rows", type=int, default=None, help="supervised train rows (seeded sample)")
    p.add_argument("--max-val-rows", type=int, default=None, help="supervised val rows (seeded sample)")
    p.add_argument("--max-test-rows", type=int, default=None, help="supervised test rows (seeded sample)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--patience", type=int, default=3, help="early stopping: validations without improvement")
    p.add_argument("--finetune-max-time", default=None, help="DD:HH:MM:SS bound on each finetune run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--pretrain-steps", type=int, default=200, help="without --export")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--cpu-smoke", action="store_true", help="every size small: a CPU check that it all runs")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild the report from the files a finished run left in --work (score tables, "
                        "supervised.tsv, test_sites.vcf, each finetune run's metrics.json) with that run's "
                        "arguments; only the Markov models are fitted again (deterministic, on the CPU)")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.device, args.positions_per_cds, args.window, args.max_test_sites = "cpu", 2, 64, 150
        args.max_train_rows = args.max_val_rows = args.max_test_rows = 160
        args.epochs, args.pretrain_steps = 2, 40
        args.markov_k, args.coding_markov_k, args.classifier_window = [4], 3, 64
        args.label = args.label or ("CPU smoke run: a tiny random-init model pretrained for a few steps on 2 CPU "
                                    "cores, small samples; checks that the pipeline runs end to end, says nothing "
                                    "about the method")
        if args.out == p.get_default("out"):
            args.out = "bench/results/variant_benchmark_cpu_smoke.json"
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    timings = {}
    work = os.path.abspath(args.work)
    bench = os.path.abspath(args.bench) if args.bench else os.path.join(work, "bench")
    if not args.bench:
        build_variant_benchmark(BuildVariantBenchmarkConfig(gbk=args.gbk, out=bench, seed=args.seed,
                                                            positions_per_cds=args.positions_per_cds))
    with open(os.path.join(bench, "summary.json")) as f:
        summary = json.load(f)
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
    pretraining = None
    if os.path.isfile(os.path.join(export, "metrics.json")):
        with open(os.path.join(export, "metrics.json")) as f:
            pretraining = {k: v for k, v in json.load(f).items()
                           if k in ("val_bits_per_base", "val_history", "global_step", "tokens", "parameters",
                                    "seq_len", "fasta", "wall_time_s")}
    markovs = {}
    for k in args.markov_k:
        markovs[k] = os.path.join(work, f"markov_k{k}")
        fit_markov(FitMarkovConfig(fasta=os.path.join(bench, "train.fa"), out=markovs[k], k=k))

    vcf = os.path.join(work, "test_sites.vcf")
    if not args.report_only:
        test_vcf(bench, vcf, args.max_test_sites, args.seed)
    results = {"label": args.label, "argv": sys.argv[1:] if argv is None else list(argv), "device": args.device,
               "export": export, "pretrained_here": pretrained, "pretraining": pretraining, "window": args.window,
               "classifier_window": args.classifier_window,
               "benchmark": {k: summary[k] for k in ("records", "cds", "records_per_split", "variants", "labels")}}
    t = time.time()
    score = not args.report_only
    zero = {"model": zero_shot(export, bench, vcf, os.path.join(work, "scores_model.tsv"), args.window, args.device,
                               score=score)}
    if args.rc_average:
        zero["model, both strands"] = zero_shot(export, bench, vcf, os.path.join(work, "scores_model_rc.tsv"),
                                                args.window, args.device, rc_average=True, score=score)
    for k, path in markovs.items():
        zero[f"Markov k={k}"] = zero_shot(path, bench, vcf, os.path.join(work, f"scores_markov_k{k}.tsv"),
                                          args.window, args.device, score=score)
    results["zero_shot"] = zero
    results["substitution_type_only"] = substitution_only(bench, vcf)
    timings["zero_shot"] = None if args.report_only else round(time.time() - t, 1)

    table = os.path.join(work, "supervised.tsv")
    if not args.report_only:
        supervised_table(bench, table, {"train": args.max_train_rows, "val": args.max_val_rows,
                                        "test": args.max_test_rows}, args.seed)
    window = f"task.data.window={args.classifier_window}"
    supervised = {}
    supervised["frozen backbone + head"] = finetune_run(export, bench, table, os.path.join(work, "vc_frozen"),
                                                        "variant_classification", args, window)
    supervised["fine-tuned backbone + head"] = finetune_run(export, bench, table, os.path.join(work, "vc_finetuned"),
                                                            "variant_classification", args, window,
                                                            "task.module.freeze_backbone=false")
    t = time.time()
    k0 = args.markov_k[0]
    supervised[f"logistic regression on Markov k={k0} features"] = markov_classifier(markovs[k0], bench, table)
    timings["markov_classifier"] = round(time.time() - t, 1)
    results["supervised"] = supervised
    timings.update({f"finetune {name}": v["wall_time_s"] for name, v in supervised.items() if "wall_time_s" in v})

    coding = finetune_run(export, bench, os.path.join(bench, "intervals.tsv"), os.path.join(work, "coding"),
                          "sequence_classification", args)
    results["coding_vs_noncoding"] = {"model_frozen": {"accuracy": coding["test"]["accuracy"],
                                                       "auroc": coding["test"]["auroc_macro"],
                                                       "epochs": coding["epochs"]},
                                      "markov": markov_coding(bench, args.coding_markov_k)}
    timings["coding"] = coding["wall_time_s"]
    results["timings_s"] = timings
    results["wall_time_s"] = None if args.report_only else round(time.time() - t0, 1)
    results["report_only"] = args.report_only
    md = write_results(results, args.out)
    print(json.dumps({k: results[k] for k in ("zero_shot", "supervised", "coding_vs_noncoding")}, indent=2))
    print(f"wrote {args.out} and {md}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
