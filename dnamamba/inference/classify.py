"""Class probabilities for VCF variants from a classifier export (`dnamamba finetune` writes one).

Each ALT allele gets the same pair of windows as in score-variants (dnamamba/inference/variants.py,
with the window length the classifier was trained with), and the classifier's probability of each
class. Outputs, chosen by the extension of `out`:
- `.vcf`, `.vcf.gz`, `.bcf`: the input records, each with one INFO field per class,
  `<info_prefix><CLASS>` (Number=A, Float), e.g. `DNAMAMBA_P_MISSENSE`.
- `.tsv` or `.parquet`: one row per ALT: chrom, pos, id, ref, alt, status, p_<class> per class,
  `class` (the most probable one) and `llr` (the zero-shot score the head saw).

The batch builders here turn windows into the masks that dnamamba/model/classifier.py takes; the
fine-tuning tasks use them too, so training and classification see the same inputs.
"""
from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pysam
import torch

from .. import alphabet
from ..data.fasta import FastaFile
from ..errors import InputError, require_file
from ..io import atomic_path
from ..model.classifier import Classifier, load_classifier_export
from .runtime import SETTINGS, autocast, check_choice, check_writable, note, progress_bar, resolve_device, write_errors
from .variant_files import Selection, VcfWriter, declare_score_field, open_variants
from .variants import (SKIP_REASONS, SOFT_MASK_MODES, Window, _blocks, _fail_on_skip, _prescan, _Reference, _tabix,
                       output_kind, plan_entry)

TABLE_KINDS = {".tsv": "tsv", ".parquet": "parquet"}


@dataclass
class ClassifyVariantsConfig:
    """`dnamamba classify-variants` settings; conf/classify_variants.yaml fills in the same keys."""

    model: str = "???"  # classifier export (dnamamba finetune task=variant_classification)
    fasta: str = "???"  # reference FASTA the VCF was called against
    vcf: str = "???"  # input VCF or BCF
    out: str = "???"  # .vcf, .vcf.gz, .bcf, .tsv or .parquet
    strict: bool = False  # fail on the first unscorable record instead of skipping and counting it
    info_prefix: str = "DNAMAMBA_P_"  # INFO field of class c: <info_prefix><C in capitals>
    soft_mask: str = "keep"  # keep | upper, as in score-variants
    batch_size: int = 32  # variants per forward pass (two windows each)
    block_records: int = 4096  # records read, classified and written per block (bounds memory)
    device: str = "auto"
    precision: str = "fp32"
    index: bool = True  # .tbi beside a .vcf.gz output when the records are sorted
    cache_dir: Optional[str] = None
    progress: bool = True

    def validate(self) -> None:
        if self.batch_size < 1 or self.block_records < 1:
            raise InputError(SETTINGS, "batch_size and block_records must be at least 1")
        check_choice("soft_mask", self.soft_mask, SOFT_MASK_MODES)
        p = self.info_prefix
        if not p or not (p[0].isalpha() or p[0] == "_") or not all(c.isalnum() or c in "_." for c in p):
            raise InputError(SETTINGS, f"info_prefix={p!r} does not start a valid VCF INFO key")
        classify_output_kind(self.out)


def classify_output_kind(path: str) -> str:
    """'tsv', 'parquet', or pysam's write mode for a VCF/BCF path; InputError for anything else."""
    name = os.path.basename(path).lower()
    for ext, kind in TABLE_KINDS.items():
        if name.endswith(ext) and len(name) > len(ext):
            return kind
    try:
        return output_kind(path)
    except InputError:
        raise InputError(path, "output must end in .vcf, .vcf.gz, .vcf.bgz, .bcf, .tsv or .parquet") from None


def _pad(rows: Sequence[bytes]) -> torch.Tensor:
    L = max(len(r) for r in rows)
    out = torch.zeros(len(rows), L, dtype=torch.long)  # (R, L), PAD_ID on the right
    for i, r in enumerate(rows):
        out[i, :len(r)] = alphabet.encode(r)
    return out


