"""An order-k Markov model of DNA that scores like the neural model: a baseline that needs no GPU.

`MarkovLM` is fitted by counting (numpy) every (context, next base) pair of a FASTA, on one strand or
both, with add-alpha smoothing:

    P(b | c) = (count(c, b) + alpha) / (count(c) + 4 alpha)

It has the call signature of `MambaLM`: `model(tokens, state=None, return_state=False)` returns
next-token logits over the 256 byte tokens, and the state carried from one call to the next is the
last k tokens. So `score-variants`, and everything else that reads logits, scores with it through the
same code (the same windows, the same log-likelihood ratio).

The context is the longest run of A, C, G, T (either case) of at most k bases that ends at the current
position: after an N, or at the start of a sequence, the model falls back to the lower orders that are
fitted alongside order k. Bases are counted case-folded; the predicted base comes in the case of the
current base with probability 1 - 1e-6 (soft-masked runs stay soft-masked), so on sequence of one case
the log-probabilities are the Markov model's own to within 1e-6 nats.

`fit_markov` saves a fitted model as a folder (`config.json` + `markov.safetensors` with the counts)
that `model=` of `score-variants` accepts in place of an export.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from typing import List, Optional

import numpy as np
import torch
import torch.nn as nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import alphabet
from ..data.fasta import FastaFile
from ..errors import InputError
from ..io import atomic_path
from ..model import LayerState, MambaLM, load_export
from .runtime import SETTINGS, check_writable, note

MARKOV_FORMAT = "dnamamba-markov"
CONFIG = "config.json"
WEIGHTS = "markov.safetensors"
MAX_ORDER = 12  # 4^12 contexts x 4 bases of int64 counts is 0.5 GB
# Probability that the next base changes case (soft-masking starts or ends): small, so that on text of
# one case the model is the Markov model, but not zero, so a case change is not infinitely unlikely.
CASE_CHANGE = 1e-6
_LOGIT_FLOOR = -1e4  # bytes that are not bases: exp() of this is 0 in float32
_PIECE = 1 << 22  # bases counted at a time (bounds memory on whole chromosomes)

_CODE = np.full(256, -1, dtype=np.int64)  # byte -> 0..3 for A, C, G, T (either case), else -1
for _i, _b in enumerate(b"ACGT"):
    _CODE[_b] = _CODE[_b + 32] = _i
_CODE_T = torch.from_numpy(_CODE)
_COMPLEMENT_U8 = alphabet.COMPLEMENT.numpy().astype(np.uint8)


def order_offsets(k: int) -> np.ndarray:
    """First row of each order's block in the table: order o has 4^o rows, orders 0..k in turn. (k+2,)"""
    return np.concatenate([[0], np.cumsum(4 ** np.arange(k + 1))]).astype(np.int64)


def _runs(codes: np.ndarray) -> np.ndarray:
    """Length of the run of valid codes (>= 0) that ends at each position, (n,) int64."""
    idx = np.arange(len(codes))
    last_invalid = np.maximum.accumulate(np.where(codes < 0, idx, -1))
    return idx - last_invalid


def count_kmers(seq: bytes, k: int, counts: np.ndarray, first_target: int = 0) -> None:
    """Add the (context, next base) counts of `seq`, for orders 0..k, into `counts` ((rows, 4) int64).

    Targets before index `first_target` are not counted (they are only context), which lets a long
    sequence be counted in overlapping pieces.
    """
    codes = _CODE[np.frombuffer(seq, dtype=np.uint8)]  # (n,)
    if len(codes) == 0:
        return
    run = _runs(codes)  # (n,)
    offsets = order_offsets(k)
    target = codes[1:]  # (n-1,) the base after position t
    t_ok = (target >= 0) & (np.arange(1, len(codes)) >= first_target)
    zero = codes[first_target:]
    zero = zero[zero >= 0]
    counts[0] += np.bincount(zero, minlength=4)  # order 0: no context
    h = np.zeros(len(codes), dtype=np.int64)  # hash of the last o bases ending at t, most recent lowest
    safe = np.maximum(codes, 0)
    for o in range(1, k + 1):
        h[o - 1:] += safe[:len(codes) - o + 1] * 4 ** (o - 1)
        use = t_ok & (run[:-1] >= o)  # (n-1,) contexts of o valid bases
        rows = offsets[o] + h[:-1][use]
        counts[offsets[o]:offsets[o + 1]] += np.bincount(
            (rows - offsets[o]) * 4 + target[use], minlength=4 ** o * 4).reshape(-1, 4)


