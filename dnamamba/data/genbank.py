"""GenBank records and their coding sequences (CDS features), read with Biopython.

Each record is parsed on its own (the file is cut at its `LOCUS` lines), so a record that Biopython
cannot parse is reported by its name. A CDS becomes a `CodingSequence`: its parts in transcript order
(Biopython already orders `complement(join(...))` that way), its translation table (`/transl_table`,
default 11) and reading frame (`/codon_start`).

CDS features whose codons are not a protein's are always skipped and counted: pseudogenes (`/pseudo`,
`/pseudogene`), partial ones (`<`, `>` or any other fuzzy end), and those without a stop codon at the
end or with one inside. A malformed record or CDS (a record Biopython cannot parse, a repeated record
name, a location that is missing, unparsable, `order(...)` or outside the record, a length that is
not whole codons, an unknown `/transl_table`, a `/codon_start` other than 1-3) raises InputError
naming the record with `strict=True`, and is skipped and counted otherwise.
"""
from __future__ import annotations

import gzip
import io
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from Bio import BiopythonParserWarning, SeqIO
from Bio.Data import CodonTable
from Bio.SeqFeature import CompoundLocation, ExactPosition

from dnamamba.errors import InputError, require_file

DEFAULT_TABLE = 11  # the bacterial, archaeal and plant plastid code, INSDC's default for bacteria

# Why a record or a CDS was left out; the keys are written to the benchmark summary.
SKIP_REASONS = {
    "pseudo": "pseudogene",
    "partial": "partial or fuzzy location",
    "unparsable_record": "record Biopython cannot parse",
    "duplicate_record": "record name seen before",
    "bad_location": "location missing, unparsable or outside the record",
    "order_location": "order(...) location (the order of its parts is unknown)",
    "bad_length": "length is not a whole number of codons",
    "bad_table": "unknown /transl_table",
    "bad_codon_start": "/codon_start is not 1, 2 or 3",
    "no_stop": "does not end in a stop codon",
    "internal_stop": "stop codon inside the CDS",
}


@dataclass(frozen=True)
class CodingSequence:
    """One CDS feature of a record, in 0-based, half-open coordinates of the record."""

    record: str
    name: str  # /locus_tag, else /gene, else /protein_id, else "CDS<n>"
    index: int  # position among the record's features (stable, used to seed sampling)
    parts: tuple[tuple[int, int, int], ...]  # (start, end, strand) in transcript order
    table: int
    codon_start: int  # 1, 2 or 3: the first base of the first codon

    def positions(self) -> np.ndarray:
        """Record positions of the transcript's bases, in transcript order, int64 (length,)."""
        return np.concatenate([np.arange(s, e) if strand >= 0 else np.arange(e - 1, s - 1, -1)
                               for s, e, strand in self.parts])

    def strands(self) -> np.ndarray:
        """Strand (+1 or -1) of each transcript base, int8 (length,)."""
        return np.concatenate([np.full(e - s, 1 if strand >= 0 else -1, dtype=np.int8)
                               for s, e, strand in self.parts])

    def transcript(self, seq: bytes) -> bytes:
        """The CDS's bases read along the transcript (minus-strand parts complemented)."""
        out = []
        for s, e, strand in self.parts:
            piece = seq[s:e]
            out.append(piece if strand >= 0 else piece.translate(_DNA_COMPLEMENT)[::-1])
        return b"".join(out)

    @property
    def span(self) -> tuple[int, int]:
        return min(s for s, _, _ in self.parts), max(e for _, e, _ in self.parts)


_DNA_COMPLEMENT = bytes.maketrans(b"ACGTRYKMBVDHNacgtrykmbvdhn", b"TGCAYRMKVBHDNtgcayrmkvbhdn")


@dataclass
class GenBankRecord:
    name: str  # the LOCUS name: the FASTA and VCF contig name
    seq: bytes  # uppercase, as Biopython reads it
    cds: list[CodingSequence]  # usable CDS features, in file order
    skipped_cds: list[tuple[int, int]]  # (start, end) span of each skipped CDS that has a location
    features: list[tuple[str, int, int]]  # (type, start, end) of every located feature but `source`


@dataclass
class GenBankFile:
    path: str
    records: list[GenBankRecord]
    skipped: Counter = field(default_factory=Counter)  # SKIP_REASONS key -> count

    def skipped_text(self) -> str:
        return ", ".join(f"{SKIP_REASONS[k]} {n}" for k, n in self.skipped.items() if n)


def codon_table(table: int) -> CodonTable.CodonTable:
    """Biopython's unambiguous DNA table with this NCBI id; KeyError for an unknown id."""
    return CodonTable.unambiguous_dna_by_id[table]


def translate_codon(codon: bytes, table: int) -> str:
    """One amino acid letter, '*' for a stop codon; '' for a codon with a base other than A, C, G, T."""
    t = codon_table(table)
    text = codon.decode()
    if text in t.stop_codons:
        return "*"
    return t.forward_table.get(text, "")


def read_genbank(path: str | os.PathLike, strict: bool = True) -> GenBankFile:
    """Every record of a GenBank file (plain or gzip) with its usable CDS features."""
    path = require_file(path, "GenBank file")
    result = GenBankFile(path, [])
    seen: set[str] = set()
    n_chunks = 0
    for locus, text in _record_texts(path):
        n_chunks += 1
        record = _parse_record(path, locus, text, strict, result.skipped)
        if record is None:
            continue
        if record.name in seen:
            _malformed(path, record.name, "duplicate_record", "a record with this name came before", strict,
                       result.skipped)
            continue
        seen.add(record.name)
        result.records.append(record)
    if n_chunks == 0:
        raise InputError(path, "no GenBank record (no line starting with LOCUS)")
    if not result.records:
        raise InputError(path, f"no usable record; skipped: {result.skipped_text()}")
    return result


