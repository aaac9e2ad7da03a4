"""Zero-shot variant scores: the log-likelihood ratio of the ALT and REF windows under a causal LM.

For a variant at 0-based `start` with alleles REF and ALT, both windows are built from the same
reference flanks:

    REF window = left flank + REF + right flank
    ALT window = left flank + ALT + right flank

The left flank is the `window // 2` bases before the variant and the right flank the
`window - window // 2 - 1` reference bases after REF, so an SNV window is exactly `window` bases and
an indel's two windows differ in length by len(ALT) - len(REF), in the variant part only. Near a
contig end a flank is cut short at the end; nothing is padded.

The score is

    LLR = sum_i log P(alt_i | alt_<i) - sum_i log P(ref_i | ref_<i)

over the positions i from the variant start to the window end. Positions in the left flank are
left out because their log-probabilities are identical in both windows (a causal model has not seen
the variant yet). The first base of a window has no context and is never scored, which only matters
for a variant at the first base of a contig. Only targets that are A, C, G or T (either case) count,
as in training; N and other IUPAC codes are read as context only.

With `rc_average` the score is the mean of the score above and the same score on the reverse
complements of both windows. There the shared prefix is the reverse-complemented right flank.

The shared prefix is read once per record: its final recurrent state is carried into the REF window
and each ALT window (`shared_prefix_log_likelihoods`). `window_log_likelihoods`, which reads every
window whole, is the reference it is tested against.

The VCF side is pysam's: records are read with `pysam.VariantFile` and written back unchanged except
for one INFO field (Number=A: one score per ALT allele).
"""
from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import pysam
import torch

from .. import alphabet
from ..data.fasta import FastaFile
from ..errors import InputError, require_file
from ..io import atomic_path
from ..model import LayerState, MambaLM
from .markov import load_scorer
from .runtime import (SETTINGS, autocast, check_choice, check_writable, note, progress_bar, resolve_device,
                      write_errors)

# Why an allele was not scored: the status written to TSV output, and its words in the summary.
SKIP_REASONS = {
    "missing_contig": "contig not in the FASTA",
    "outside_contig": "REF extends past the contig end",
    "ref_mismatch": "REF does not match the FASTA",
    "symbolic": "symbolic or structural-variant allele",
    "invalid_allele": "allele with characters that are not IUPAC nucleotide codes",
    "no_alt": "no ALT allele",
}
SOFT_MASK_MODES = ("keep", "upper")
OUTPUT_KINDS = {".vcf": "w", ".vcf.gz": "wz", ".vcf.bgz": "wz", ".bcf": "wb", ".tsv": "tsv"}

_RC_TABLE = bytes(alphabet.COMPLEMENT.tolist())  # byte -> complement byte, case kept
_IUPAC = frozenset(alphabet.IUPAC + alphabet.IUPAC.lower())


@dataclass
class ScoreVariantsConfig:
    """`dnamamba score-variants` settings; conf/score_variants.yaml fills in the same keys."""

    model: str = "???"  # export directory (config.json + model.safetensors), or a fit-markov folder
    fasta: str = "???"  # reference FASTA (plain, gzip or bgzip)
    vcf: str = "???"  # input VCF or BCF
    out: str = "???"  # .vcf, .vcf.gz, .bcf or .tsv
    window: int = 1024  # bases of context around each variant
    rc_average: bool = False  # average with the score on reverse-complemented windows
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
        if self.window < 1:
            raise InputError(SETTINGS, f"window={self.window} must be at least 1")
        if self.batch_size < 1 or self.block_records < 1:
            raise InputError(SETTINGS, "batch_size and block_records must be at least 1")
        check_choice("soft_mask", self.soft_mask, SOFT_MASK_MODES)
        if not self.info_field or not (self.info_field[0].isalpha() or self.info_field[0] == "_") or \
                not all(c.isalnum() or c in "_." for c in self.info_field):
            raise InputError(SETTINGS, f"info_field={self.info_field!r} is not a valid VCF INFO key")
        output_kind(self.out)


