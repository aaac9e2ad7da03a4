"""A labelled variant benchmark built from any GenBank file with CDS features.

`build_variant_benchmark(cfg)` writes into `cfg.out`:

| file | what |
| --- | --- |
| `records.fa` | every usable record (the reference the VCF is called against) |
| `train.fa` | the training-split records only: what a Markov baseline or a model may be fitted on |
| `pretrain.fa` | with `pretrain_extra`: those FASTA files' records followed by the training records |
| `variants.vcf.gz` (+ `.tbi`) | one record per sampled position, all three other bases as ALTs, INFO/LABEL (Number=A) |
| `labels.tsv` | one row per (position, ALT): chrom, pos (1-based), ref, alt, label, split, and the codon behind the label |
| `splits.tsv` | each record's split |
| `intervals.tsv` | with `interval_length > 0`: coding and non-coding windows (chrom, start, end, label, split) |
| `summary.json` | counts per split and label, and what was skipped and why |

Labels compare the codon before and after the base change, translated with the CDS's own
`/transl_table`: `synonymous` (same amino acid, stop to stop included), `missense`, `nonsense` (a stop
gained) and `stop_lost` (the stop codon changed to a sense codon). Positions are sampled per CDS with
a generator seeded by (seed, record name, feature index), so a CDS gets the same positions whatever
else is in the file. The start codon is never sampled (a change there is neither of the four), nor a
position that another CDS also covers (its label would be ambiguous), nor a codon with a base other
than A, C, G or T.

Records, not variants, are split into train, validation and test, so no locus is in two splits.
"""
from __future__ import annotations

import json
import os
import sys
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import List, Optional

import numpy as np
import pysam

from dnamamba.data.fasta import FastaFile
from dnamamba.data.genbank import GenBankFile, GenBankRecord, CodingSequence, read_genbank, translate_codon
from dnamamba.errors import InputError
from dnamamba.io import atomic_path

LABELS = ("synonymous", "missense", "nonsense", "stop_lost")
SPLITS = ("train", "val", "test")
INTERVAL_LABELS = ("coding", "noncoding")
BASES = "ACGT"
_COMPLEMENT = {"A": "T", "C": "G", "G": "C", "T": "A"}
FASTA_LINE = 80
LABEL_COLUMNS = ("chrom", "pos", "ref", "alt", "label", "split", "cds", "strand", "codon", "codon_pos",
                 "ref_codon", "alt_codon", "ref_aa", "alt_aa", "transl_table")


@dataclass
class BuildVariantBenchmarkConfig:
    """`dnamamba build-variant-benchmark` settings; conf/build_variant_benchmark.yaml fills in the same keys."""

    gbk: str = "???"  # GenBank file (plain or gzip) with CDS features
    out: str = "???"  # output folder (created)
    positions_per_cds: int = 10  # sampled positions per CDS, each with its three ALT bases
    fraction: Optional[float] = None  # when set: this fraction of each CDS's positions instead
    stop_codon: bool = True  # also every position of each stop codon (gives the stop_lost class)
    split_fractions: List[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])  # train, val, test records
    seed: int = 0
    strict: bool = False  # fail on the first malformed record or CDS instead of skipping and counting it
    interval_length: int = 200  # coding / non-coding windows of this length (0: no intervals.tsv)
    pretrain_extra: List[str] = field(default_factory=list)  # FASTA files for pretrain.fa, besides train.fa
    cache_dir: Optional[str] = None  # index and decompressed copies of pretrain_extra FASTA files

    def validate(self) -> None:
        if self.positions_per_cds < 0:
            raise InputError("settings", f"positions_per_cds={self.positions_per_cds} must be >= 0")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise InputError("settings", f"fraction={self.fraction} must be in (0, 1]")
        if len(self.split_fractions) != 3 or any(f < 0 for f in self.split_fractions) or sum(self.split_fractions) <= 0:
            raise InputError("settings", f"split_fractions={list(self.split_fractions)} must be three "
                                         f"non-negative numbers (train, val, test) with a positive sum")
        if self.interval_length < 0:
            raise InputError("settings", f"interval_length={self.interval_length} must be >= 0")


@dataclass(frozen=True)
class LabelledVariant:
    chrom: str
    pos: int  # 0-based
    ref: str  # the record's base (forward strand)
    alt: str
    label: str
    cds: str
    strand: int
    codon: int  # 1-based codon number in the CDS
    codon_pos: int  # 1, 2 or 3
    ref_codon: str  # along the CDS
    alt_codon: str
    ref_aa: str
    alt_aa: str
    table: int