class MarkovLM(nn.Module):
    """Order-k Markov LM over byte tokens with MambaLM's call signature; see the module docstring."""

    def __init__(self, counts: np.ndarray | torch.Tensor, k: int, alpha: float = 1.0):
        super().__init__()
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.float64)
        if counts.shape != (int(order_offsets(k)[-1]), 4):
            raise ValueError(f"counts of shape {tuple(counts.shape)} do not fit order {k}")
        self.k, self.alpha = int(k), float(alpha)
        self.counts = counts
        log_probs = torch.log(counts + alpha) - torch.log(counts.sum(1, keepdim=True) + 4 * alpha)
        # A frozen parameter, not a buffer: callers ask `next(model.parameters())` for the device.
        self.log_probs = nn.Parameter(log_probs.float(), requires_grad=False)  # (rows, 4)
        self.register_buffer("offsets", torch.from_numpy(order_offsets(k)), persistent=False)

    @classmethod
    def fit(cls, sequences, k: int, alpha: float = 1.0, both_strands: bool = True) -> "MarkovLM":
        """Count every sequence (bytes) of the iterable, and its reverse complement with both_strands."""
        counts = np.zeros((int(order_offsets(k)[-1]), 4), dtype=np.int64)
        for seq in sequences:
            strands = [seq, _COMPLEMENT_U8[np.frombuffer(seq, dtype=np.uint8)][::-1].tobytes()] if both_strands \
                else [seq]
            for s in strands:
                count_kmers(s, k, counts)
        return cls(counts, k, alpha)

    def forward(self, tokens: torch.Tensor, state: list[LayerState] | None = None, return_state: bool = False):
        """tokens (B, L) long -> logits (B, L, 256): position t predicts token t+1."""
        B, L = tokens.shape
        k = self.k
        tokens = tokens.long()
        past = state[0].conv.long() if state is not None else tokens.new_zeros(B, k)  # (B, k); 0 = no context
        full = torch.cat([past, tokens], dim=1)  # (B, k + L)
        codes = _CODE_T.to(tokens.device)[full]  # (B, k + L), -1 where not a base
        idx = torch.arange(k + L, device=tokens.device)
        last_invalid = torch.cummax(torch.where(codes < 0, idx, -1), dim=1).values
        run = (idx - last_invalid)[:, k:].clamp(max=k)  # (B, L) context length used at each position
        safe = codes.clamp(min=0)
        row = self.offsets[0] + torch.zeros_like(run)  # order 0
        h = torch.zeros_like(run)
        for o in range(1, k + 1):
            h = h + safe[:, k - o + 1:k - o + 1 + L] * 4 ** (o - 1)  # the base o-1 before t, as digit o-1
            row = torch.where(run >= o, self.offsets[o] + h, row)
        logp = self.log_probs[row]  # (B, L, 4)
        lower = alphabet.soft_masked(tokens)  # (B, L) predict the case of the current base
        same, other = math.log1p(-CASE_CHANGE), math.log(CASE_CHANGE)
        upper_ids = torch.tensor(list(b"ACGT"), device=tokens.device)
        logits = torch.full((B, L, alphabet.VOCAB_SIZE), _LOGIT_FLOOR, device=tokens.device)
        up = logp + torch.where(lower, other, same)[..., None]  # (B, L, 4)
        low = logp + torch.where(lower, same, other)[..., None]
        logits[..., upper_ids] = up
        logits[..., upper_ids + 32] = low
        if not return_state:
            return logits
        return logits, [LayerState(conv=full[:, L:], ssm=full.new_zeros(B, 0))]

    def advance(self, tokens: torch.Tensor, state: list[LayerState] | None = None) -> list[LayerState]:
        """The state after reading tokens (B, L), as MambaLM.advance: the last k tokens."""
        B, L = tokens.shape
        past = state[0].conv.long() if state is not None else tokens.new_zeros(B, self.k)  # (B, k)
        full = torch.cat([past, tokens.long()], dim=1)  # (B, k + L)
        return [LayerState(conv=full[:, L:], ssm=full.new_zeros(B, 0))]

    def save(self, directory: str, extra: dict | None = None) -> str:
        os.makedirs(directory, exist_ok=True)
        with atomic_path(os.path.join(directory, WEIGHTS)) as tmp:
            save_file({"counts": self.counts.to(torch.int64).contiguous()}, tmp, metadata={"format": MARKOV_FORMAT})
        meta = {"format": MARKOV_FORMAT, "version": 1, "k": self.k, "alpha": self.alpha, **(extra or {})}
        with atomic_path(os.path.join(directory, CONFIG)) as tmp, open(tmp, "w") as f:
            json.dump(meta, f, indent=2)
        return directory

    @classmethod
    def load(cls, directory: str) -> "MarkovLM":
        path = os.path.join(directory, CONFIG)
        try:
            with open(path) as f:
                meta = json.load(f)
            counts = load_file(os.path.join(directory, WEIGHTS))["counts"]
            return cls(counts.numpy(), int(meta["k"]), float(meta["alpha"]))
        except (OSError, json.JSONDecodeError, KeyError, ValueError, SafetensorError) as e:
            raise InputError(directory, f"unreadable Markov model ({str(e).splitlines()[0]})") from None


