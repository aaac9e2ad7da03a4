"""Log-likelihoods of allele windows that share reference context, with the shared part read once.

A *stretch* is a run of reference bases; every window of its *sites* starts at the stretch's first
base. A site replaces `ref_len` bases at `start` by each of its ALT alleles and ends its windows at the
reference base `end`, so for allele X the window is

    seq[:start] + X + seq[start + ref_len:end]

and its log-likelihood is the sum of log P(x_i | x_<i) over the window positions from `start` on
(never the window's first base, which has no context), where x_i is A, C, G or T in either case.

With a causal model every position before `start` is the same in the REF and the ALT windows, and
so is the recurrent state there. The reference is therefore read once per stretch, in pieces:

- The *reference pass* runs the stretch from its first base and keeps the model state (conv inputs
  and scan state of every layer, `MambaLM(..., return_state=True)`) at a few *stops*.
- Each allele *row* continues from the stop just before its site: the reference bases from the stop
  to the site, then the allele and the right flank.

A stretch with one site stops exactly one base before it, and its REF allele is one more row (the
plain REF and ALT windows of one variant). A stretch with sites at several starts (nearby variants
under a shared left context) stops every `stop_every` bases, scores its REF windows from the
reference pass itself, and only its ALT rows are extra. Both are exact: continuing from a carried
state equals reading the whole window in one call (tests/model checks pieces against one call;
tests/inference/test_llr.py checks these sums against whole windows).

GPU work is queued without synchronising: tokens go up from pinned memory, the sums stay on the
device, and `Pending.result()` brings them back once. The caller can plan the next block of variants
on the CPU while the GPU works on this one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .. import alphabet
from ..model import LayerState, MambaLM
from .runtime import autocast

_RC_TABLE = bytes(alphabet.COMPLEMENT.tolist())  # byte -> complement byte, case kept
# Positions whose fp32 log-softmax is computed at once; bounds the temporary memory of long batches.
_LOGSOFTMAX_POSITIONS = 1 << 22
# Tokens of one reference-pass call, per row of batch_size: a longer stretch is read in several calls.
_PIECE_TOKENS = 1 << 14


@dataclass(frozen=True)
class Window:
    """`seq` = left flank + allele + right flank; the flanks are reference bases."""

    seq: bytes
    left: int  # length of the left flank: the prefix shared with the other allele's window
    right: int  # length of the right flank

    def reverse_complement(self) -> "Window":
        """The window on the other strand: the right flank (complemented) becomes the shared prefix."""
        return Window(reverse_complement(self.seq), left=self.right, right=self.left)


def reverse_complement(seq: bytes) -> bytes:
    """IUPAC reverse complement of bases as bytes, case kept."""
    return seq.translate(_RC_TABLE)[::-1]


@dataclass
class Site:
    """Alleles replacing seq[start:start + ref_len] of a stretch; their windows end at seq[end]."""

    start: int
    ref_len: int
    alts: Sequence[bytes]
    end: int


@dataclass
class Stretch:
    """Reference bases `seq` where every window of `sites` begins."""

    seq: bytes
    sites: list[Site]


@dataclass
class _Row:
    """One allele window continued from a saved state: tokens[first:] are scored."""

    tokens: bytes
    first: int
    state: int  # index into the batch's saved states; 0 is the zero state (no context)
    slot: int  # where its sum goes in the output


@dataclass
class _PassPlan:
    """The reference pass of one stretch: how far it reads, where it stops, what it scores itself."""

    stretch: Stretch
    length: int  # bases read by the pass
    stops: dict[int, list[int]] = field(default_factory=dict)  # stop -> indices of the sites using it
    ref_slots: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, slot) scored by the pass
    rows: list[tuple[int, bytes, int, int]] = field(default_factory=list)  # (stop, tokens, first, slot)


class Pending:
    """Sums queued on the device; `result()` waits for them and splits them per stretch and site."""

    def __init__(self, sums: torch.Tensor | None, shape: list[list[int]]):
        self._sums, self._shape = sums, shape

    def result(self) -> list[list[np.ndarray]]:
        return self._split(self._sums.cpu().numpy() if self._sums is not None else np.zeros(0))

    def _split(self, flat: np.ndarray) -> list[list[np.ndarray]]:
        out, k = [], 0
        for sizes in self._shape:
            per_site = []
            for n in sizes:
                per_site.append(flat[k:k + n].copy())
                k += n
            out.append(per_site)
        return out


@torch.no_grad()
def window_log_likelihoods(model: MambaLM, windows: Sequence, batch_size: int = 64,
                           device: torch.device | str | None = None, precision: str = "fp32") -> np.ndarray:
    """Sum of log P(seq_i | seq_<i) over i >= max(left, 1) where seq_i is A, C, G or T, per window
    (`Window.seq`, `Window.left`). Every window is read whole: the plain definition, which the
    shared computation is tested against.

    Windows are batched by similar length and right-padded; a causal model's outputs at real positions
    do not depend on the padding after them. Returns float64 (n_windows,).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.zeros(len(windows), dtype=np.float64)
    order = sorted(range(len(windows)), key=lambda k: -len(windows[k].seq))
    for b in range(0, len(order), batch_size):
        idx = order[b:b + batch_size]
        lengths = torch.tensor([len(windows[k].seq) for k in idx])
        L = int(lengths.max())
        if L < 2:  # nothing to predict in any window of this batch
            continue
        tokens = torch.zeros(len(idx), L, dtype=torch.long)  # (B, L), PAD_ID on the right
        for row, k in enumerate(idx):
            tokens[row, :lengths[row]] = alphabet.encode(windows[k].seq)
        tokens = tokens.to(device)
        with autocast(device, precision):
            logits = model(tokens)  # (B, L, vocab)
        logp = _target_logp(logits[:, :-1], tokens[:, 1:], _acgt(device))  # (B, L-1): predicts tokens[:, 1:]
        pos = torch.arange(1, L, device=device)  # (L-1,) the position of each target
        first = torch.tensor([max(windows[k].left, 1) for k in idx], device=device)
        keep = (pos >= first[:, None]) & (pos < lengths.to(device)[:, None])
        sums = torch.where(keep, logp, 0).double().sum(-1)  # (B,)
        out[idx] = sums.cpu().numpy()
    return out


