"""Fixed-length windows over FASTA records: tiling, train/validation splits, the N filter, and the
dataset that turns windows into token and loss-weight tensors.

A region and a window are the same thing, a `Window(name, start, end)`: 0-based, half-open.

Tiling a region with length L and stride S puts windows at start, start + S, ... while they fit.
What happens to the bases after the last full window is the `tail` choice:
- "align" (training default): one more full window, right-aligned to the region end, so every base is
  trained on; it overlaps the window before it.
- "short" (validation default): one shorter window over the remaining bases, so with S = L every base
  is scored exactly once; `WindowDataset` pads it.
- "drop": the remaining bases are left out.
A region shorter than L gives one short window, except with "drop".
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from dnamamba import alphabet
from dnamamba.data.fasta import FastaFile

TAILS = ("align", "short", "drop")
SOFT_MASK_MODES = ("keep", "upper", "weight")

# The alphabet's tables as numpy lookups. Per-window work runs in numpy: on CPU, torch's OpenMP
# indexing of a few thousand elements can take milliseconds when cores are busy, numpy microseconds.
_ALL_BYTES = torch.arange(alphabet.VOCAB_SIZE)
_COMPLEMENT = alphabet.complement(_ALL_BYTES).numpy().astype(np.uint8)
_UPPER = alphabet.uppercase(_ALL_BYTES).numpy().astype(np.uint8)
_LOSS = alphabet.loss_mask(_ALL_BYTES).numpy().astype(np.float32)
_SOFT = alphabet.soft_masked(_ALL_BYTES).numpy()


@dataclass(frozen=True)
class Window:
    """Bases [start, end) of record `name`."""

    name: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def tile(region: Window, length: int, stride: int | None = None, tail: str = "align") -> list[Window]:
    """Windows of `length` bases every `stride` (default `length`) bases over `region`; see the module
    docstring for `tail`."""
    stride = length if stride is None else stride
    if length <= 0 or stride <= 0:
        raise ValueError(f"window length and stride must be positive, got {length} and {stride}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {TAILS}, got {tail!r}")
    size = region.end - region.start
    if size <= 0:
        return []
    if size < length:
        return [] if tail == "drop" else [region]
    starts = list(range(region.start, region.end - length + 1, stride))
    windows = [Window(region.name, s, s + length) for s in starts]
    covered_to = starts[-1] + length
    if covered_to < region.end:
        if tail == "align":
            windows.append(Window(region.name, region.end - length, region.end))
        elif tail == "short" and starts[-1] + stride < region.end:
            windows.append(Window(region.name, starts[-1] + stride, region.end))
    return windows


def tile_all(regions: Iterable[Window], length: int, stride: int | None = None,
             tail: str = "align") -> list[Window]:
    """`tile` over each region, in order."""
    return [w for region in regions for w in tile(region, length, stride, tail)]


def record_regions(fasta: FastaFile, records: Sequence[str] | None = None) -> list[Window]:
    """Whole records as regions, in file order, or in the order given; empty records are left out."""
    names = fasta.names if records is None else list(records)
    return [Window(name, 0, fasta.length(name)) for name in names if fasta.length(name) > 0]


def merge_regions(regions: Iterable[Window]) -> list[Window]:
    """Overlapping or touching regions of the same record joined, so no base is tiled twice. Records
    keep the order in which they first appear; regions within a record are sorted."""
    by_record: dict[str, list[Window]] = {}
    for r in regions:
        if r.end > r.start:
            by_record.setdefault(r.name, []).append(r)
    merged: list[Window] = []
    for name, rs in by_record.items():
        rs.sort(key=lambda r: r.start)
        start, end = rs[0].start, rs[0].end
        for r in rs[1:]:
            if r.start <= end:
                end = max(end, r.end)
            else:
                merged.append(Window(name, start, end))
                start, end = r.start, r.end
        merged.append(Window(name, start, end))
    return merged


def held_out_start(record_length: int, val_fraction: float) -> int:
    """First base of a record's held-out tail: the last round(val_fraction * length) bases."""
    return record_length - int(round(record_length * val_fraction))