def load_scorer(directory: str, device: torch.device | str = "cpu") -> MambaLM | MarkovLM:
    """The model an export folder holds: a `MarkovLM` saved by `fit_markov`, else a `MambaLM` export."""
    path = os.path.join(os.fspath(directory), CONFIG)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                is_markov = json.load(f).get("format") == MARKOV_FORMAT
        except (OSError, json.JSONDecodeError, AttributeError):
            is_markov = False  # load_export reports the unreadable config
        if is_markov:
            return MarkovLM.load(directory).to(device).eval()
    return load_export(directory, device)


@dataclass
class FitMarkovConfig:
    """`dnamamba fit-markov` settings; conf/fit_markov.yaml fills in the same keys."""

    fasta: str = "???"  # training sequence
    out: str = "???"  # output folder: config.json + markov.safetensors
    k: int = 6  # order: bases of context
    alpha: float = 1.0  # add-alpha smoothing
    both_strands: bool = True  # count the reverse complement too
    records: Optional[List[str]] = None  # only these FASTA records (default: all)
    cache_dir: Optional[str] = None

    def validate(self) -> None:
        if not 0 <= self.k <= MAX_ORDER:
            raise InputError(SETTINGS, f"k={self.k} must be in 0..{MAX_ORDER}")
        if self.alpha <= 0:
            raise InputError(SETTINGS, f"alpha={self.alpha} must be positive")


def fit_markov(cfg: FitMarkovConfig) -> dict:
    """Fit an order-k Markov model on `cfg.fasta` and save it to `cfg.out`."""
    t0 = time.time()
    cfg.validate()
    if os.path.isfile(cfg.out):
        raise InputError(cfg.out, "output folder is a file")
    check_writable(os.path.join(cfg.out, CONFIG))
    with FastaFile(cfg.fasta, cache_dir=cfg.cache_dir) as fasta:
        names = [str(n) for n in cfg.records] if cfg.records is not None else fasta.names
        counts = np.zeros((int(order_offsets(cfg.k)[-1]), 4), dtype=np.int64)
        bases = 0
        for name in names:
            n = fasta.length(name)
            for lo in range(0, n, _PIECE):
                ctx = max(0, lo - cfg.k)
                seq = fasta.fetch(name, ctx, min(n, lo + _PIECE))
                count_kmers(seq, cfg.k, counts, first_target=lo - ctx)
                if cfg.both_strands:
                    # The reverse complement of this piece, counted where its targets are this piece's bases.
                    ctx_end = min(n, lo + _PIECE + cfg.k)
                    rc = _COMPLEMENT_U8[np.frombuffer(fasta.fetch(name, lo, ctx_end), dtype=np.uint8)][::-1].tobytes()
                    count_kmers(rc, cfg.k, counts, first_target=ctx_end - min(n, lo + _PIECE))
            bases += n
    model = MarkovLM(counts, cfg.k, cfg.alpha)
    model.save(cfg.out, extra={"trained_on": os.path.abspath(cfg.fasta), "records": names if cfg.records else None,
                               "both_strands": cfg.both_strands, "bases": bases})
    counted = int(counts[0].sum())
    note(f"fitted an order-{cfg.k} Markov model on {counted:,} bases of {cfg.fasta}"
         f"{' (both strands)' if cfg.both_strands else ''} -> {cfg.out}")
    return {"k": cfg.k, "bases": bases, "counted": counted, "out": cfg.out, "wall_time_s": round(time.time() - t0, 3)}
