"""BED intervals checked against a FASTA.

BED is a tab-separated text format (https://genome.ucsc.edu/FAQ/FAQformat.html#format1): chrom,
0-based start, exclusive end, then an optional name and further columns, which are ignored here.
`track`, `browser` and `#` lines are skipped. Plain or gzip-compressed files are read.
"""
from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

from dnamamba.data.fasta import FastaFile
from dnamamba.errors import InputError, require_file


@dataclass(frozen=True)
class Interval:
    """One BED line: bases [start, end) of record `chrom`; `name` is the 4th column, if any."""

    chrom: str
    start: int
    end: int
    name: str | None = None


def _open_text(path: str):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rt") if gz else open(path, "rt")


def read_bed(path: str | os.PathLike, fasta: FastaFile) -> list[Interval]:
    """All intervals of a BED file, in file order, each checked against `fasta`.

    Raises InputError naming the file, the line and the record for: fewer than 3 columns, a start or
    end that is not an integer, start < 0, start >= end, a record the FASTA does not have, and an end
    past the record's end.
    """
    path = require_file(path, "BED file")
    intervals = []
    try:
        with _open_text(path) as f:
            for line_no, line in enumerate(f, start=1):
                line = line.rstrip("\r\n")
                if not line.strip() or line.startswith(("#", "track", "browser")):
                    continue
                intervals.append(_parse_line(path, line_no, line, fasta))
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise InputError(path, f"cannot read BED: {e}") from None
    if not intervals:
        raise InputError(path, "BED file has no intervals")
    return intervals


def _parse_line(path: str, line_no: int, line: str, fasta: FastaFile) -> Interval:
    # BED is tab-separated; some tools write spaces, which is only safe to split on without tabs.
    fields = line.split("\t") if "\t" in line else line.split()
    if len(fields) < 3:
        raise InputError(path, f"line {line_no}: expected at least 3 columns (chrom, start, end), "
                               f"got {len(fields)}")
    chrom = fields[0]
    try:
        start, end = int(fields[1]), int(fields[2])
    except ValueError:
        raise InputError(path, f"line {line_no}: start and end must be integers, got "
                               f"{fields[1]!r} and {fields[2]!r}", record=chrom) from None
    if start < 0 or start >= end:
        raise InputError(path, f"line {line_no}: need 0 <= start < end, got start {start}, end {end}",
                         record=chrom)
    if chrom not in fasta:
        shown = ", ".join(fasta.names[:5]) + (" ..." if len(fasta.names) > 5 else "")
        raise InputError(path, f"line {line_no}: {fasta.path} has no such record (it has {shown})",
                         record=chrom)
    length = fasta.length(chrom)
    if end > length:
        raise InputError(path, f"line {line_no}: end {end} is past the end of the record "
                               f"(length {length} in {fasta.path})", record=chrom)
    name = fields[3] if len(fields) > 3 and fields[3] not in ("", ".") else None
    return Interval(chrom, start, end, name)
