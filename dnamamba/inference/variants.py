"""Zero-shot variant scores: the log-likelihood ratio of the ALT and REF windows under a causal LM.

For a variant at 0-based `start` with alleles REF and ALT, both windows are built from the same
reference flanks:

    REF window = left flank + REF + right flank
    ALT window = left flank + ALT + right flank

With `context=window` (the default) the left flank is the `window // 2` bases before the variant and
the right flank the `window - window // 2 - 1` reference bases after REF, so an SNV window is exactly
`window` bases and an indel's two windows differ in length by len(ALT) - len(REF), in the variant
part only. Near a contig end a flank is cut short at the end; nothing is padded.

The score (`reduce=sum`) is

    LLR = sum_i log P(alt_i | alt_<i) - sum_i log P(ref_i | ref_<i)

over the positions i from the variant start to the window end. Positions in the left flank are
left out because their log-probabilities are identical in both windows (a causal model has not seen
the variant yet). The first base of a window has no context and is never scored, which only matters
for a variant at the first base of a contig. Only targets that are A, C, G or T (either case) count,
as in training; N and other IUPAC codes are read as context only. `reduce=mean` divides each of the
two sums by its number of scored positions first (an empty mean is 0), which puts indels of different
lengths on one per-base scale.

`context=tile` is a different score with a longer left context. The contig is cut into tiles of
`tile_size` bases (default: `window`), and the windows of a variant start `window // 2` bases before
the start of its tile instead of before the variant, so the left context is between window // 2 and
window // 2 + tile_size bases; the right flank is unchanged. Every variant of one tile then shares the
reference read from that start, which makes dense variant sets (all variants of a region, saturation
mutagenesis) cheaper to score at long windows; for sparse sets it costs more.

With `rc_average` the score is the mean of the score above and the same score on the reverse
complements of both windows. There the shared prefix is the reverse-complemented right flank (under
`context=tile`, the tiles are laid from the contig's end on that strand).

How the windows are read is `method`, which never changes a score beyond float rounding: `shared`
reads what REF and ALT windows share once and carries the model state (`llr.py`); `plain` reads every
window whole, the definition itself.

Inputs are VCF/BCF files or tables with chrom, pos, ref, alt columns; outputs are the VCF with the
score in INFO (Number=A) or tables with score and status columns (`variant_files.py`).
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pysam
import torch

from .. import alphabet
from ..data.fasta import FastaFile
from ..errors import InputError, require_file
from ..io import atomic_path
from ..model import MambaLM
from .llr import (Site, Stretch, Window, plain_log_likelihoods, reverse_complement, stop_spacing,
                  stretch_log_likelihoods, submit, window_log_likelihoods)
from .markov import load_scorer
from .runtime import SETTINGS, check_choice, check_writable, note, progress_bar, resolve_device, write_errors
from .variant_files import (VCF_OUTPUTS, Entry, Selection, TableWriter, VcfWriter, contig_problem,
                            open_variants, output_kind)

__all__ = [
    "ScoreVariantsConfig", "Window", "allele_window", "classify_alt", "flank_lengths", "match_case",
    "output_kind", "plan_record", "score_vcf", "score_windows", "shared_prefix_log_likelihoods",
    "window_log_likelihoods", "window_span",
]

# Why an allele was not scored: the status written to table output, and its words in the summary.
SKIP_REASONS = {
    "missing_contig": "contig not in the FASTA",
    "outside_contig": "REF extends past the contig end",
    "ref_mismatch": "REF does not match the FASTA",
    "symbolic": "symbolic or structural-variant allele",
    "invalid_allele": "allele with characters that are not IUPAC nucleotide codes",
    "invalid_record": "record without chrom, pos (>= 1), ref or alt",
    "no_alt": "no ALT allele",
}
SOFT_MASK_MODES = ("keep", "upper")
MIN_WINDOW = 16  # bases; shorter windows leave the model next to no context to score a variant in
METHODS = ("shared", "plain")
CONTEXTS = ("window", "tile")
REDUCES = ("sum", "mean")

_IUPAC = frozenset(alphabet.IUPAC + alphabet.IUPAC.lower())
_ACGT = b"ACGTacgt"


@dataclass
class ScoreVariantsConfig:
    """`dnamamba score-variants` settings; conf/score_variants.yaml fills in the same keys."""

    model: str = "???"  # export directory (config.json + model.safetensors), or a fit-markov folder
    fasta: str = "???"  # reference FASTA (plain, gzip or bgzip)
    vcf: str = "???"  # input: VCF/BCF, or a .tsv/.csv(.gz)/.parquet table with chrom, pos, ref, alt
    out: str = "???"  # .vcf, .vcf.gz, .bcf (VCF input only), .tsv, .csv or .parquet
    window: int = 1024  # bases of context around each variant
    context: str = "window"  # window: window//2 bases before the variant | tile: from window//2 before its tile
    tile_size: int = 0  # context=tile: tile length in bases; 0 means `window`
    reduce: str = "sum"  # sum | mean: per-window sums, or means over the scored positions
    rc_average: bool = False  # average with the score on reverse-complemented windows
    method: str = "shared"  # shared: read shared context once | plain: every window whole (same scores)
    regions: Optional[Any] = None  # chrom, chrom:start-end (1-based), a list of them, or a .bed file
    shard: Optional[str] = None  # i/n: score the i-th of n contiguous parts (0 <= i < n)
    strict: bool = False  # fail on the first bad record (as listed in SKIP_REASONS) instead of skipping it
    info_field: str = "DNAMAMBA_LLR"
    soft_mask: str = "keep"  # keep: FASTA case, ALT takes the case of the REF base; upper: all uppercase
    batch_size: int = 64  # windows per forward pass
    block_records: int = 4096  # records read, scored and written per block (bounds memory)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    index: bool = True  # write a .tbi beside a .vcf.gz output when the records are sorted
    cache_dir: Optional[str] = None  # decompressed FASTA and indexes; default $DNAMAMBA_CACHE
    progress: bool = True

    def validate(self) -> None:
        if self.window < MIN_WINDOW:
            raise InputError(SETTINGS, f"window={self.window} is below {MIN_WINDOW}: the window//2 bases before a "
                                       f"variant are all the context the model gets (window=1 scores every variant 0)")
        if self.tile_size < 0:
            raise InputError(SETTINGS, f"tile_size={self.tile_size} must be 0 (= window) or more")
        if self.batch_size < 1 or self.block_records < 1:
            raise InputError(SETTINGS, "batch_size and block_records must be at least 1")
        check_choice("soft_mask", self.soft_mask, SOFT_MASK_MODES)
        check_choice("method", self.method, METHODS)
        check_choice("context", self.context, CONTEXTS)
        check_choice("reduce", self.reduce, REDUCES)
        if not self.info_field or not (self.info_field[0].isalpha() or self.info_field[0] == "_") or \
                not all(c.isalnum() or c in "_." for c in self.info_field):
            raise InputError(SETTINGS, f"info_field={self.info_field!r} is not a valid VCF INFO key")
        output_kind(self.out)

    @property
    def tile(self) -> int:
        return self.tile_size or self.window


def flank_lengths(window: int) -> tuple[int, int]:
    """(left, right) flank lengths for a window of `window` bases: an SNV window is exactly `window`."""
    left = window // 2
    return left, window - left - 1


def window_span(start: int, ref_len: int, contig_length: int, window: int) -> tuple[int, int]:
    """Reference bases [lo, hi) that the windows of a variant at `start` with a REF of `ref_len` cover,
    cut at the contig ends."""
    left, right = flank_lengths(window)
    return max(0, start - left), min(contig_length, start + ref_len + right)


def allele_window(context: bytes, context_start: int, start: int, ref_len: int, allele: bytes) -> Window:
    """The window for `allele` replacing the `ref_len` reference bases at `start`.

    `context` is the reference [context_start, context_start + len(context)) from `window_span`.
    """
    i = start - context_start
    left, right = context[:i], context[i + ref_len:]
    return Window(left + allele + right, left=len(left), right=len(right))


def match_case(allele: bytes, reference_base: bytes) -> bytes:
    """Soft-masking of the reference carried over to an allele: lowercase where the reference base is."""
    return allele.lower() if reference_base.islower() else allele.upper()


def shared_prefix_log_likelihoods(model: MambaLM, groups: Sequence[Sequence[Window]], batch_size: int = 64,
                                  device: torch.device | str | None = None, precision: str = "fp32"
                                  ) -> list[np.ndarray]:
    """`window_log_likelihoods` for groups of windows that share their first `left` bases (a variant's
    REF and ALT windows), reading the shared prefix once: one float64 array per group."""
    stretches = []
    for g in groups:
        p = g[0].left
        # The group is one site at p: its "REF" is the rest of the first window, its ALTs the others'.
        stretches.append(Stretch(g[0].seq, [Site(p, len(g[0].seq) - p, [w.seq[p:] for w in g[1:]],
                                                 len(g[0].seq))]))
    return [per_site[0] for per_site in stretch_log_likelihoods(model, stretches, batch_size, device, precision)]


def score_windows(model: MambaLM, pairs: Sequence[tuple[Window, Window]], rc_average: bool = False,
                  reduce: str = "sum", **kwargs) -> np.ndarray:
    """LLR per (ref_window, alt_window) pair, float64 (n_pairs,). kwargs go to shared_prefix_log_likelihoods.

    Consecutive pairs with the same REF window object (the ALTs of one record) share one REF row.
    """
    check_choice("reduce", reduce, REDUCES)
    groups: list[list[Window]] = []
    slots: list[tuple[int, int]] = []  # (group, index of the ALT window in it) per pair
    for ref_w, alt_w in pairs:
        if not groups or groups[-1][0] is not ref_w:
            groups.append([ref_w])
        groups[-1].append(alt_w)
        slots.append((len(groups) - 1, len(groups[-1]) - 1))
    strands = [groups] + ([[[w.reverse_complement() for w in g] for g in groups]] if rc_average else [])
    total = np.zeros(len(pairs), dtype=np.float64)
    for strand in strands:
        ll = shared_prefix_log_likelihoods(model, strand, **kwargs)
        if reduce == "mean":
            ll = [v / np.maximum(1, [_scored_bases(w.seq, w.left) for w in g]) for v, g in zip(ll, strand)]
        total += np.array([ll[g][i] - ll[g][0] for g, i in slots], dtype=np.float64)
    return total / len(strands)


def _scored_bases(seq: bytes, first: int) -> int:
    """A/C/G/T bases at positions >= max(first, 1): the positions a window's log-likelihood sums."""
    tail = seq[max(first, 1):]
    return sum(tail.count(c) for c in _ACGT)


