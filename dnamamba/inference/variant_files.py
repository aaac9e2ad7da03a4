"""Variant files in and out of `score-variants`: VCF/BCF through pysam, tables through pyarrow, and the
choice of records (regions, shards).

Tables follow GPN's and TraitGym's convention: one ALT allele per row, columns `chrom`, `pos`
(1-based), `ref`, `alt`, any others kept as they are. They are read from `.tsv`, `.csv` (either
gzipped) and `.parquet`, and written as `.tsv`, `.csv` or `.parquet` with `score` and `status`
columns added. A VCF written to a table gives one row per ALT allele: chrom, pos, id, ref, alt,
score, status.
"""
from __future__ import annotations

import bisect
import csv
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import pysam

from ..data.bed import read_bed
from ..data.fasta import FastaFile
from ..errors import InputError, require_file
from .runtime import SETTINGS

VCF_OUTPUTS = {".vcf": "w", ".vcf.gz": "wz", ".vcf.bgz": "wz", ".bcf": "wb"}
TABLE_OUTPUTS = {".tsv": "tsv", ".csv": "csv", ".parquet": "parquet"}
TABLE_INPUTS = {".tsv": "tsv", ".tsv.gz": "tsv", ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet",
                ".pq": "parquet"}
TABLE_COLUMNS = ("chrom", "pos", "ref", "alt")
ADDED_COLUMNS = ("score", "status")
VCF_TABLE_COLUMNS = ("chrom", "pos", "id", "ref", "alt", "score", "status")
# pysam sets INFO/END on records with symbolic alleles when it writes them; the header must say Integer.
_END_LINE = '##INFO=<ID=END,Number=1,Type=Integer,Description="Stop position of the interval">'
_TABLE_ROWS = 1 << 16  # rows per batch read from a table