def _record_texts(path: str):
    """(LOCUS name, text) of each record; the file is cut at lines starting with 'LOCUS'."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rt") if gz else open(path, "rt")) as handle:
            lines: list[str] = []
            for line in handle:
                if line.startswith("LOCUS") and lines:
                    yield _locus_name(lines[0]), "".join(lines)
                    lines = []
                if lines or line.startswith("LOCUS"):
                    lines.append(line)
            if lines:
                yield _locus_name(lines[0]), "".join(lines)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read the GenBank file: {e}") from None


def _locus_name(line: str) -> str:
    words = line.split()
    return words[1] if len(words) > 1 else "?"


def _malformed(path: str, record: str, reason: str, detail: str, strict: bool, skipped: Counter) -> None:
    if strict:
        raise InputError(path, f"{SKIP_REASONS[reason]}: {detail} (strict=true; strict=false skips and counts it)",
                         record=record)
    skipped[reason] += 1


def _parse_record(path: str, locus: str, text: str, strict: bool, skipped: Counter) -> GenBankRecord | None:
    with warnings.catch_warnings():
        # Biopython warns and drops the location of a feature it cannot read; the None location is
        # reported below, against the feature, instead.
        warnings.simplefilter("ignore", BiopythonParserWarning)
        try:
            rec = SeqIO.read(io.StringIO(text), "genbank")
        except Exception as e:  # Biopython raises ValueError, AssertionError and others on broken records
            why = str(e).splitlines()[0] if str(e) else "parse error"
            _malformed(path, locus, "unparsable_record", f"{type(e).__name__}: {why}", strict, skipped)
            return None
    name = rec.name
    seq = bytes(rec.seq).upper()
    out = GenBankRecord(name, seq, [], [], [])
    for k, feature in enumerate(rec.features):
        loc = feature.location
        if loc is not None and feature.type != "source":
            out.features.append((feature.type, int(loc.start), int(loc.end)))
        if feature.type != "CDS":
            continue
        label = _feature_name(feature, k)
        where = f"CDS {label}"
        if loc is None:
            _malformed(path, name, "bad_location", f"{where} has a location Biopython cannot parse", strict, skipped)
            continue
        if int(loc.start) < 0 or int(loc.end) > len(seq):
            _malformed(path, name, "bad_location", f"{where} at {loc} runs past the record end ({len(seq)} bases)",
                       strict, skipped)
            continue
        cds = None
        if "pseudo" in feature.qualifiers or "pseudogene" in feature.qualifiers:
            skipped["pseudo"] += 1
        elif any(not isinstance(p.start, ExactPosition) or not isinstance(p.end, ExactPosition) for p in loc.parts):
            skipped["partial"] += 1
        elif isinstance(loc, CompoundLocation) and loc.operator != "join":
            _malformed(path, name, "order_location", f"{where} at {loc}", strict, skipped)
        else:
            cds = _coding_sequence(path, name, label, k, feature, seq, strict, skipped)
        if cds is None:
            out.skipped_cds.append((int(loc.start), int(loc.end)))
        else:
            out.cds.append(cds)
    return out


def _feature_name(feature, index: int) -> str:
    for key in ("locus_tag", "gene", "protein_id"):
        values = feature.qualifiers.get(key)
        if values and values[0].strip("#.[]0123456789"):  # the file's "########.[1]" placeholders say nothing
            return values[0]
    return f"CDS{index}"


def _coding_sequence(path: str, record: str, label: str, index: int, feature, seq: bytes, strict: bool,
                     skipped: Counter) -> CodingSequence | None:
    where = f"CDS {label}"
    try:
        table = int(feature.qualifiers.get("transl_table", [DEFAULT_TABLE])[0])
        codon_table(table)
    except (ValueError, KeyError):
        _malformed(path, record, "bad_table", f"{where} has /transl_table={feature.qualifiers['transl_table'][0]}",
                   strict, skipped)
        return None
    try:
        codon_start = int(feature.qualifiers.get("codon_start", [1])[0])
    except ValueError:
        codon_start = 0
    if codon_start not in (1, 2, 3):
        _malformed(path, record, "bad_codon_start", f"{where} has /codon_start={feature.qualifiers['codon_start'][0]}",
                   strict, skipped)
        return None
    parts = tuple((int(p.start), int(p.end), -1 if p.strand == -1 else 1) for p in feature.location.parts)
    cds = CodingSequence(record, label, index, parts, table, codon_start)
    transcript = cds.transcript(seq)[codon_start - 1:]
    if len(transcript) < 6 or len(transcript) % 3:
        _malformed(path, record, "bad_length", f"{where} at {feature.location} has {len(transcript)} bases "
                                               f"after /codon_start={codon_start}", strict, skipped)
        return None
    aas = [translate_codon(transcript[i:i + 3], table) for i in range(0, len(transcript), 3)]
    if aas[-1] != "*":
        skipped["no_stop"] += 1
        return None
    if "*" in aas[1:-1]:  # the first codon is a start codon whatever it would translate to
        skipped["internal_stop"] += 1
        return None
    return cds