def classify_alt(alt: str | None) -> str | None:
    """The skip reason for an ALT allele, or None when it can be scored."""
    if alt is None:
        return "no_alt"
    if alt in ("*", ".") or alt.startswith("<") or "[" in alt or "]" in alt or \
            alt.startswith(".") or alt.endswith("."):
        return "symbolic"
    if not alt or any(c not in _IUPAC for c in alt):
        return "invalid_allele"
    return None


class _Reference:
    """FASTA reads for scoring, soft-masking applied, served from aligned chunks of 64 kb that are kept
    (the last 4096 of them, 256 MB), so the checks and the windows of nearby variants read the file once."""

    CHUNK = 1 << 16
    KEEP = 1 << 12

    def __init__(self, fasta: FastaFile, soft_mask: str):
        self.fasta, self.upper = fasta, soft_mask == "upper"
        self.path = fasta.path
        self._chunks: OrderedDict[tuple[str, int], bytes] = OrderedDict()

    def __contains__(self, chrom) -> bool:
        return chrom in self.fasta

    def length(self, chrom: str) -> int:
        return self.fasta.lengths[chrom]

    def fetch(self, chrom: str, lo: int, hi: int) -> bytes:
        C = self.CHUNK
        first, last = lo // C, max(lo, hi - 1) // C
        if first == last:
            return self._chunk(chrom, first)[lo - first * C:hi - first * C]
        return b"".join(self._chunk(chrom, k)[max(lo - k * C, 0):hi - k * C] for k in range(first, last + 1))

    def _chunk(self, chrom: str, k: int) -> bytes:
        key = (chrom, k)
        if key in self._chunks:
            self._chunks.move_to_end(key)
        else:
            seq = self.fasta.fetch(chrom, k * self.CHUNK, min(self.length(chrom), (k + 1) * self.CHUNK))
            self._chunks[key] = seq.upper() if self.upper else seq
            if len(self._chunks) > self.KEEP:
                self._chunks.popitem(last=False)
        return self._chunks[key]