def _acgt(device: torch.device) -> torch.Tensor:
    """(256,) bool on `device`: the token ids that are A, C, G or T (either case)."""
    return alphabet.loss_mask(torch.arange(alphabet.VOCAB_SIZE)).to(device)


def _target_logp(logits: torch.Tensor, targets: torch.Tensor, acgt: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in fp32 where the target is A/C/G/T, else 0; (R, l) from (R, l, vocab).

    Rows are taken a few at a time, so the fp32 copy of the logits never exceeds a fixed size."""
    R, l = targets.shape
    out = torch.empty(R, l, dtype=torch.float32, device=logits.device)
    step = max(1, _LOGSOFTMAX_POSITIONS // max(l, 1))
    for r in range(0, R, step):
        lg = logits[r:r + step].float()  # (r, l, vocab)
        t = targets[r:r + step]
        lp = lg.gather(-1, t.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(lg, -1)
        out[r:r + step] = torch.where(acgt[t], lp, 0)
    return out


class Done:
    """A result already computed, with `Pending`'s interface."""

    def __init__(self, value: list[list[np.ndarray]]):
        self.value = value

    def result(self) -> list[list[np.ndarray]]:
        return self.value


def plain_log_likelihoods(model: MambaLM, stretches: Sequence[Stretch], batch_size: int = 64,
                          device: torch.device | str | None = None, precision: str = "fp32") -> Done:
    """`stretch_log_likelihoods` with every REF and ALT window read whole (`window_log_likelihoods`)."""
    windows, shape = [], []
    for stretch in stretches:
        seq, sizes = stretch.seq, []
        for site in stretch.sites:
            right = site.end - site.start - site.ref_len
            for allele in [seq[site.start:site.start + site.ref_len], *site.alts]:
                windows.append(Window(seq[:site.start] + allele + seq[site.start + site.ref_len:site.end],
                                      left=site.start, right=right))
            sizes.append(1 + len(site.alts))
        shape.append(sizes)
    flat = window_log_likelihoods(model, windows, batch_size, device, precision)
    return Done(Pending(None, shape)._split(flat))


def stop_spacing(window: int) -> int:
    """Stops of a shared reference pass: every window/16 bases, so an ALT row re-reads about 3% of its
    window, within [64, 4096] so that passes are not cut into many tiny calls."""
    return max(64, min(4096, window // 16))


@torch.no_grad()
def stretch_log_likelihoods(model: MambaLM, stretches: Sequence[Stretch], batch_size: int = 64,
                            device: torch.device | str | None = None, precision: str = "fp32",
                            stop_every: int = 256) -> list[list[np.ndarray]]:
    """Per stretch, per site: float64 [LL(REF window), LL(ALT_1 window), ...] as defined above."""
    return submit(model, stretches, batch_size, device, precision, stop_every).result()


@torch.no_grad()
def submit(model: MambaLM, stretches: Sequence[Stretch], batch_size: int = 64,
           device: torch.device | str | None = None, precision: str = "fp32", stop_every: int = 256) -> Pending:
    """Queue `stretch_log_likelihoods` on the device and return without waiting for it."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    shape = [[1 + len(site.alts) for site in s.sites] for s in stretches]
    n_slots = sum(map(sum, shape))
    if n_slots == 0:
        return Pending(None, shape)
    sums = torch.zeros(n_slots, dtype=torch.float64, device=device)
    plans, slot = [], 0
    for stretch in stretches:
        plan, slot = _plan_pass(stretch, slot, stop_every)
        plans.append(plan)
    run = _Runner(model, device, precision, batch_size, sums)
    # Passes of similar length and stops share a batch, so little is read past a stretch's end.
    plans.sort(key=lambda p: (len(p.stops) > 1 or bool(p.ref_slots), p.length, sorted(p.stops)))
    for batch in _pass_batches(plans, batch_size):
        run.passes(batch)
    return Pending(sums, shape)


def _plan_pass(stretch: Stretch, slot: int, stop_every: int) -> tuple[_PassPlan, int]:
    """Stops and rows of one stretch; output slots are numbered from `slot` in stretch/site/allele order."""
    seq, sites = stretch.seq, stretch.sites
    shared = len({s.start for s in sites}) > 1
    plan = _PassPlan(stretch, length=0)
    for i, site in enumerate(sites):
        if not (0 <= site.start < site.start + site.ref_len <= site.end <= len(seq)):
            raise ValueError(f"site {site} does not fit a stretch of {len(seq)} bases")
        # The row starts at least one base before the site, whose last logits predict the allele's
        # first base; a site at the stretch's first base has no context at all (state 0).
        if site.start == 0:
            stop = 0
        elif shared:
            stop = (site.start - 1) // stop_every * stop_every
        else:
            stop = site.start - 1
        plan.stops.setdefault(stop, []).append(i)
        alleles = list(site.alts)
        if shared:
            plan.ref_slots.append((max(site.start, 1), site.end, slot))
        else:
            alleles.insert(0, seq[site.start:site.start + site.ref_len])
        first = max(site.start - stop, 1)
        for k, allele in enumerate(alleles):
            tokens = seq[stop:site.start] + allele + seq[site.start + site.ref_len:site.end]
            plan.rows.append((stop, tokens, first, slot + k + (1 if shared else 0)))
        slot += 1 + len(site.alts)
    # A pass that scores REF windows reads up to the last base it predicts; otherwise to the last stop.
    plan.length = max([e - 1 for _, e, _ in plan.ref_slots] + list(plan.stops))
    return plan, slot


def _pass_batches(plans: list[_PassPlan], batch_size: int):
    """Groups of at most batch_size passes whose rows fill about two batches (a variant's REF and ALT rows
    take two calls of batch_size after one reference call over batch_size passes: three model calls for
    batch_size variants, where each call's launches cost as much host time as its kernels take on the GPU at
    short windows); a pass with more rows than that goes alone."""
    batch, rows = [], 0
    for plan in plans:
        n = len(plan.rows)
        if batch and (rows + n > 2 * batch_size or len(batch) >= batch_size):
            yield batch
            batch, rows = [], 0
        batch.append(plan)
        rows += n
    if batch:
        yield batch


class _Runner:
    """Model calls for `submit`: reference passes, then allele rows from the saved states."""

    def __init__(self, model: MambaLM, device: torch.device, precision: str, batch_size: int, sums: torch.Tensor):
        self.model, self.device, self.precision, self.batch_size, self.sums = model, device, precision, batch_size, sums
        self.acgt = _acgt(device)  # once: a host-to-device copy would wait for the queued work

    def _upload(self, array: np.ndarray, dtype: torch.dtype = torch.long) -> torch.Tensor:
        t = torch.from_numpy(array)
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True).to(dtype)
        return t.to(dtype)

    def passes(self, plans: list[_PassPlan]) -> None:
        """The reference passes of `plans` as one batch (rows in lockstep), then all their allele rows."""
        B = len(plans)
        L = max(p.length for p in plans)
        tokens = np.zeros((B, L + 1), dtype=np.uint8)  # (B, L+1): a pass also needs the target after its last base
        for b, p in enumerate(plans):
            n = min(len(p.stretch.seq), L + 1)
            tokens[b, :n] = np.frombuffer(p.stretch.seq, dtype=np.uint8, count=n)
        tokens_d = self._upload(tokens)
        stops = sorted({s for p in plans for s in p.stops if s > 0})
        scoring = [b for b, p in enumerate(plans) if p.ref_slots]
        first_target = min((s for p in plans for s, _, _ in p.ref_slots), default=L + 1)
        ref_lp = torch.zeros(B, L + 1, dtype=torch.float32, device=self.device) if scoring else None
        saved: list[list[LayerState]] = []  # one entry per stop with rows to save, each a list over layers
        index: dict[tuple[int, int], int] = {}  # (pass row, stop) -> saved state number (0 is the zero state)
        n_saved = 0
        cap = max(1, self.batch_size * _PIECE_TOKENS // B)
        bounds = sorted(set(stops) | {L} | set(range(cap, L, cap)))
        state, b0 = None, 0
        with autocast(self.device, self.precision):
            for b1 in bounds:
                if b1 <= b0:
                    continue
                piece = tokens_d[:, b0:b1]  # (B, l)
                if ref_lp is not None and b1 >= first_target:
                    logits, state = self.model(piece, state=state, return_state=True)  # (B, l, vocab)
                    ref_lp[:, b0 + 1:b1 + 1] = _target_logp(logits, tokens_d[:, b0 + 1:b1 + 1], self.acgt)
                else:
                    state = self.model.advance(piece, state)
                rows = [b for b, p in enumerate(plans) if b1 in p.stops]
                if rows:
                    idx = self._upload(np.array(rows, dtype=np.int64))
                    saved.append([LayerState(conv=s.conv[idx], ssm=s.ssm[idx]) for s in state])
                    for b in rows:
                        n_saved += 1
                        index[(b, b1)] = n_saved
                b0 = b1
        if ref_lp is not None:
            self._ref_sums(plans, ref_lp)
        del tokens_d, ref_lp, state
        rows = [_Row(tok, first, index.get((b, stop), 0), slot)
                for b, p in enumerate(plans) for stop, tok, first, slot in p.rows]
        self._rows(rows, saved)

    def _ref_sums(self, plans: list[_PassPlan], ref_lp: torch.Tensor) -> None:
        """REF window sums from the pass: cumulative log-probabilities between each site and its end."""
        cum = torch.nn.functional.pad(ref_lp.double().cumsum(1), (1, 0))  # (B, L+2): cum[:, i] = sum of [0, i)
        b, lo, hi, slot = [], [], [], []
        for row, p in enumerate(plans):
            for start, end, s in p.ref_slots:
                b.append(row), lo.append(start), hi.append(end), slot.append(s)
        b, lo, hi, slot = (self._upload(np.array(x, dtype=np.int64)) for x in (b, lo, hi, slot))
        self.sums[slot] = cum[b, hi] - cum[b, lo]

    def _rows(self, rows: list[_Row], saved: list[list[LayerState]]) -> None:
        """Allele rows in batches of similar length, each row continued from its saved state."""
        if not rows:
            return
        layers = len(saved[0]) if saved else 0  # states per row: one per layer (one for a Markov model)
        if saved:
            conv = [torch.cat([s[i].conv for s in saved]) for i in range(layers)]  # (S, d_conv-1, d_inner)
            ssm = [torch.cat([s[i].ssm for s in saved]) for i in range(layers)]  # (S, d_inner, d_state)
            # State 0 is the zero state: a window at a contig start has no context.
            conv = [torch.cat([torch.zeros_like(c[:1]), c]) for c in conv]
            ssm = [torch.cat([torch.zeros_like(h[:1]), h]) for h in ssm]
        order = sorted(range(len(rows)), key=lambda r: -len(rows[r].tokens))
        for i in range(0, len(order), self.batch_size):
            batch = [rows[r] for r in order[i:i + self.batch_size]]
            L = len(batch[0].tokens)
            if L < 2:
                continue  # a one-base window predicts nothing
            tokens = np.zeros((len(batch), L), dtype=np.uint8)  # (R, L), PAD_ID on the right
            for r, row in enumerate(batch):
                tokens[r, :len(row.tokens)] = np.frombuffer(row.tokens, dtype=np.uint8)
            meta = self._upload(np.array([[row.first, len(row.tokens), row.state, row.slot] for row in batch],
                                         dtype=np.int64))  # (R, 4)
            tokens_d = self._upload(tokens)
            state = None
            if saved:
                which = meta[:, 2]
                state = [LayerState(conv=conv[k][which], ssm=ssm[k][which]) for k in range(layers)]
            with autocast(self.device, self.precision):
                logits = self.model(tokens_d, state=state)  # (R, L, vocab)
            lp = _target_logp(logits[:, :-1], tokens_d[:, 1:], self.acgt)  # (R, L-1): position j+1 from logits j
            pos = torch.arange(1, L, device=self.device)  # (L-1,)
            keep = (pos >= meta[:, :1]) & (pos < meta[:, 1:2])
            self.sums[meta[:, 3]] = torch.where(keep, lp, 0).double().sum(-1)