def acgt_tail_start(fasta: FastaFile, name: str, n_bases: int) -> int:
    """First base of the shortest tail of record `name` that holds `n_bases` A/C/G/T bases (either case):
    the position of the `n_bases`-th such base counted from the record end. N runs and other IUPAC codes
    inside the tail (a chromosome's telomere gap) are part of it but not counted. 0 when the whole record
    holds fewer."""
    length = fasta.length(name)

    def acgt_from(x: int) -> int:  # A/C/G/T bases in [x, length)
        return (length - x) - int(fasta.n_count(name, [x], [length])[0])

    if acgt_from(0) < n_bases:
        return 0
    lo, hi = 0, length  # acgt_from(lo) >= n_bases > acgt_from(hi) while n_bases > 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if acgt_from(mid) >= n_bases:
            lo = mid
        else:
            hi = mid
    # acgt_from falls by at most one a base, so the last start that still holds n_bases holds exactly
    # n_bases and begins on an A/C/G/T base.
    return lo


def split_at(regions: Iterable[Window], cuts: dict[str, int]) -> tuple[list[Window], list[Window]]:
    """Cut each region at its record's held-out start `cuts[name]`: the part before it is for training,
    the part from it on for validation. Training windows tiled from the first list therefore lie
    entirely before every held-out base of their record."""
    train, val = [], []
    for r in regions:
        cut = cuts[r.name]
        if r.start < min(r.end, cut):
            train.append(Window(r.name, r.start, min(r.end, cut)))
        if max(r.start, cut) < r.end:
            val.append(Window(r.name, max(r.start, cut), r.end))
    return train, val


def split_by_fraction(regions: Iterable[Window], lengths: dict[str, int],
                      val_fraction: float) -> tuple[list[Window], list[Window]]:
    """`split_at` holding out the last `val_fraction` of each record (see `held_out_start`)."""
    return split_at(regions, {name: held_out_start(n, val_fraction) for name, n in lengths.items()})


def split_by_records(regions: Iterable[Window],
                     val_records: Iterable[str]) -> tuple[list[Window], list[Window]]:
    """Regions on `val_records` for validation, the rest for training."""
    held = set(val_records)
    train, val = [], []
    for r in regions:
        (val if r.name in held else train).append(r)
    return train, val


def filter_n(windows: Sequence[Window], fasta: FastaFile, max_n_fraction: float) -> list[Window]:
    """Windows with at most `max_n_fraction` of their bases outside A/C/G/T (N runs, other IUPAC codes);
    order kept. Uses each record's N-run list, so it costs one scan per record, not per window."""
    if max_n_fraction >= 1.0 or not windows:
        return list(windows)
    lengths = np.array([w.length for w in windows], dtype=np.int64)
    keep = _n_counts(windows, fasta) <= max_n_fraction * lengths
    return [w for w, k in zip(windows, keep) if k]


def drop_unscored(windows: Sequence[Window], fasta: FastaFile) -> list[Window]:
    """Windows that hold at least one A/C/G/T base, order kept: the ones a loss or a metric can use."""
    if not windows:
        return []
    lengths = np.array([w.length for w in windows], dtype=np.int64)
    keep = _n_counts(windows, fasta) < lengths
    return [w for w, k in zip(windows, keep) if k]


def _n_counts(windows: Sequence[Window], fasta: FastaFile) -> np.ndarray:
    """Non-ACGT bases in each window, (len(windows),) int64; one N-run lookup per record."""
    n = np.zeros(len(windows), dtype=np.int64)
    by_record: dict[str, list[int]] = {}
    for i, w in enumerate(windows):
        by_record.setdefault(w.name, []).append(i)
    for name, idx in by_record.items():
        starts = np.array([windows[i].start for i in idx], dtype=np.int64)
        ends = np.array([windows[i].end for i in idx], dtype=np.int64)
        n[idx] = fasta.n_count(name, starts, ends)
    return n