def output_kind(path: str) -> str:
    """pysam's write mode for `path` ('w', 'wz', 'wb'), or 'tsv'; InputError for other extensions."""
    name = os.path.basename(path).lower()
    for ext, kind in sorted(OUTPUT_KINDS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(ext) and len(name) > len(ext):
            return kind
    raise InputError(path, f"output must end in one of {', '.join(OUTPUT_KINDS)}")


@dataclass(frozen=True)
class Window:
    """`seq` = left flank + allele + right flank; the flanks are reference bases."""

    seq: bytes
    left: int  # length of the left flank: the prefix shared with the other allele's window
    right: int  # length of the right flank

    def reverse_complement(self) -> "Window":
        """The window on the other strand: the right flank (complemented) becomes the shared prefix."""
        return Window(self.seq.translate(_RC_TABLE)[::-1], left=self.right, right=self.left)


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


@torch.no_grad()
def window_log_likelihoods(model: MambaLM, windows: Sequence[Window], batch_size: int = 64,
                           device: torch.device | str | None = None, precision: str = "fp32") -> np.ndarray:
    """Sum of log P(seq_i | seq_<i) over i >= max(left, 1) where seq_i is A, C, G or T, per window.

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
        logits = logits[:, :-1].float()  # (B, L-1, vocab): predicts tokens[:, 1:]
        target = tokens[:, 1:]  # (B, L-1)
        logp = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)
        pos = torch.arange(1, L, device=device)  # (L-1,) the position of each target
        first = torch.tensor([max(windows[k].left, 1) for k in idx], device=device)
        keep = (pos >= first[:, None]) & (pos < lengths.to(device)[:, None]) & alphabet.loss_mask(target)
        sums = (logp.double() * keep).sum(-1)  # (B,)
        out[idx] = sums.cpu().numpy()
    return out


@torch.no_grad()
def shared_prefix_log_likelihoods(model: MambaLM, groups: Sequence[Sequence[Window]], batch_size: int = 64,
                                  device: torch.device | str | None = None, precision: str = "fp32"
                                  ) -> list[np.ndarray]:
    """`window_log_likelihoods` for groups of windows that share their first `left` bases (a variant's
    REF and ALT windows), reading the shared prefix once.

    The prefix runs once per group and returns the model's recurrent state, which each window of the
    group continues from; its last logits predict each window's first base after the prefix. This is
    the same computation as reading each whole window (the state is what makes chunked reading exact),
    with len(prefix) * (len(group) - 1) fewer positions. Returns one float64 array per group.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = [np.zeros(len(g), dtype=np.float64) for g in groups]
    by_prefix: dict[int, list[int]] = {}
    for k, g in enumerate(groups):
        by_prefix.setdefault(g[0].left, []).append(k)  # prefixes of one length batch without padding
    for p, members in by_prefix.items():
        start = 0
        while start < len(members):
            stop, rows = start, 0
            while stop < len(members) and (rows == 0 or rows + len(groups[members[stop]]) <= batch_size):
                rows += len(groups[members[stop]])
                stop += 1
            batch = members[start:stop]
            start = stop
            sums = _score_group_batch(model, [groups[k] for k in batch], p, device, precision)
            offset = 0
            for k in batch:
                out[k][:] = sums[offset:offset + len(groups[k])]
                offset += len(groups[k])
    return out


def _score_group_batch(model: MambaLM, groups: Sequence[Sequence[Window]], p: int, device: torch.device,
                       precision: str) -> np.ndarray:
    """One forward batch of `shared_prefix_log_likelihoods`: groups whose windows share a prefix of p bases."""
    windows = [w for g in groups for w in g]
    owner = torch.tensor([i for i, g in enumerate(groups) for _ in g], device=device)  # (R,) group of each row
    lengths = torch.tensor([len(w.seq) - p for w in windows], device=device)  # (R,) bases after the prefix
    Ls = int(lengths.max())
    suffix = torch.zeros(len(windows), Ls, dtype=torch.long)  # (R, Ls), PAD_ID on the right
    for r, w in enumerate(windows):
        suffix[r, :len(w.seq) - p] = alphabet.encode(w.seq[p:])
    suffix = suffix.to(device)
    with autocast(device, precision):
        if p > 0:
            prefix = torch.stack([alphabet.encode(g[0].seq[:p]) for g in groups]).to(device)  # (G, p)
            prefix_logits, state = model(prefix, return_state=True)  # (G, p, vocab)
            state = [LayerState(conv=s.conv[owner], ssm=s.ssm[owner]) for s in state]  # one per row
            logits = model(suffix, state=state)  # (R, Ls, vocab)
            # Target j of the suffix is predicted by the last prefix position (j = 0) or suffix position j-1.
            logits = torch.cat([prefix_logits[owner, -1:], logits[:, :-1]], dim=1).float()  # (R, Ls, vocab)
            first = 0
        else:
            logits = model(suffix).float()  # a window at the contig start: its first base has no context
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)  # position 0 is masked out below
            first = 1
    logp = logits.gather(-1, suffix.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)  # (R, Ls)
    pos = torch.arange(Ls, device=device)  # (Ls,)
    keep = (pos >= first) & (pos[None, :] < lengths[:, None]) & alphabet.loss_mask(suffix)
    return (logp.double() * keep).sum(-1).cpu().numpy()