@dataclass
class _Plan:
    """One input record: the status of each ALT and, for the scorable ones, the allele bases to score."""

    entry: Entry
    statuses: list[str]  # "ok" or a SKIP_REASONS key, per ALT
    detail: list[str]  # words for an error message, per ALT
    alleles: list[Optional[bytes]] = field(default_factory=list)  # per ALT: bases in the reference's case
    start: int = 0  # 0-based
    ref: bytes = b""  # REF as the FASTA has it

    @property
    def record(self):
        return self.entry.source

    @property
    def scorable(self) -> list[int]:
        return [k for k, s in enumerate(self.statuses) if s == "ok"]


def check_entry(entry: Entry, reference: _Reference, soft_mask: str) -> _Plan:
    """Check one record against the FASTA: the status of each ALT, and the bases of the scorable ones."""
    n = len(entry.alts)

    def whole(reason: str, detail: str) -> _Plan:
        return _Plan(entry, [reason] * n, [detail] * n, [None] * n)

    if not entry.complete or entry.pos < 1:
        return whole("invalid_record", f"chrom {entry.chrom!r}, pos {entry.pos!r}, ref {entry.ref!r}, "
                                       f"alt {entry.alts[0]!r}")
    ref = entry.ref.upper()
    if entry.chrom not in reference:
        return whole("missing_contig", f"contig {entry.chrom!r} is not in {reference.path}")
    length = reference.length(entry.chrom)
    start = entry.pos - 1
    if start + len(ref) > length or not ref:
        return whole("outside_contig", f"REF {ref!r} at {entry.pos} runs past the contig end (length {length})")
    found = reference.fetch(entry.chrom, start, start + len(ref))
    if found.upper() != ref.encode(errors="replace"):
        return whole("ref_mismatch", f"REF is {_short(ref)!r} but {reference.path} has {_short(found.decode())!r}")
    plan = _Plan(entry, [], [], [], start, found)
    for alt in entry.alts:
        reason = classify_alt(alt)
        if reason is None:
            plan.alleles.append(match_case(alt.encode(), found[:1]) if soft_mask == "keep" else alt.upper().encode())
            plan.statuses.append("ok")
            plan.detail.append("")
        else:
            plan.alleles.append(None)
            plan.statuses.append(reason)
            plan.detail.append(f"ALT {_short(alt)!r}" if alt is not None else "ALT is '.'")
    return plan


