"""Supervised classification of labelled intervals (`dnamamba finetune task=sequence_classification`).

The data is a table of intervals over a FASTA: a TSV or CSV with a header (chrom, start, end (0-based,
half-open), label, and optionally split), such as `intervals.tsv` from `dnamamba
build-variant-benchmark` (coding against non-coding windows), or a BED file whose 4th column is the
label. Each interval is embedded whole (mean over its bases) and a head predicts its class.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from ..data.bed import read_bed
from ..data.fasta import FastaFile
from ..errors import InputError
from ..inference.classify import sequence_batch
from .classification import ClassificationTask, LabelledDataModule, read_table, row_splits

INTERVAL_COLUMNS = ("chrom", "start", "end", "label")


def _is_bed(path: str) -> bool:
    return path.lower().removesuffix(".gz").endswith(".bed")


class IntervalTableDataModule(LabelledDataModule):
    """Interval sequences with their labels, from a TSV/CSV interval table or a labelled BED file."""

    def __init__(self, fasta: str, table: str, soft_mask: str = "keep", cache_dir: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        self.fasta_path, self.table, self.soft_mask, self.cache_dir = os.fspath(fasta), os.fspath(table), soft_mask, cache_dir
        self.source = self.table
        self.window = 0  # set from the intervals: their longest length

    def load(self):
        with FastaFile(self.fasta_path, cache_dir=self.cache_dir) as fasta:
            if _is_bed(self.table):
                intervals = read_bed(self.table, fasta)
                unlabelled = [iv for iv in intervals if iv.name is None]
                if unlabelled:
                    iv = unlabelled[0]
                    raise InputError(self.table, f"interval {iv.start}-{iv.end} has no label (4th column)",
                                     record=iv.chrom)
                rows = [(i + 1, {"chrom": iv.chrom, "start": str(iv.start), "end": str(iv.end), "label": iv.name})
                        for i, iv in enumerate(intervals)]
            else:
                rows = read_table(self.table, INTERVAL_COLUMNS)
            splits = row_splits(self.table, rows, self.split_fractions, self.seed)
            out: dict[str, list] = {}
            for (line, row), split in zip(rows, splits):
                out.setdefault(split, []).append((self._sequence(fasta, line, row), row["label"]))
        self.window = max(len(s) for rows_ in out.values() for s, _ in rows_)
        return out

    def _sequence(self, fasta: FastaFile, line: int, row: dict) -> bytes:
        chrom = row["chrom"]
        try:
            start, end = int(row["start"]), int(row["end"])
        except ValueError:
            raise InputError(self.table, f"line {line}: start and end must be integers", record=chrom) from None
        if chrom not in fasta:
            raise InputError(self.table, f"line {line}: contig {chrom!r} is not in {fasta.path}", record=chrom)
        length = fasta.length(chrom)
        if not 0 <= start < end <= length:
            raise InputError(self.table, f"line {line}: need 0 <= start < end <= {length}, got {start}-{end}",
                             record=chrom)
        seq = fasta.fetch(chrom, start, end)
        return seq.upper() if self.soft_mask == "upper" else seq

    def collate(self, items: list) -> dict:
        batch = sequence_batch([s for s, _ in items])
        batch["label"] = torch.tensor([y for _, y in items])
        return batch


class SequenceClassificationTask(ClassificationTask):
    kind = "sequence"

    def logits(self, batch: dict) -> torch.Tensor:
        return self.classifier.sequence_logits(batch["tokens"], batch["pool"])