def score_windows(model: MambaLM, pairs: Sequence[tuple[Window, Window]], rc_average: bool = False,
                  **kwargs) -> np.ndarray:
    """LLR per (ref_window, alt_window) pair, float64 (n_pairs,). kwargs go to shared_prefix_log_likelihoods.

    Consecutive pairs with the same REF window object (the ALTs of one record) share one REF row.
    """
    groups: list[list[Window]] = []
    slots: list[tuple[int, int]] = []  # (group, index of the ALT window in it) per pair
    for ref_w, alt_w in pairs:
        if not groups or groups[-1][0] is not ref_w:
            groups.append([ref_w])
        groups[-1].append(alt_w)
        slots.append((len(groups) - 1, len(groups[-1]) - 1))
    ll = shared_prefix_log_likelihoods(model, groups, **kwargs)
    llr = np.array([ll[g][i] - ll[g][0] for g, i in slots], dtype=np.float64)
    if not rc_average:
        return llr
    rc = shared_prefix_log_likelihoods(model, [[w.reverse_complement() for w in g] for g in groups], **kwargs)
    return (llr + np.array([rc[g][i] - rc[g][0] for g, i in slots], dtype=np.float64)) / 2


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


@dataclass
class _Plan:
    """One VCF record: the status of each ALT and where its windows are in the block's window list."""

    record: pysam.VariantRecord
    alts: list[str | None]
    statuses: list[str]  # "ok" or a SKIP_REASONS key, per ALT
    detail: list[str]  # words for an error message, per ALT
    pairs: list[int | None]  # index into the block's (ref, alt) pairs, per ALT


def plan_record(rec: pysam.VariantRecord, fasta: FastaFile, window: int, soft_mask: str,
                pairs: list[tuple[Window, Window]]) -> _Plan:
    """Check one record against the FASTA and append the (REF, ALT) windows of its scorable ALTs."""
    alts: list[str | None] = list(rec.alts) if rec.alts else [None]
    n = len(alts)
    ref = (rec.ref or "").upper()

    def whole(reason: str, detail: str) -> _Plan:
        return _Plan(rec, alts, [reason] * n, [detail] * n, [None] * n)

    if rec.chrom not in fasta:
        return whole("missing_contig", f"contig {rec.chrom!r} is not in {fasta.path}")
    length = fasta.lengths[rec.chrom]
    if rec.start + len(ref) > length or not ref:
        return whole("outside_contig", f"REF {ref!r} at {rec.pos} runs past the contig end (length {length})")
    lo, hi = window_span(rec.start, len(ref), length, window)
    context = fasta.fetch(rec.chrom, lo, hi)
    if soft_mask == "upper":
        context = context.upper()
    i = rec.start - lo
    found = context[i:i + len(ref)]
    if found.upper() != ref.encode():
        return whole("ref_mismatch", f"REF is {_short(ref)!r} but {fasta.path} has {_short(found.decode())!r}")
    ref_window = allele_window(context, lo, rec.start, len(ref), found)
    plan = _Plan(rec, alts, [], [], [])
    for alt in alts:
        reason = classify_alt(alt)
        if alt is not None and reason is None:
            allele = match_case(alt.encode(), found[:1]) if soft_mask == "keep" else alt.upper().encode()
            plan.pairs.append(len(pairs))
            pairs.append((ref_window, allele_window(context, lo, rec.start, len(ref), allele)))
            plan.statuses.append("ok")
            plan.detail.append("")
        else:
            plan.pairs.append(None)
            plan.statuses.append(reason)
            plan.detail.append(f"ALT {_short(alt)!r}" if alt is not None else "ALT is '.'")
    return plan


def _short(text: str, limit: int = 24) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


