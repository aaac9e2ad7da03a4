"""Supervised variant classification on a pretrained backbone (`dnamamba finetune task=variant_classification`).

The data is a labelled variant table (TSV or CSV: chrom, pos (1-based), ref, alt, label, and
optionally split), such as `labels.tsv` from `dnamamba build-variant-benchmark`, over a reference
FASTA. Each variant becomes the REF and ALT windows of score-variants (`window` bases); the classifier
embeds both with the backbone and a head predicts the class from the two embeddings and the zero-shot
log-likelihood ratio (dnamamba/model/classifier.py).
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..data.fasta import FastaFile
from ..errors import InputError
from ..inference.classify import variant_batch
from ..inference.variants import SOFT_MASK_MODES, Window, allele_window, classify_alt, match_case, window_span
from .classification import ClassificationTask, LabelledDataModule, read_table, row_splits

VARIANT_COLUMNS = ("chrom", "pos", "ref", "alt", "label")


class VariantTableDataModule(LabelledDataModule):
    """(REF window, ALT window) pairs with their labels, from a variant table and its reference FASTA."""

    def __init__(self, fasta: str, table: str, window: int = 256, pooling: str = "mean", site_span: int = 3,
                 soft_mask: str = "keep", cache_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if soft_mask not in SOFT_MASK_MODES:
            raise InputError("settings", f"soft_mask={soft_mask!r} is not one of {', '.join(SOFT_MASK_MODES)}")
        if int(window) < 1:
            raise InputError("settings", f"window={window} must be at least 1")
        self.fasta_path, self.table, self.window = os.fspath(fasta), os.fspath(table), int(window)
        self.pooling, self.site_span, self.soft_mask, self.cache_dir = pooling, int(site_span), soft_mask, cache_dir
        self.source = self.table

    def load(self):
        rows = read_table(self.table, VARIANT_COLUMNS)
        splits = row_splits(self.table, rows, self.split_fractions, self.seed)
        out: dict[str, list] = {}
        with FastaFile(self.fasta_path, cache_dir=self.cache_dir) as fasta:
            for (line, row), split in zip(rows, splits):
                out.setdefault(split, []).append((self._pair(fasta, line, row), row["label"]))
        return out

    def _pair(self, fasta: FastaFile, line: int, row: dict) -> tuple[Window, Window]:
        chrom, ref, alt = row["chrom"], row["ref"].upper(), row["alt"]
        where = dict(record=f"{chrom}:{row['pos']}")
        try:
            start = int(row["pos"]) - 1
        except ValueError:
            raise InputError(self.table, f"line {line}: pos {row['pos']!r} is not an integer", **where) from None
        reason = classify_alt(alt) or ("invalid_allele" if not ref or classify_alt(ref) else None)
        if reason:
            raise InputError(self.table, f"line {line}: cannot classify REF {ref!r} ALT {alt!r} ({reason})", **where)
        if chrom not in fasta:
            raise InputError(self.table, f"line {line}: contig {chrom!r} is not in {fasta.path}", **where)
        length = fasta.length(chrom)
        if start < 0 or start + len(ref) > length:
            raise InputError(self.table, f"line {line}: REF runs outside the contig (length {length})", **where)
        lo, hi = window_span(start, len(ref), length, self.window)
        context = fasta.fetch(chrom, lo, hi)
        if self.soft_mask == "upper":
            context = context.upper()
        found = context[start - lo:start - lo + len(ref)]
        if found.upper() != ref.encode():
            raise InputError(self.table, f"line {line}: REF is {ref!r} but {fasta.path} has {found.decode()!r}",
                             **where)
        allele = match_case(alt.encode(), found[:1]) if self.soft_mask == "keep" else alt.upper().encode()
        return (allele_window(context, lo, start, len(ref), found),
                allele_window(context, lo, start, len(ref), allele))

    def collate(self, items: list) -> dict:
        batch = variant_batch([pair for pair, _ in items], self.pooling, self.site_span)
        batch["label"] = torch.tensor([y for _, y in items])
        return batch


class VariantClassificationTask(ClassificationTask):
    kind = "variant"

    def logits(self, batch: dict) -> torch.Tensor:
        logits, _ = self.classifier.variant_logits(batch["tokens"], batch["pool"], batch["scored"])
        return logits