def _ending(path: str, table: dict) -> Optional[str]:
    name = os.path.basename(path).lower()
    for ext in sorted(table, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    return None


def output_kind(path: str) -> str:
    """pysam's write mode for a VCF/BCF output ('w', 'wz', 'wb'), or 'tsv', 'csv', 'parquet'."""
    ext = _ending(path, {**VCF_OUTPUTS, **TABLE_OUTPUTS})
    if ext is None:
        raise InputError(path, f"output must end in one of {', '.join([*VCF_OUTPUTS, *TABLE_OUTPUTS])}")
    return VCF_OUTPUTS.get(ext) or TABLE_OUTPUTS[ext]


@dataclass
class Entry:
    """One input record: a VCF record, or one table row (a single ALT)."""

    chrom: Optional[str]
    pos: Optional[int]  # 1-based
    id: Optional[str]
    ref: Optional[str]
    alts: list[Optional[str]]
    source: Any  # the pysam.VariantRecord, or the table row as a tuple of its values
    complete: bool = True  # False for a table row with an empty chrom, pos, ref or alt

    @property
    def where(self) -> str:
        return f"{self.chrom}:{self.pos}"


def open_variants(path: str):
    """A `VcfInput` or a `TableInput`, by the file name's ending."""
    require_file(path, "variant file")
    ext = _ending(path, TABLE_INPUTS)
    return TableInput(path, TABLE_INPUTS[ext]) if ext else VcfInput(path)


class VcfInput:
    """A VCF or BCF (plain, bgzip or plain gzip), read by pysam in two passes: `scan` then `entries`.

    The scan completes the header with what htslib adds while parsing (contigs and tags the header
    never declared); the output header is built from it, because htslib ends the process (not an
    exception) when a record is translated to a header that lacks one of its tags.
    """

    kind = "vcf"

    def __init__(self, path: str):
        self.path = path
        self.header: Optional[pysam.VariantHeader] = None
        self.file: Optional[pysam.VariantFile] = None

    def _open(self) -> pysam.VariantFile:
        try:
            try:
                vcf = pysam.VariantFile(self.path)
            except NotImplementedError:
                # Plain gzip (not bgzip): opened by name, pysam asks for an offset that only BGZF has; from
                # an open file it reads the stream sequentially, which is all scoring needs.
                vcf = pysam.VariantFile(open(self.path, "rb"))
        except (OSError, ValueError) as e:
            raise InputError(self.path, f"not a readable VCF/BCF file ({e})") from None
        if "END" not in vcf.header.info:
            # Undeclared, htslib would type END as a String when it meets one, and pysam could then not
            # write back a symbolic record's END (an integer).
            vcf.header.add_line(_END_LINE)
        return vcf

    def _records(self, vcf: pysam.VariantFile) -> Iterator[Entry]:
        last = "the header"
        it = iter(vcf)
        while True:
            try:
                rec = next(it)
            except StopIteration:
                return
            except (OSError, ValueError) as e:
                raise InputError(self.path, f"unreadable VCF record after {last}: {e}") from None
            last = f"{rec.chrom}:{rec.pos}"
            yield Entry(rec.chrom, rec.pos, rec.id, rec.ref, list(rec.alts) if rec.alts else [None], rec)

    def scan(self) -> Iterator[Entry]:
        with self._open() as vcf:
            yield from self._records(vcf)
            self.header = vcf.header.copy()

    def open(self) -> None:
        self.file = self._open()

    def entries(self) -> Iterator[Entry]:
        return self._records(self.file)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class TableInput:
    """A `.tsv`/`.csv` (optionally gzipped) or `.parquet` table with chrom, pos, ref and alt columns."""

    kind = "table"

    def __init__(self, path: str, fmt: str):
        self.path, self.fmt = path, fmt
        self.schema = None

    def _batches(self):
        import pyarrow as pa
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq

        try:
            if self.fmt == "parquet":
                reader = pq.ParquetFile(self.path)
                batches = reader.iter_batches(batch_size=_TABLE_ROWS)
                schema = reader.schema_arrow
            else:
                # chrom, ref and alt stay text ("20", "T"); pos is read as an integer.
                types = {"chrom": pa.string(), "ref": pa.string(), "alt": pa.string(), "pos": pa.int64()}
                reader = pacsv.open_csv(self.path, parse_options=pacsv.ParseOptions(
                                            delimiter="\t" if self.fmt == "tsv" else ","),
                                        convert_options=pacsv.ConvertOptions(column_types=types))
                batches, schema = reader, reader.schema
            self._check_schema(schema)
            self.schema = schema
            for batch in batches:
                yield batch
        except (pa.ArrowException, OSError, ValueError) as e:
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(self.path, f"not a readable {self.fmt} table: {message}") from None

    def _check_schema(self, schema) -> None:
        import pyarrow as pa

        names = schema.names
        missing = [c for c in TABLE_COLUMNS if c not in names]
        if missing:
            raise InputError(self.path, f"the table has no column(s) {', '.join(missing)}; it needs "
                                        f"{', '.join(TABLE_COLUMNS)} (pos 1-based), and has {', '.join(names)}")
        taken = [c for c in ADDED_COLUMNS if c in names]
        if taken:
            raise InputError(self.path, f"the table already has column(s) {', '.join(taken)}, which the "
                                        f"output adds; rename them")
        if not pa.types.is_integer(schema.field("pos").type):
            raise InputError(self.path, f"column pos must hold integers, not {schema.field('pos').type}")

    def scan(self) -> Iterator[Entry]:
        return self.entries()

    def open(self) -> None:
        pass

    def entries(self) -> Iterator[Entry]:
        for batch in self._batches():
            columns = [batch.column(i).to_pylist() for i in range(batch.num_columns)]
            names = batch.schema.names
            at = {c: names.index(c) for c in TABLE_COLUMNS}
            for row in zip(*columns):
                chrom, pos, ref, alt = (row[at[c]] for c in TABLE_COLUMNS)
                complete = None not in (chrom, pos, ref, alt) and chrom != ""
                yield Entry(None if chrom is None else str(chrom), pos, None, ref, [alt], row, complete)

    def close(self) -> None:
        pass


class Selection:
    """The records a run scores: those whose POS lies in `regions` (all when None), then shard i of n of
    them (contiguous ranges in file order, so the shards' outputs concatenated in order are the whole)."""

    def __init__(self, regions: Optional[dict[str, list[tuple[int, int]]]], shard: tuple[int, int]):
        self.regions = regions  # chrom -> sorted, merged 0-based [start, end) intervals
        self.shard = shard

    @classmethod
    def parse(cls, regions: Any, shard: Optional[str], fasta: FastaFile) -> "Selection":
        return cls(_parse_regions(regions, fasta), _parse_shard(shard))

    def contains(self, entry: Entry) -> bool:
        if self.regions is None:
            return True
        spans = self.regions.get(entry.chrom)
        if not spans or entry.pos is None:
            return False
        i = bisect.bisect_right(spans, (entry.pos - 1, float("inf"))) - 1
        return i >= 0 and spans[i][0] <= entry.pos - 1 < spans[i][1]

    def bounds(self, n: int) -> tuple[int, int]:
        """[lo, hi): the indices, among the n records in the regions, that this shard scores."""
        i, k = self.shard
        return n * i // k, n * (i + 1) // k

    def pick(self, entries: Iterator[Entry], n: int) -> Iterator[Entry]:
        lo, hi = self.bounds(n)
        k = 0
        for entry in entries:
            if not self.contains(entry):
                continue
            if k >= hi:
                return
            if k >= lo:
                yield entry
            k += 1


def _parse_shard(shard: Optional[str]) -> tuple[int, int]:
    if shard is None or shard == "":
        return 0, 1
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise InputError(SETTINGS, f"shard={shard!r} must be i/n with 0 <= i < n, e.g. shard=0/4 ... shard=3/4")
    return int(m.group(1)), int(m.group(2))


def _parse_regions(regions: Any, fasta: FastaFile) -> Optional[dict[str, list[tuple[int, int]]]]:
    """None, a BED file (.bed, .bed.gz), or regions `chrom` / `chrom:start-end` (1-based, inclusive) as a
    list or a comma-separated string."""
    if regions is None or regions == "" or regions == []:
        return None
    spans: dict[str, list[tuple[int, int]]] = {}
    items = [str(r).strip() for r in regions] if isinstance(regions, (list, tuple)) else \
        [r.strip() for r in str(regions).split(",")]
    if len(items) == 1 and items[0].lower().endswith((".bed", ".bed.gz", ".bed.bgz")):
        for iv in read_bed(items[0], fasta):
            spans.setdefault(iv.chrom, []).append((iv.start, iv.end))
    else:
        for item in items:
            if not item:
                raise InputError(SETTINGS, f"regions={regions!r} has an empty region")
            m = re.fullmatch(r"(.+):(\d+)-(\d+)", item)
            if item in fasta:  # a whole contig (its name may itself hold ':' and '-')
                spans.setdefault(item, []).append((0, fasta.lengths[item]))
            elif m and m.group(1) in fasta and 1 <= int(m.group(2)) <= int(m.group(3)):
                spans.setdefault(m.group(1), []).append((int(m.group(2)) - 1, int(m.group(3))))
            else:
                raise InputError(SETTINGS, f"region {item!r}: use chrom or chrom:start-end (1-based, inclusive, "
                                           f"1 <= start <= end, no commas in numbers) with a contig of {fasta.path}")
    merged = {}
    for chrom, ivs in spans.items():
        ivs.sort()
        out = [list(ivs[0])]
        for s, e in ivs[1:]:
            if s <= out[-1][1]:
                out[-1][1] = max(out[-1][1], e)
            else:
                out.append([s, e])
        merged[chrom] = [tuple(x) for x in out]
    return merged


def contig_problem(contigs: Counter, fasta: FastaFile) -> Optional[str]:
    """Why no record can be scored when none of `contigs` is in the FASTA (None when some are), with a
    hint when the names differ by a `chr` prefix."""
    if not contigs or any(c in fasta for c in contigs):
        return None

    def twin(name: str) -> str:
        return name[3:] if name.lower().startswith("chr") else "chr" + name

    shown = ", ".join(repr(c) for c, _ in contigs.most_common(3)) + (" ..." if len(contigs) > 3 else "")
    names = ", ".join(repr(n) for n in fasta.names[:3]) + (" ..." if len(fasta.names) > 3 else "")
    message = f"none of its contigs ({shown}) is in {fasta.path} ({names})"
    pairs = [(c, twin(c)) for c in contigs if twin(c) in fasta]
    if pairs:
        c, t = pairs[0]
        return (f"{message}: the names differ by a 'chr' prefix ({c!r} here, {t!r} in the FASTA); rename "
                f"the contigs (bcftools annotate --rename-chrs) or use a FASTA named like the variants")
    return f"{message}; are the variants and the FASTA from the same assembly, with contigs named alike?"


def declare_score_field(header: pysam.VariantHeader, field: str, description: str, path: str, option: str) -> None:
    """Declare INFO/`field` as a per-ALT float (Number=A, Type=Float), or accept it if the header already does;
    a field of that name with another number or type is an error naming `option`, the setting to change."""
    if field in header.info:
        old = header.info[field]
        if old.number != "A" or old.type != "Float":
            raise InputError(path, f"INFO/{field} already exists as Number={old.number}, Type={old.type}; "
                                   f"choose another {option}")
    else:
        header.info.add(field, "A", "Float", description)


class VcfWriter:
    """Writes the records of the VCF being read, with the score added, through pysam.

    Every line the output header needs is added to the reading header before its first record is
    parsed, and the output is opened on that same header, so records are written as read, with no
    translation between headers: htslib flags a record parsed against a header that lacks its contig
    or tags, and ends the process when such a record is translated.
    """

    def __init__(self, path: str, mode: str, source: VcfInput, field: str, description: str, meta: str):
        hdr, complete = source.file.header, source.header
        missing = [complete.contigs[c].header_record for c in complete.contigs if c not in hdr.contigs]
        for declared, wanted in ((hdr.info, complete.info), (hdr.formats, complete.formats),
                                 (hdr.filters, complete.filters)):
            missing += [wanted[name].record for name in wanted if name not in declared]
        for record in missing:
            hdr.add_line(str(record).strip())
        declare_score_field(hdr, field, description, source.path, "info_field")
        hdr.add_meta("dnamamba_score_variants", value=meta)
        self.field, self.source = field, source.path
        self.file = pysam.VariantFile(path, mode, header=hdr)

    def write(self, entry: Entry, statuses: Sequence[str], scores: Sequence[Optional[float]]) -> None:
        rec = entry.source
        if any(s is not None for s in scores) and rec.alts:
            rec.info[self.field] = tuple(scores)
        elif self.field in rec.info:
            del rec.info[self.field]
        try:
            self.file.write(rec)
        except (TypeError, ValueError) as e:
            end = rec.header.info.get("END")
            why = (f"INFO/END is declared Type={end.type}, but VCF needs an Integer END for this record's "
                   f"symbolic allele" if end is not None and end.type != "Integer" else str(e))
            raise InputError(self.source, f"cannot write the record: {why}", record=entry.where) from None

    def close(self) -> None:
        self.file.close()


class TableWriter:
    """Rows with score and status, as text (.tsv, .csv) or parquet; one row per input row, or per ALT of
    a VCF record. Missing values are NA in text."""

    def __init__(self, path: str, fmt: str, source):
        self.path, self.fmt = path, fmt
        self.from_vcf = source.kind == "vcf"
        self.names = list(VCF_TABLE_COLUMNS) if self.from_vcf else [*source.schema.names, *ADDED_COLUMNS]
        if fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            if self.from_vcf:
                types = [pa.string(), pa.int64(), pa.string(), pa.string(), pa.string()]
            else:
                types = list(source.schema.types)
            self.schema = pa.schema([*zip(self.names, types + [pa.float64(), pa.string()])])
            self.file = pq.ParquetWriter(path, self.schema)
            self.rows: list[tuple] = []
        else:
            self.handle = open(path, "w", newline="")
            self.file = csv.writer(self.handle, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            self.file.writerow(self.names)

    def write(self, entry: Entry, statuses: Sequence[str], scores: Sequence[Optional[float]]) -> None:
        if self.from_vcf:
            rows = [(entry.chrom, entry.pos, entry.id or ".", entry.ref or ".", alt or ".", score, status)
                    for alt, score, status in zip(entry.alts, scores, statuses)]
        else:
            rows = [(*entry.source, scores[0], statuses[0])]
        if self.fmt == "parquet":
            self.rows.extend(rows)
            if len(self.rows) >= _TABLE_ROWS:
                self.flush()
        else:
            for row in rows:
                self.file.writerow(["NA" if v is None else f"{v:.6g}" if k == len(row) - 2 else v
                                    for k, v in enumerate(row)])

    def flush(self) -> None:
        if self.fmt == "parquet" and self.rows:
            import pyarrow as pa

            columns = [pa.array([r[k] for r in self.rows], type=t) for k, t in enumerate(self.schema.types)]
            self.file.write_table(pa.Table.from_arrays(columns, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        if self.fmt == "parquet":
            self.flush()
            self.file.close()
        else:
            self.handle.close()