class _VcfWriter:
    """Writes the records of `vcf` (not yet read) with the score added, through pysam.

    Every line the output header needs is added to the reading header before its first record is
    parsed, and the output is opened on that same header, so records are written as read, with no
    translation between headers: htslib flags a record parsed against a header that lacks its contig
    or tags, and ends the process when such a record is translated.
    """

    def __init__(self, path: str, mode: str, vcf: pysam.VariantFile, complete: pysam.VariantHeader, field: str,
                 description: str, meta: str, source: str):
        hdr = vcf.header
        missing = [complete.contigs[c].header_record for c in complete.contigs if c not in hdr.contigs]
        for declared, wanted in ((hdr.info, complete.info), (hdr.formats, complete.formats),
                                 (hdr.filters, complete.filters)):
            missing += [wanted[name].record for name in wanted if name not in declared]
        for record in missing:
            hdr.add_line(str(record).strip())
        if field in hdr.info:
            old = hdr.info[field]
            if old.number != "A" or old.type != "Float":
                raise InputError(source, f"INFO/{field} already exists as Number={old.number}, Type={old.type}; "
                                         f"choose another info_field")
        else:
            hdr.info.add(field, "A", "Float", description)
        # pysam sets END on records with symbolic alleles; declaring it keeps the output valid VCF.
        if "END" not in hdr.info:
            hdr.info.add("END", 1, "Integer", "Stop position of the interval")
        hdr.add_meta("dnamamba_score_variants", value=meta)
        self.field = field
        self.file = pysam.VariantFile(path, mode, header=hdr)

    def write(self, plan: _Plan, scores: list[float | None]) -> None:
        rec = plan.record
        if any(s is not None for s in scores) and rec.alts:
            rec.info[self.field] = tuple(scores)
        elif self.field in rec.info:
            del rec.info[self.field]
        self.file.write(rec)

    def close(self) -> None:
        self.file.close()


class _TsvWriter:
    COLUMNS = ("chrom", "pos", "id", "ref", "alt", "score", "status")

    def __init__(self, path: str):
        self.file = open(path, "w")
        self.file.write("\t".join(self.COLUMNS) + "\n")

    def write(self, plan: _Plan, scores: list[float | None]) -> None:
        rec = plan.record
        for alt, score, status in zip(plan.alts, scores, plan.statuses):
            cells = (rec.chrom, str(rec.pos), rec.id or ".", rec.ref or ".", alt or ".",
                     "NA" if score is None else f"{score:.6g}", status)
            self.file.write("\t".join(cells) + "\n")

    def close(self) -> None:
        self.file.close()


def _records(vcf: pysam.VariantFile, path: str) -> Iterator[pysam.VariantRecord]:
    """The VCF's records; a line htslib cannot parse becomes an InputError naming the record before it."""
    last = "the header"
    it = iter(vcf)
    while True:
        try:
            rec = next(it)
        except StopIteration:
            return
        except (OSError, ValueError) as e:
            raise InputError(path, f"unreadable VCF record after {last}: {e}") from None
        last = f"{rec.chrom}:{rec.pos}"
        yield rec


def _blocks(records: Iterable, size: int) -> Iterator[list]:
    block = []
    for rec in records:
        block.append(rec)
        if len(block) == size:
            yield block
            block = []
    if block:
        yield block


def _open_vcf(path: str) -> pysam.VariantFile:
    require_file(path, "VCF file")
    try:
        try:
            return pysam.VariantFile(path)
        except NotImplementedError:
            # Plain gzip (not bgzip): opened by name, pysam asks for an offset that only BGZF has; from an
            # open file it reads the stream sequentially, which is all scoring needs.
            return pysam.VariantFile(open(path, "rb"))
    except (OSError, ValueError) as e:
        raise InputError(path, f"not a readable VCF/BCF file ({e})") from None


def score_vcf(cfg: ScoreVariantsConfig) -> dict:
    """Score every ALT allele of `cfg.vcf` and write `cfg.out`; returns a summary dict."""
    t0 = time.time()
    cfg.validate()
    require_file(cfg.vcf, "VCF file")
    require_file(cfg.fasta, "FASTA file")
    kind = output_kind(cfg.out)
    check_writable(cfg.out)
    device = resolve_device(cfg.device)
    model = load_scorer(cfg.model, device)
    verbosity = pysam.set_verbosity(0)  # htslib's warnings would break the one-line error contract
    try:
        header, n_records = _prescan(cfg.vcf)
        with FastaFile(cfg.fasta, cache_dir=cfg.cache_dir) as fasta, _open_vcf(cfg.vcf) as vcf:
            with write_errors(cfg.out):
                summary = _score_records(cfg, kind, model, device, fasta, vcf, header, n_records)
    finally:
        pysam.set_verbosity(verbosity)
    summary["wall_time_s"] = round(time.time() - t0, 3)
    return summary