def variant_batch(pairs: Sequence[tuple[Window, Window]], pooling: str, site_span: int) -> dict:
    """The classifier's inputs for (REF window, ALT window) pairs: tokens, pool and scored (2B, L), REF
    rows first.

    `scored` marks the positions that score-variants sums: from the variant start (and never the first
    base) to the window end, A, C, G or T only. `pool` is the whole window (mean) or the allele and the
    `site_span` bases after it (site).
    """
    windows = [w for w, _ in pairs] + [a for _, a in pairs]
    tokens = _pad([w.seq for w in windows])  # (2B, L)
    R, L = tokens.shape
    pos = torch.arange(L)[None, :]  # (1, L)
    length = torch.tensor([len(w.seq) for w in windows])[:, None]  # (2B, 1)
    left = torch.tensor([w.left for w in windows])[:, None]
    allele_end = length - torch.tensor([w.right for w in windows])[:, None]  # one past the allele
    inside = pos < length
    scored = inside & (pos >= left.clamp(min=1)) & alphabet.loss_mask(tokens)
    if pooling == "site":
        pool = inside & (pos >= left) & (pos < allele_end + site_span)
        pool |= inside & ~pool.any(1, keepdim=True)  # an empty allele (ALT '-') pools the whole window
    else:
        pool = inside
    return {"tokens": tokens, "pool": pool, "scored": scored}


def sequence_batch(seqs: Sequence[bytes]) -> dict:
    """tokens and pool (B, L) for whole sequences."""
    tokens = _pad(seqs)
    lengths = torch.tensor([len(s) for s in seqs])[:, None]
    return {"tokens": tokens, "pool": torch.arange(tokens.shape[1])[None, :] < lengths}


@torch.no_grad()
def classify_pairs(model: Classifier, pairs: Sequence[tuple[Window, Window]], batch_size: int,
                   device: torch.device, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (n, C) float64, llr (n,) float64) for (REF window, ALT window) pairs."""
    probs = np.zeros((len(pairs), len(model.cfg.classes)))
    llr = np.zeros(len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][1].seq))  # similar lengths share a batch
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        batch = {k: v.to(device) for k, v in variant_batch([pairs[i] for i in idx], model.cfg.pooling,
                                                            model.cfg.site_span).items()}
        with autocast(device, precision):
            logits, score = model.variant_logits(batch["tokens"], batch["pool"], batch["scored"])
        probs[idx] = torch.softmax(logits.float(), -1).double().cpu().numpy()
        llr[idx] = score.cpu().numpy()
    return probs, llr


def class_field(prefix: str, label: str) -> str:
    return prefix + "".join(c if c.isalnum() else "_" for c in label.upper())


class _ClassVcfWriter(VcfWriter):
    """score-variants' VCF writer with one Number=A field per class (the first goes through the parent)."""

    def __init__(self, path: str, mode: str, source, fields: list[str], classes: list[str], meta: str):
        for name, label in list(zip(fields, classes))[1:]:
            declare_score_field(source.file.header, name, f"dnamamba classifier probability of {label}",
                                source.path, "info_prefix")
        super().__init__(path, mode, source, fields[0], f"dnamamba classifier probability of {classes[0]}", meta)
        self.fields = fields

    def write_probs(self, plan, probs: list[np.ndarray | None]) -> None:
        rec = plan.record
        scored = any(p is not None for p in probs) and rec.alts
        for c, name in enumerate(self.fields[1:], start=1):
            if scored:
                rec.info[name] = tuple(None if p is None else float(p[c]) for p in probs)
            elif name in rec.info:
                del rec.info[name]
        self.write(plan.entry, plan.statuses, [None if p is None else float(p[0]) for p in probs])


class _TableWriter:
    """Rows per ALT into a .tsv or a .parquet (pyarrow, one row group per `ROW_GROUP` rows)."""

    ROW_GROUP = 65536

    def __init__(self, path: str, kind: str, classes: list[str]):
        self.kind, self.path, self.classes = kind, path, classes
        self.columns = ["chrom", "pos", "id", "ref", "alt", "status", *(f"p_{c}" for c in classes), "class", "llr"]
        self.rows: dict[str, list] = {c: [] for c in self.columns}
        self.file = open(path, "w") if kind == "tsv" else None
        self.parquet = None
        if self.file:
            self.file.write("\t".join(self.columns) + "\n")

    def write(self, plan, probs: list[np.ndarray | None], llrs: list[float | None]) -> None:
        e = plan.entry
        for alt, p, llr, status in zip(e.alts, probs, llrs, plan.statuses):
            values = [e.chrom, e.pos, e.id or ".", e.ref or ".", alt or ".", status]
            values += [None] * len(self.classes) + [None, None] if p is None else \
                [*map(float, p), self.classes[int(np.argmax(p))], float(llr)]
            if self.file:
                self.file.write("\t".join("NA" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
                                          for v in values) + "\n")
            else:
                for c, v in zip(self.columns, values):
                    self.rows[c].append(v)
        if not self.file and len(self.rows["chrom"]) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        types = {"pos": pa.int64(), "llr": pa.float64(), **{f"p_{c}": pa.float64() for c in self.classes}}
        schema = pa.schema([(c, types.get(c, pa.string())) for c in self.columns])
        if self.parquet is None:
            self.parquet = pq.ParquetWriter(self.path, schema)
        self.parquet.write_table(pa.table({c: pa.array(v, type=schema.field(c).type) for c, v in self.rows.items()},
                                          schema=schema))
        self.rows = {c: [] for c in self.columns}

    def close(self) -> None:
        if self.file:
            self.file.close()
            return
        if self.rows["chrom"] or self.parquet is None:
            self._flush()
        self.parquet.close()