def plan_record(rec: pysam.VariantRecord, fasta: FastaFile, window: int, soft_mask: str,
                pairs: list[tuple[Window, Window]]) -> _Plan:
    """Check one pysam record against the FASTA and append the (REF, ALT) windows of its scorable ALTs."""
    entry = Entry(rec.chrom, rec.pos, rec.id, rec.ref, list(rec.alts) if rec.alts else [None], rec)
    return plan_entry(entry, _Reference(fasta, soft_mask), window, soft_mask, pairs)


def plan_entry(entry: Entry, reference: _Reference, window: int, soft_mask: str,
               pairs: list[tuple[Window, Window]]) -> _Plan:
    """Check one record (VCF or table row) and append the (REF, ALT) windows of its scorable ALTs."""
    plan = check_entry(entry, reference, soft_mask)
    if plan.scorable:
        lo, hi = window_span(plan.start, len(plan.ref), reference.length(entry.chrom), window)
        context = reference.fetch(entry.chrom, lo, hi)
        ref_window = allele_window(context, lo, plan.start, len(plan.ref), plan.ref)
        for k in plan.scorable:
            pairs.append((ref_window, allele_window(context, lo, plan.start, len(plan.ref), plan.alleles[k])))
    return plan


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _Layout:
    """The stretches of one block and where each scorable allele's log-likelihoods are in them."""

    def __init__(self):
        self.stretches: list[Stretch] = []
        self.where: dict[tuple[int, int], tuple[int, int]] = {}  # (plan, strand) -> (stretch, site)


