"""Reference points for a held-out region in bits per base: general-purpose compressors and an order-k
Markov model. `ecoli_baselines.py` and `chr20_baselines.py` choose the region and call these.

Every figure is bits over the region's A/C/G/T bases (either case), the bases the model's validation
bits/base counts:
- "<compressor> alone" compresses the region by itself; "<compressor> given the rest" is
  size(rest + region) - size(rest), the cost of the region once the compressor has read the training part
  (which the model has too). Both compress the uppercased bytes; N runs in the region cost almost nothing.
- "markov order k" is an order-k Markov model with add-alpha smoothing, counted on the training part and
  scored on the region: p(b | previous k bases) = (count(context, b) + alpha) / (count(context) + 4 alpha).
  A base whose k preceding bases are not all A/C/G/T (after an N run, or at the record start) is scored
  with the longest context that is.
"""
from __future__ import annotations

import bz2
import gzip
import lzma

import numpy as np

from dnamamba.inference.markov import count_kmers, order_offsets

COMPRESSORS = {"gzip -9": lambda b: gzip.compress(b, 9), "bzip2 -9": lambda b: bz2.compress(b, 9),
               "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)}

# A/C/G/T (either case) as 0..3; every other byte as 4.
_CODE = np.full(256, 4, dtype=np.uint8)
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _CODE[_b + 32] = _i


def acgt_count(seq: bytes) -> int:
    return int((_CODE[np.frombuffer(seq, dtype=np.uint8)] < 4).sum())


def compressor_bits(rest: bytes, region: bytes, names=tuple(COMPRESSORS)) -> dict[str, float]:
    """Bits per A/C/G/T base of `region` for each compressor, alone and given `rest` (see module docstring)."""
    n = acgt_count(region)
    rest, region = rest.upper(), region.upper()
    out = {}
    for name in names:
        fn = COMPRESSORS[name]
        out[f"{name} alone"] = len(fn(region)) * 8 / n
        out[f"{name} given the rest"] = (len(fn(rest + region)) - len(fn(rest))) * 8 / n
    return out


def _contexts(codes: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """For each position i >= order: the id of codes[i-order:i] in base 4 and whether those bases and
    codes[i] are all A/C/G/T. (len(codes) - order,) int64 and bool."""
    n = len(codes) - order
    ctx = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    for j in range(order + 1):
        piece = codes[j:j + n]
        bad |= piece > 3
        if j < order:
            ctx = ctx * 4 + (piece & 3)
    return ctx, ~bad


def markov_counts(train: bytes, order: int) -> list[np.ndarray]:
    """Counts of each base after each context in `train`, per order 0..order: [(4**k, 4) for k], counted as
    `dnamamba fit-markov` counts (one strand here)."""
    counts = np.zeros((int(order_offsets(order)[-1]), 4), dtype=np.int64)
    count_kmers(train, order, counts)
    offsets = order_offsets(order)
    return [counts[offsets[k]:offsets[k + 1]] for k in range(order + 1)]


def markov_bits(train: bytes, before: bytes, region: bytes, order: int, alpha: float = 1.0) -> float:
    """Bits per A/C/G/T base of `region` under an order-`order` Markov model counted on `train`;
    `before` is what precedes the region in its record (its last `order` bases give the first contexts)."""
    before = before[-order:] if order else b""
    codes = _CODE[np.frombuffer(before + region, dtype=np.uint8)]
    first = len(before)  # index of the region's first base in `codes`
    scored = codes[first:] < 4  # (len(region),) the bases that are scored
    remaining = scored.copy()
    total = 0.0
    by_order = markov_counts(train, order)
    for k in range(order, -1, -1):
        if not remaining.any():
            break
        counts = by_order[k]  # (4**k, 4)
        # Contexts of every region position, from the k bases before it.
        padded = np.concatenate([np.full(max(0, k - first), 4, np.uint8), codes])
        ctx, ok = _contexts(padded[first + max(0, k - first) - k:], k)
        use = remaining & ok
        c, s = ctx[use], codes[first:][use].astype(np.int64)
        p = (counts[c, s] + alpha) / (counts[c].sum(axis=1) + 4 * alpha)
        total += float(-np.log2(p).sum())
        remaining &= ~use
    return total / int(scored.sum())