def assign_splits(names: list[str], fractions, seed: int) -> dict[str, str]:
    """Record name -> 'train', 'val' or 'test'. Records are shuffled (seeded) and cut by `fractions`.

    Each split with a positive fraction gets at least one record when there are enough records.
    """
    fractions = np.asarray(fractions, dtype=np.float64) / float(np.sum(fractions))
    order = sorted(names)
    np.random.default_rng(seed).shuffle(order)
    n = len(order)
    counts = np.floor(fractions * n).astype(int)
    for i in np.argsort(-(fractions * n - counts))[: n - counts.sum()]:  # largest remainders first
        counts[i] += 1
    for i in range(3):  # borrow a record from the largest split for an empty split that asked for some
        if fractions[i] > 0 and counts[i] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    out, start = {}, 0
    for split, c in zip(SPLITS, counts):
        for name in order[start:start + c]:
            out[name] = split
        start += c
    return out


def label_change(ref_codon: str, alt_codon: str, table: int) -> tuple[str, str, str]:
    """(label, ref amino acid, alt amino acid) for a codon change under an NCBI translation table."""
    ref_aa, alt_aa = translate_codon(ref_codon.encode(), table), translate_codon(alt_codon.encode(), table)
    if ref_aa == alt_aa:
        label = "synonymous"
    elif alt_aa == "*":
        label = "nonsense"
    elif ref_aa == "*":
        label = "stop_lost"
    else:
        label = "missense"
    return label, ref_aa, alt_aa


def cds_variants(cds: CodingSequence, seq: bytes, transcript_indices) -> list[LabelledVariant]:
    """The labelled SNVs at the given transcript indices (0-based, counted from the CDS's first base)."""
    positions, strands = cds.positions(), cds.strands()
    transcript = cds.transcript(seq).decode()
    offset = cds.codon_start - 1
    out = []
    for t in transcript_indices:
        codon_i, codon_pos = divmod(int(t) - offset, 3)
        start = offset + 3 * codon_i
        ref_codon = transcript[start:start + 3]
        pos, strand = int(positions[t]), int(strands[t])
        ref = chr(seq[pos])
        for alt in BASES:
            if alt == ref:
                continue
            base = alt if strand > 0 else _COMPLEMENT[alt]
            alt_codon = ref_codon[:codon_pos] + base + ref_codon[codon_pos + 1:]
            label, ref_aa, alt_aa = label_change(ref_codon, alt_codon, cds.table)
            out.append(LabelledVariant(cds.record, pos, ref, alt, label, cds.name, strand, codon_i + 1,
                                       codon_pos + 1, ref_codon, alt_codon, ref_aa, alt_aa, cds.table))
    return out


def _coverage(record: GenBankRecord) -> np.ndarray:
    """How many CDS features cover each base of the record, (len,) int16."""
    cover = np.zeros(len(record.seq), dtype=np.int16)
    for cds in record.cds:
        np.add.at(cover, cds.positions(), 1)
    for start, end in record.skipped_cds:
        cover[max(0, start):min(len(cover), end)] += 1
    return cover