class WindowDataset(Dataset):
    """Item i is window i as `{"tokens": (seq_len,) long, "loss_weight": (seq_len,) float32}`.

    - loss_weight is 0 at bases that are not A/C/G/T (N, IUPAC codes) and at padding, 1 elsewhere,
      except at lowercase (soft-masked) bases in soft_mask="weight" mode, where it is
      `soft_mask_weight` (GPN-style down-weighting of repeats).
    - soft_mask: "keep" leaves lowercase tokens as they are; "upper" uppercases them; "weight" also
      uppercases them, so case reaches the loss only through the weight.
    - With probability `rc_prob` a window is reverse-complemented (tokens, and weights reversed).
      The draws come from a per-process generator seeded from `seed` and `torch.initial_seed()`, which
      DataLoader sets per worker and epoch from its own generator, so runs repeat under a fixed seed.
    - Windows shorter than `seq_len` (default: the longest window) are right-padded with PAD_ID and
      weight 0.

    `fasta_path` may be a path or an open `FastaFile`; either way the dataset pickles into DataLoader
    workers and each worker reopens the file.
    """

    def __init__(self, fasta_path: str | os.PathLike | FastaFile, windows: Sequence[Window],
                 cache_dir: str | os.PathLike | None = None, rc_prob: float = 0.0,
                 soft_mask: str = "keep", soft_mask_weight: float = 1.0, seed: int = 0,
                 seq_len: int | None = None):
        if soft_mask not in SOFT_MASK_MODES:
            raise ValueError(f"soft_mask must be one of {SOFT_MASK_MODES}, got {soft_mask!r}")
        if not 0.0 <= rc_prob <= 1.0:
            raise ValueError(f"rc_prob must be in [0, 1], got {rc_prob}")
        self.fasta = fasta_path if isinstance(fasta_path, FastaFile) else FastaFile(fasta_path, cache_dir)
        # Arrays rather than a list of objects: cheap to pickle into spawned workers, and no
        # copy-on-write page faults from reference counts in forked ones.
        self.record_names = list(dict.fromkeys(w.name for w in windows))
        record_index = {name: i for i, name in enumerate(self.record_names)}
        self._record = np.array([record_index[w.name] for w in windows], dtype=np.int32)
        self._start = np.array([w.start for w in windows], dtype=np.int64)
        self._end = np.array([w.end for w in windows], dtype=np.int64)
        longest = int((self._end - self._start).max()) if len(windows) else 0
        self.seq_len = longest if seq_len is None else int(seq_len)
        if longest > self.seq_len:
            raise ValueError(f"a window of {longest} bases is longer than seq_len={self.seq_len}")
        self.rc_prob = float(rc_prob)
        self.soft_mask = soft_mask
        self.soft_mask_weight = float(soft_mask_weight)
        self.seed = int(seed)
        self._rng: random.Random | None = None
        self._rng_key: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self._start)

    def window(self, i: int) -> Window:
        return Window(self.record_names[self._record[i]], int(self._start[i]), int(self._end[i]))

    def _flip(self) -> bool:
        if self.rc_prob <= 0.0:
            return False
        key = (os.getpid(), torch.initial_seed())
        if self._rng is None or self._rng_key != key:
            self._rng = random.Random(f"{self.seed}-{torch.initial_seed()}")
            self._rng_key = key
        return self._rng.random() < self.rc_prob

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        w = self.window(i)
        seq = np.frombuffer(self.fasta.fetch(w.name, w.start, w.end), dtype=np.uint8)  # (n,)
        weight = _LOSS[seq]  # (n,) float32, a fresh array
        if self.soft_mask == "weight":
            weight[_SOFT[seq]] *= self.soft_mask_weight
        if self.soft_mask in ("upper", "weight"):
            seq = _UPPER[seq]
        if self._flip():
            seq = _COMPLEMENT[seq[::-1]]
            weight = weight[::-1]
        tokens = np.full(self.seq_len, alphabet.PAD_ID, dtype=np.int64)  # padding past the window end
        loss_weight = np.zeros(self.seq_len, dtype=np.float32)
        tokens[:len(seq)] = seq
        loss_weight[:len(seq)] = weight
        return {"tokens": torch.from_numpy(tokens), "loss_weight": torch.from_numpy(loss_weight)}