def layout_block(plans: Sequence[_Plan], reference: _Reference, cfg: ScoreVariantsConfig) -> _Layout:
    """Stretches for the scorable alleles of `plans` under cfg.context, on one or both strands."""
    out = _Layout()
    left, right = flank_lengths(cfg.window)
    tiles: dict[tuple, list[tuple[int, int, int, int, list[bytes]]]] = defaultdict(list)
    for p, plan in enumerate(plans):
        if not plan.scorable:
            continue
        chrom, r = plan.entry.chrom, len(plan.ref)
        n = reference.length(chrom)
        alleles = [plan.alleles[k] for k in plan.scorable]
        strands = [(0, plan.start, alleles, left, right)]
        if cfg.rc_average:  # the other strand: coordinates from the contig's end, flanks swapped
            strands.append((1, n - plan.start - r, [reverse_complement(a) for a in alleles], right, left))
        for strand, s, al, before, after in strands:
            end = min(n, s + r + after)
            if cfg.context == "window":
                a = max(0, s - before)
                seq = _strand_fetch(reference, chrom, strand, a, end)
                out.where[(p, strand)] = (len(out.stretches), 0)
                out.stretches.append(Stretch(seq, [Site(s - a, r, al, end - a)]))
            else:
                a = max(0, s // cfg.tile * cfg.tile - before)
                tiles[(chrom, strand, a)].append((p, s, r, end, al))
    for (chrom, strand, a), members in tiles.items():
        seq = _strand_fetch(reference, chrom, strand, a, max(m[3] for m in members))
        for i, (p, s, r, end, al) in enumerate(members):
            out.where[(p, strand)] = (len(out.stretches), i)
        out.stretches.append(Stretch(seq, [Site(s - a, r, al, end - a) for _, s, r, end, al in members]))
    return out


def _strand_fetch(reference: _Reference, chrom: str, strand: int, lo: int, hi: int) -> bytes:
    """Bases [lo, hi) of the forward strand, or of the reverse strand (counted from the contig's end)."""
    if strand == 0:
        return reference.fetch(chrom, lo, hi)
    n = reference.length(chrom)
    return reverse_complement(reference.fetch(chrom, n - hi, n - lo))


def block_scores(plans: Sequence[_Plan], layout: _Layout, ll: list[list[np.ndarray]], reduce: str
                 ) -> list[list[Optional[float]]]:
    """Per plan, per ALT: the score (averaged over the strands laid out), or None when not scored."""
    out = []
    for p, plan in enumerate(plans):
        scores: list[Optional[float]] = [None] * len(plan.statuses)
        strands = [w for w in ((p, 0), (p, 1)) if w in layout.where]
        if strands:
            total = np.zeros(len(plan.scorable))
            for key in strands:
                i, j = layout.where[key]
                values = ll[i][j]
                if reduce == "mean":
                    values = values / np.maximum(1, _site_counts(layout.stretches[i], j))
                total += values[1:] - values[0]
            for k, v in zip(plan.scorable, total / len(strands)):
                scores[k] = float(v)
        out.append(scores)
    return out


def _site_counts(stretch: Stretch, j: int) -> np.ndarray:
    """Scored positions of site j's REF and ALT windows (see `_scored_bases`)."""
    site, seq = stretch.sites[j], stretch.seq
    tail = seq[site.start + site.ref_len:site.end]
    windows = [seq[site.start:site.start + site.ref_len] + tail] + [a + tail for a in site.alts]
    return np.array([_scored_bases(w, 0 if site.start else 1) for w in windows], dtype=np.float64)


def score_vcf(cfg: ScoreVariantsConfig) -> dict:
    """Score every ALT allele of `cfg.vcf` (a VCF/BCF or a table) and write `cfg.out`; returns a summary."""
    t0 = time.time()
    cfg.validate()
    source = open_variants(cfg.vcf)
    require_file(cfg.fasta, "FASTA file")
    kind = output_kind(cfg.out)
    if kind in VCF_OUTPUTS.values() and source.kind != "vcf":
        raise InputError(cfg.out, "a VCF/BCF output needs a VCF/BCF input; write .tsv, .csv or .parquet")
    check_writable(cfg.out)
    device = resolve_device(cfg.device)
    verbosity = pysam.set_verbosity(0)  # htslib's warnings would break the one-line error contract
    try:
        with FastaFile(cfg.fasta, cache_dir=cfg.cache_dir) as fasta:
            selection = Selection.parse(cfg.regions, cfg.shard, fasta)
            total = _prescan(source, selection, fasta, cfg)
            model = load_scorer(cfg.model, device)
            reference = _Reference(fasta, cfg.soft_mask)
            source.open()
            try:
                with write_errors(cfg.out):
                    summary = _score_records(cfg, kind, model, device, reference, source, selection, total)
            finally:
                source.close()
    finally:
        pysam.set_verbosity(verbosity)
    summary["wall_time_s"] = round(time.time() - t0, 3)
    return summary


def _prescan(source, selection: Selection, fasta: FastaFile, cfg: ScoreVariantsConfig) -> int:
    """Read the input once without scoring: the number of records in the regions, checked for contigs
    that the FASTA has (none at all is an error, with a hint about `chr` prefixes)."""
    n_file, n, contigs = 0, 0, Counter()
    for entry in source.scan():
        n_file += 1
        if selection.contains(entry):
            n += 1
            contigs[entry.chrom] += 1
    if n_file == 0:
        raise InputError(source.path, "no variant records (the VCF has a header only)" if source.kind == "vcf"
                         else "no rows")
    if n == 0:
        raise InputError(source.path, f"no record lies in regions={cfg.regions}")
    problem = contig_problem(contigs, fasta)
    if problem:
        raise InputError(source.path, problem)
    return n


def _describe(cfg: ScoreVariantsConfig) -> tuple[str, str]:
    context = (f"window {cfg.window} bp" if cfg.context == "window" else
               f"window {cfg.window} bp from {cfg.window // 2} bp before its {cfg.tile}-bp tile")
    description = (f"dnamamba zero-shot log-likelihood ratio log P(ALT window) - log P(REF window)"
                   f"{', per scored base' if cfg.reduce == 'mean' else ''}; model {os.path.abspath(cfg.model)}, "
                   f"{context}{', averaged over both strands' if cfg.rc_average else ''}").replace('"', "'")
    meta = (f"model={os.path.abspath(cfg.model)};fasta={os.path.abspath(cfg.fasta)};window={cfg.window};"
            f"context={cfg.context};tile_size={cfg.tile};reduce={cfg.reduce};"
            f"rc_average={str(cfg.rc_average).lower()};soft_mask={cfg.soft_mask};info_field={cfg.info_field}")
    return description, meta


def _score_records(cfg: ScoreVariantsConfig, kind: str, model: MambaLM, device: torch.device,
                   reference: _Reference, source, selection: Selection, total: int) -> dict:
    description, meta = _describe(cfg)
    counts: Counter = Counter()
    n_records = 0
    scored: list[float] = []
    lo, hi = selection.bounds(total)
    with atomic_path(cfg.out) as tmp:
        writer = TableWriter(tmp, kind, source) if kind in ("tsv", "csv", "parquet") else \
            VcfWriter(tmp, kind, source, cfg.info_field, description, meta)
        try:
            with progress_bar(cfg.progress, "records") as progress:
                task = progress.add_task("scoring", total=hi - lo)
                pending = None
                # While the device scores one block, the next one is read and planned here.
                for block in _blocks(selection.pick(source.entries(), total), cfg.block_records):
                    plans = [check_entry(entry, reference, cfg.soft_mask) for entry in block]
                    if cfg.strict:
                        _fail_on_skip(plans, source.path)
                    layout = layout_block(plans, reference, cfg)
                    if cfg.method == "plain":
                        job = plain_log_likelihoods(model, layout.stretches, cfg.batch_size, device, cfg.precision)
                    else:
                        job = submit(model, layout.stretches, cfg.batch_size, device, cfg.precision,
                                     stop_spacing(cfg.window))
                    if pending is not None:
                        _write_block(writer, *pending, cfg.reduce, counts, scored)
                        progress.advance(task, len(pending[0]))
                    pending = (plans, layout, job)
                    n_records += len(block)
                if pending is not None:
                    _write_block(writer, *pending, cfg.reduce, counts, scored)
                    progress.advance(task, len(pending[0]))
        finally:
            writer.close()
        if kind == "wz":
            _tabix(tmp, cfg.out, cfg.index)
    skipped = {reason: counts[reason] for reason in SKIP_REASONS if counts[reason]}
    n_alleles = sum(counts.values())
    line = f"scored {counts['ok']} of {n_alleles} alleles in {n_records} records -> {cfg.out}"
    if (lo, hi) != (0, total):
        line += f" (shard {cfg.shard}: records {lo + 1}-{hi} of {total}{' in the regions' if cfg.regions else ''})"
    elif cfg.regions:
        line += " (records in the regions)"
    if skipped:
        line += "; skipped: " + ", ".join(f"{SKIP_REASONS[r]} {c}" for r, c in skipped.items())
    note(line)
    nonfinite = sum(not math.isfinite(s) for s in scored)
    return {"records": n_records, "alleles": n_alleles, "scored": counts["ok"], "skipped": skipped,
            "nonfinite_scores": nonfinite, "out": cfg.out}


def _write_block(writer, plans: list[_Plan], layout: _Layout, job, reduce: str, counts: Counter,
                 scored: list[float]) -> None:
    for plan, scores in zip(plans, block_scores(plans, layout, job.result(), reduce)):
        writer.write(plan.entry, plan.statuses, scores)
        counts.update(plan.statuses)
        scored.extend(s for s in scores if s is not None)


def _blocks(records: Iterable, size: int) -> Iterator[list]:
    block = []
    for rec in records:
        block.append(rec)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _fail_on_skip(plans: Sequence[_Plan], path: str) -> None:
    for plan in plans:
        for status, detail in zip(plan.statuses, plan.detail):
            if status not in ("ok", "no_alt"):  # a record with ALT '.' has nothing to score, but is valid
                raise InputError(path, f"{SKIP_REASONS[status]}: {detail} (strict=true)", record=plan.entry.where)


def _tabix(tmp: str, out: str, index: bool = True) -> None:
    """Index the finished bgzip VCF as out.tbi (an unsorted file is left unindexed, with a note), or, without
    `index`, remove an out.tbi of an earlier output, which would not match this one."""
    if not index:
        if os.path.exists(out + ".tbi"):
            os.unlink(out + ".tbi")
        return
    try:
        with atomic_path(out + ".tbi") as tmp_index:
            pysam.tabix_index(tmp, preset="vcf", force=True, keep_original=True, index=tmp_index)
    except (OSError, ValueError):
        if os.path.exists(out + ".tbi"):
            os.unlink(out + ".tbi")  # an index of an earlier output would not match this one
        note(f"{out} not indexed: tabix needs the records sorted by contig and position "
             f"(bcftools sort, then tabix -p vcf)")