def _prescan(path: str) -> tuple[pysam.VariantHeader, int]:
    """Read the VCF once without scoring: the record count, and the header completed with what htslib
    adds while parsing (contigs, INFO and FORMAT tags the header never declared).

    The output header is written before the first record, and htslib ends the process (not an
    exception) when a record is translated to a header that lacks one of its tags; so the output
    header is built from this completed one.
    """
    with _open_vcf(path) as vcf:
        n_records = sum(1 for _ in _records(vcf, path))
        header = vcf.header.copy()
    if n_records == 0:
        raise InputError(path, "no variant records (the VCF has a header only)")
    return header, n_records


def _score_records(cfg: ScoreVariantsConfig, kind: str, model: MambaLM, device: torch.device,
                   fasta: FastaFile, vcf: pysam.VariantFile, header: pysam.VariantHeader, total: int) -> dict:
    description = (f"dnamamba zero-shot log-likelihood ratio log P(ALT window) - log P(REF window); "
                   f"model {os.path.abspath(cfg.model)}, window {cfg.window} bp"
                   f"{', averaged over both strands' if cfg.rc_average else ''}").replace('"', "'")
    meta = (f"model={os.path.abspath(cfg.model)};fasta={os.path.abspath(cfg.fasta)};window={cfg.window};"
            f"rc_average={str(cfg.rc_average).lower()};soft_mask={cfg.soft_mask};info_field={cfg.info_field}")
    counts: Counter = Counter()
    n_records = 0
    scored: list[float] = []
    with atomic_path(cfg.out) as tmp:
        writer = _TsvWriter(tmp) if kind == "tsv" else \
            _VcfWriter(tmp, kind, vcf, header, cfg.info_field, description, meta, cfg.vcf)
        try:
            with progress_bar(cfg.progress, "records") as progress:
                task = progress.add_task("scoring", total=total)
                for block in _blocks(_records(vcf, cfg.vcf), cfg.block_records):
                    pairs: list[tuple[Window, Window]] = []
                    plans = [plan_record(rec, fasta, cfg.window, cfg.soft_mask, pairs) for rec in block]
                    if cfg.strict:
                        _fail_on_skip(plans, cfg.vcf)
                    llr = score_windows(model, pairs, cfg.rc_average, batch_size=cfg.batch_size,
                                        device=device, precision=cfg.precision)
                    for plan in plans:
                        scores = [None if p is None else float(llr[p]) for p in plan.pairs]
                        writer.write(plan, scores)
                        counts.update(s for s in plan.statuses)
                        scored.extend(s for s in scores if s is not None)
                    n_records += len(block)
                    progress.advance(task, len(block))
        finally:
            writer.close()
        if kind == "wz" and cfg.index:
            _tabix(tmp, cfg.out)
        elif kind == "wz" and os.path.exists(cfg.out + ".tbi"):
            os.unlink(cfg.out + ".tbi")  # an index of an earlier output would not match this one
    skipped = {reason: counts[reason] for reason in SKIP_REASONS if counts[reason]}
    n_alleles = sum(counts.values())
    line = f"scored {counts['ok']} of {n_alleles} alleles in {n_records} records -> {cfg.out}"
    if skipped:
        line += "; skipped: " + ", ".join(f"{SKIP_REASONS[r]} {c}" for r, c in skipped.items())
    note(line)
    nonfinite = sum(not math.isfinite(s) for s in scored)
    return {"records": n_records, "alleles": n_alleles, "scored": counts["ok"], "skipped": skipped,
            "nonfinite_scores": nonfinite, "out": cfg.out}


def _fail_on_skip(plans: Sequence[_Plan], path: str) -> None:
    for plan in plans:
        for status, detail in zip(plan.statuses, plan.detail):
            if status not in ("ok", "no_alt"):  # a record with ALT '.' has nothing to score, but is valid
                rec = plan.record
                raise InputError(path, f"{SKIP_REASONS[status]}: {detail} (strict=true)",
                                 record=f"{rec.chrom}:{rec.pos}")


def _tabix(tmp: str, out: str) -> None:
    """Index the finished bgzip VCF as out.tbi; an unsorted file is left unindexed, with a note."""
    try:
        with atomic_path(out + ".tbi") as tmp_index:
            pysam.tabix_index(tmp, preset="vcf", force=True, keep_original=True, index=tmp_index)
    except (OSError, ValueError):
        if os.path.exists(out + ".tbi"):
            os.unlink(out + ".tbi")  # an index of an earlier output would not match this one
        note(f"{out} not indexed: tabix needs the records sorted by contig and position "
             f"(bcftools sort, then tabix -p vcf)")