def candidate_indices(cds: CodingSequence, seq: bytes, cover: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Transcript indices that may be sampled: (inner codons, stop codon), each position covered by this
    CDS only and in a codon of A, C, G and T only."""
    positions = cds.positions()
    transcript = np.frombuffer(cds.transcript(seq), dtype=np.uint8)
    offset = cds.codon_start - 1
    n_codons = (len(transcript) - offset) // 3
    codon_ok = np.isin(transcript[offset:offset + 3 * n_codons].reshape(n_codons, 3), list(b"ACGT")).all(1)
    idx = np.arange(offset, offset + 3 * n_codons)
    ok = np.repeat(codon_ok, 3) & (cover[positions[idx]] == 1)
    inner = idx[3:-3][ok[3:-3]]  # the start codon (first) and the stop codon (last) are not inner
    stop = idx[-3:][ok[-3:]]
    return inner, stop


def sample_positions(cds: CodingSequence, inner: np.ndarray, cfg: BuildVariantBenchmarkConfig) -> np.ndarray:
    rng = np.random.default_rng([cfg.seed, zlib.crc32(cds.record.encode()), cds.index])
    wanted = cfg.positions_per_cds if cfg.fraction is None else int(round(cfg.fraction * len(inner)))
    n = min(wanted, len(inner))
    return np.sort(rng.choice(inner, size=n, replace=False)) if n else inner[:0]


def benchmark_variants(gb: GenBankFile, cfg: BuildVariantBenchmarkConfig) -> tuple[list[LabelledVariant], Counter]:
    """Every labelled variant of the file, sorted by record (file order) and position; and per-CDS notes."""
    variants: list[LabelledVariant] = []
    notes: Counter = Counter()
    for record in gb.records:
        cover = _coverage(record)
        for cds in record.cds:
            inner, stop = candidate_indices(cds, record.seq, cover)
            chosen = sample_positions(cds, inner, cfg)
            if cfg.stop_codon:
                chosen = np.concatenate([chosen, stop])
                notes["stop codon shared with another CDS or not ACGT"] += int(len(stop) < 3)
            variants.extend(cds_variants(cds, record.seq, chosen))
    order = {r.name: i for i, r in enumerate(gb.records)}
    variants.sort(key=lambda v: (order[v.chrom], v.pos, v.alt))
    return variants, notes


def coding_intervals(record: GenBankRecord, length: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Windows tiling the record with stride `length`: (coding, non-coding). Coding: inside one part of a
    usable CDS. Non-coding: touching no annotated feature (any type but `source`). Windows with a base
    other than A, C, G or T are in neither."""
    seq = np.frombuffer(record.seq, dtype=np.uint8)
    acgt = np.isin(seq, list(b"ACGT"))
    annotated = np.zeros(len(seq), dtype=bool)
    for _, start, end in record.features:
        annotated[max(0, start):min(len(seq), end)] = True
    parts = [(s, e) for cds in record.cds for s, e, _ in cds.parts]
    coding, noncoding = [], []
    for start in range(0, len(seq) - length + 1, length):
        end = start + length
        if not acgt[start:end].all():
            continue
        if any(s <= start and end <= e for s, e in parts):
            coding.append((start, end))
        elif not annotated[start:end].any():
            noncoding.append((start, end))
    return coding, noncoding


def balanced_intervals(gb: GenBankFile, splits: dict[str, str], length: int, seed: int) -> list[tuple]:
    """(chrom, start, end, label, split) rows: per split, as many coding windows (seeded sample) as
    there are non-coding ones."""
    rows = []
    for split in SPLITS:
        coding, noncoding = [], []
        for record in gb.records:
            if splits[record.name] == split:
                c, n = coding_intervals(record, length)
                coding += [(record.name, s, e) for s, e in c]
                noncoding += [(record.name, s, e) for s, e in n]
        rng = np.random.default_rng([seed, SPLITS.index(split)])
        keep = np.sort(rng.choice(len(coding), size=min(len(coding), len(noncoding)), replace=False))
        rows += [(*coding[i], "coding", split) for i in keep] + [(*w, "noncoding", split) for w in noncoding]
    order = {r.name: i for i, r in enumerate(gb.records)}
    return sorted(rows, key=lambda r: (order[r[0]], r[1]))


def build_variant_benchmark(cfg: BuildVariantBenchmarkConfig) -> dict:
    """Read `cfg.gbk`, label and split, then write every output (all computed before the first write)."""
    cfg.validate()
    gb = read_genbank(cfg.gbk, strict=cfg.strict)
    splits = assign_splits([r.name for r in gb.records], cfg.split_fractions, cfg.seed)
    variants, notes = benchmark_variants(gb, cfg)
    if not variants:
        raise InputError(cfg.gbk, "no CDS position to label (no usable CDS, or positions_per_cds=0 and stop_codon=false)")
    intervals = balanced_intervals(gb, splits, cfg.interval_length, cfg.seed) if cfg.interval_length else []
    extra = [FastaFile(path, cache_dir=cfg.cache_dir) for path in cfg.pretrain_extra]
    clash = {n for f in extra for n in f.names} & set(splits)
    if clash:
        raise InputError(cfg.pretrain_extra[0], f"record name(s) {', '.join(sorted(clash)[:3])} also in {cfg.gbk}")

    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(out, "output folder is a file")
    _write_fasta(os.path.join(out, "records.fa"), [(r.name, r.seq) for r in gb.records])
    train = [(r.name, r.seq) for r in gb.records if splits[r.name] == "train"]
    _write_fasta(os.path.join(out, "train.fa"), train)
    if extra:
        _write_pretrain_fasta(os.path.join(out, "pretrain.fa"), extra, train)
    _write_vcf(os.path.join(out, "variants.vcf.gz"), gb, variants, splits, cfg)
    _write_labels(os.path.join(out, "labels.tsv"), variants, splits)
    _write_splits(os.path.join(out, "splits.tsv"), gb, variants, splits)
    if intervals:
        _write_intervals(os.path.join(out, "intervals.tsv"), intervals)

    counts = {split: {label: 0 for label in LABELS} for split in SPLITS}
    for v in variants:
        counts[splits[v.chrom]][v.label] += 1
    summary = {
        "gbk": os.path.abspath(cfg.gbk), "records": len(gb.records), "cds": sum(len(r.cds) for r in gb.records),
        "records_per_split": dict(Counter(splits[r.name] for r in gb.records)),
        "variants": len(variants), "labels": counts,
        "intervals": dict(Counter(f"{r[4]}/{r[3]}" for r in intervals)),
        "skipped_cds_or_records": dict(gb.skipped), "notes": dict(notes), "config": asdict(cfg),
    }
    with atomic_path(os.path.join(out, "summary.json")) as tmp, open(tmp, "w") as f:
        json.dump(summary, f, indent=2)
    line = (f"dnamamba: {len(variants)} labelled variants in {summary['cds']} CDS of {len(gb.records)} records "
            f"({', '.join(f'{s} {n}' for s, n in summary['records_per_split'].items())}) -> {out}")
    if gb.skipped:
        line += f"; skipped: {gb.skipped_text()}"
    print(line, file=sys.stderr)
    return summary


def _write_fasta(path: str, records) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for name, seq in records:
            f.write(b">" + name.encode() + b"\n")
            for i in range(0, len(seq), FASTA_LINE):
                f.write(seq[i:i + FASTA_LINE] + b"\n")


def _write_pretrain_fasta(path: str, extra: list[FastaFile], train) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for fasta in extra:
            for name in fasta.names:
                f.write(b">" + name.encode() + b"\n")
                n = fasta.length(name)
                for i in range(0, n, FASTA_LINE * 4096):  # bounded memory on whole chromosomes
                    chunk = fasta.fetch(name, i, min(n, i + FASTA_LINE * 4096))
                    for j in range(0, len(chunk), FASTA_LINE):
                        f.write(chunk[j:j + FASTA_LINE] + b"\n")
            fasta.close()
        for name, seq in train:
            f.write(b">" + name.encode() + b"\n")
            for i in range(0, len(seq), FASTA_LINE):
                f.write(seq[i:i + FASTA_LINE] + b"\n")


def _write_vcf(path: str, gb: GenBankFile, variants: list[LabelledVariant], splits: dict[str, str],
               cfg: BuildVariantBenchmarkConfig) -> None:
    header = pysam.VariantHeader()
    for r in gb.records:
        header.contigs.add(r.name, length=len(r.seq))
    header.info.add("LABEL", "A", "String", f"Effect of each ALT on its codon: {', '.join(LABELS)}")
    header.info.add("CDS", 1, "String", "The CDS feature the position belongs to")
    header.info.add("SPLIT", 1, "String", "The split of the record: train, val or test")
    header.add_meta("source", value=f"dnamamba build-variant-benchmark gbk={os.path.basename(cfg.gbk)} "
                                    f"seed={cfg.seed}")
    with atomic_path(path) as tmp:
        with pysam.VariantFile(tmp, "wz", header=header) as vcf:
            i = 0
            while i < len(variants):
                j = i
                while j < len(variants) and (variants[j].chrom, variants[j].pos) == (variants[i].chrom, variants[i].pos):
                    j += 1
                site = variants[i:j]
                rec = vcf.new_record(contig=site[0].chrom, start=site[0].pos, alleles=(site[0].ref, *(v.alt for v in site)))
                rec.info["LABEL"] = tuple(v.label for v in site)
                rec.info["CDS"] = site[0].cds
                rec.info["SPLIT"] = splits[site[0].chrom]
                vcf.write(rec)
                i = j
        with atomic_path(path + ".tbi") as tmp_index:
            pysam.tabix_index(tmp, preset="vcf", force=True, keep_original=True, index=tmp_index)


def _write_labels(path: str, variants: list[LabelledVariant], splits: dict[str, str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\t".join(LABEL_COLUMNS) + "\n")
        for v in variants:
            cells = (v.chrom, v.pos + 1, v.ref, v.alt, v.label, splits[v.chrom], v.cds, "+" if v.strand > 0 else "-",
                     v.codon, v.codon_pos, v.ref_codon, v.alt_codon, v.ref_aa, v.alt_aa, v.table)
            f.write("\t".join(map(str, cells)) + "\n")


def _write_splits(path: str, gb: GenBankFile, variants: list[LabelledVariant], splits: dict[str, str]) -> None:
    per_record = Counter(v.chrom for v in variants)
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("record\tsplit\tlength\tcds\tvariants\n")
        for r in gb.records:
            f.write(f"{r.name}\t{splits[r.name]}\t{len(r.seq)}\t{len(r.cds)}\t{per_record[r.name]}\n")


def _write_intervals(path: str, rows) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("chrom\tstart\tend\tlabel\tsplit\n")
        for row in rows:
            f.write("\t".join(map(str, row)) + "\n")