def classify_vcf(cfg: ClassifyVariantsConfig) -> dict:
    """Classify every ALT allele of `cfg.vcf` and write `cfg.out`; returns a summary dict."""
    t0 = time.time()
    cfg.validate()
    require_file(cfg.vcf, "VCF file")
    require_file(cfg.fasta, "FASTA file")
    kind = classify_output_kind(cfg.out)
    check_writable(cfg.out)
    device = resolve_device(cfg.device)
    model = load_classifier_export(cfg.model, device)
    if model.cfg.kind != "variant":
        raise InputError(cfg.model, f"a {model.cfg.kind} classifier; classify-variants needs one trained with "
                                    f"task=variant_classification")
    classes = model.cfg.classes
    fields = [class_field(cfg.info_prefix, c) for c in classes]
    verbosity = pysam.set_verbosity(0)  # htslib's warnings would break the one-line error contract
    counts: Counter = Counter()
    predicted: Counter = Counter()
    n_records = 0
    try:
        with FastaFile(cfg.fasta, cache_dir=cfg.cache_dir) as fasta:
            source = open_variants(cfg.vcf)
            if kind not in TABLE_KINDS.values() and source.kind != "vcf":
                raise InputError(cfg.out, "a VCF/BCF output needs a VCF/BCF input; write .tsv or .parquet")
            total = _prescan(source, Selection.parse(None, None, fasta), fasta, cfg)
            reference = _Reference(fasta, cfg.soft_mask)
            source.open()
            try:
                with write_errors(cfg.out), atomic_path(cfg.out) as tmp:
                    meta = (f"command=classify-variants;model={os.path.abspath(cfg.model)};"
                            f"fasta={os.path.abspath(cfg.fasta)};window={model.cfg.window};classes={','.join(classes)}")
                    writer = _TableWriter(tmp, kind, classes) if kind in TABLE_KINDS.values() else \
                        _ClassVcfWriter(tmp, kind, source, fields, classes, meta)
                    try:
                        with progress_bar(cfg.progress, "records") as progress:
                            task = progress.add_task("classifying", total=total)
                            for block in _blocks(source.entries(), cfg.block_records):
                                pairs: list[tuple[Window, Window]] = []
                                plans, indices = [], []  # indices: per ALT, its pair's index or None
                                for e in block:
                                    first = len(pairs)
                                    plans.append(plan_entry(e, reference, model.cfg.window, cfg.soft_mask, pairs))
                                    order = {k: first + j for j, k in enumerate(plans[-1].scorable)}
                                    indices.append([order.get(k) for k in range(len(plans[-1].statuses))])
                                if cfg.strict:
                                    _fail_on_skip(plans, cfg.vcf)
                                probs, llr = classify_pairs(model, pairs, cfg.batch_size, device, cfg.precision)
                                for plan, index in zip(plans, indices):
                                    p = [None if i is None else probs[i] for i in index]
                                    s = [None if i is None else llr[i] for i in index]
                                    if isinstance(writer, _TableWriter):
                                        writer.write(plan, p, s)
                                    else:
                                        writer.write_probs(plan, p)
                                    counts.update(plan.statuses)
                                    predicted.update(classes[int(np.argmax(x))] for x in p if x is not None)
                                n_records += len(block)
                                progress.advance(task, len(block))
                    finally:
                        writer.close()
                    if kind == "wz":
                        _tabix(tmp, cfg.out, cfg.index)
            finally:
                source.close()
    finally:
        pysam.set_verbosity(verbosity)
    skipped = {reason: counts[reason] for reason in SKIP_REASONS if counts[reason]}
    n_alleles = sum(counts.values())
    line = (f"classified {counts['ok']} of {n_alleles} alleles in {n_records} records -> {cfg.out} "
            f"(most probable: {', '.join(f'{c} {predicted[c]}' for c in classes)})")
    if skipped:
        line += "; skipped: " + ", ".join(f"{SKIP_REASONS[r]} {c}" for r, c in skipped.items())
    note(line)
    return {"records": n_records, "alleles": n_alleles, "classified": counts["ok"], "skipped": skipped,
            "predicted": {c: predicted[c] for c in classes}, "out": cfg.out,
            "wall_time_s": round(time.time() - t0, 3)}
