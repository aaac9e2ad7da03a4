"""FASTA records by name and 0-based, half-open coordinates, on pyfaidx.

Plain FASTA and bgzip FASTA are read in place with random access. A plain-gzip FASTA has no random
access, so it is decompressed once into the cache; so is a CRLF file that pyfaidx's line-length check
refuses (a copy with LF endings). Indexes (.fai, .gzi) always go to the cache, never beside the input,
because input folders are often read-only or shared. Cache entries are keyed by the input's absolute
path, size and mtime, so an edited input gets a fresh entry; each entry's manifest holds checksums of
its index files, checked on every open, so a damaged index is rebuilt instead of read.

A `FastaFile` is picklable and opens its pyfaidx handle lazily in each process, so one object can be
handed to DataLoader workers (fork or spawn) and each worker gets its own file handle.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import json
import os
import shutil
import struct
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pyfaidx
import torch

from dnamamba import alphabet
from dnamamba.errors import InputError, require_file
from dnamamba.io import atomic_path

_GZIP_MAGIC = b"\x1f\x8b"
_OTHER_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip", b"\x28\xb5\x2f\xfd": "zstd"}
# pyfaidx picks its BGZF reader by file name, so only these names can be read in place when bgzipped.
_GZ_SUFFIXES = (".gz", ".bgz")

_INVALID_LUT = np.ones(256, dtype=bool)
_INVALID_LUT[list(alphabet.VALID_BYTES)] = False
_NO_LOSS_LUT = np.ones(256, dtype=bool)
_NO_LOSS_LUT[list(alphabet.LOSS_BYTES)] = False

# Records are scanned for N runs in pieces of this many bases to bound memory on whole chromosomes.
_SCAN_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """`$DNAMAMBA_CACHE`, else `~/.cache/dnamamba`."""
    env = os.environ.get("DNAMAMBA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dnamamba"


def demo_genome_path() -> str:
    """The enterobacteria phage lambda genome (48,502 bases, one record) shipped with the package."""
    return str(importlib.resources.files("dnamamba.resources").joinpath("lambda_phage.fa.gz"))


def _compression(path: str) -> str:
    """'none', 'bgzf' or 'gzip', from the file's first bytes; other compressions are refused."""
    with open(path, "rb") as f:
        head = f.read(18)
    if head[:2] == _GZIP_MAGIC:
        # BGZF is gzip with an extra field 'BC' (SAM/BAM spec, section 4.1): FLG.FEXTRA set, SI1 SI2 at 12.
        is_bgzf = len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC"
        return "bgzf" if is_bgzf else "gzip"
    for magic, kind in _OTHER_MAGIC.items():
        if head.startswith(magic):
            raise InputError(path, f"{kind}-compressed FASTA is not supported; use plain, gzip or bgzip")
    return "none"


def _cache_key(path: str) -> str:
    st = os.stat(path)
    digest = hashlib.sha1(f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()
    return f"{digest[:16]}-{os.path.basename(path)}"


class _LineLengthError(Exception):
    """pyfaidx's line-length check failed (its message says where)."""


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _has_crlf(path: str, kind: str) -> bool:
    """Whether the file's lines end in CRLF, from its first lines."""
    with (gzip.open if kind != "none" else open)(path, "rb") as f:
        return b"\r\n" in f.read(1 << 16)


def _decompressed_name(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _GZ_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    if not name.lower().endswith((".fa", ".fasta", ".fna", ".fas")):
        name += ".fa"
    return name


class FastaFile:
    """Random access to the records of one FASTA file.

    `names` are the first words of the headers in file order; `lengths` maps name to length.
    `fetch(name, start, end)` returns the bases [start, end) as bytes, case kept.
    """

    def __init__(self, path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
        self.path = require_file(path, "FASTA file")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_entry = self.cache_dir / "fasta" / _cache_key(self.path)
        kind = _compression(self.path)
        gz_name = self.path.lower().endswith(_GZ_SUFFIXES)
        if kind == "none" and gz_name:
            raise InputError(self.path, "file name ends in .gz but the file is not gzip-compressed")
        self._copy_path = str(self.cache_entry / _decompressed_name(self.path))
        manifest = self._read_manifest()
        # A plain-gzip file has no random access, and pyfaidx refuses some CRLF files (see _index): both are
        # read from a copy in the cache entry, and the manifest remembers when an input needed one.
        use_copy = kind == "gzip" or (kind == "bgzf" and not gz_name) or bool(manifest and manifest.get("copy"))
        self._use_data(self._copy_path if use_copy else self.path, bgzf=kind == "bgzf" and not use_copy)
        if not self._index_is_valid(manifest):
            if manifest is not None:
                print(f"dnamamba: the cached index of {self.path} in {self.cache_entry} does not match its "
                      f"checksum; rebuilding it", file=sys.stderr)
            self._index(kind, manifest)

        self._handle: pyfaidx.Faidx | None = None
        self._pid: int | None = None
        index = self._faidx().index
        self.names: list[str] = list(index)
        self.lengths: dict[str, int] = {name: rec.rlen for name, rec in index.items()}
        self._n_runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if not self.names or not any(self.lengths.values()):
            raise InputError(self.path, "empty FASTA: no record has any bases")

    def _use_data(self, data_path: str, bgzf: bool) -> None:
        self._data_path = data_path
        self._gzi_path = str(self.cache_entry / (os.path.basename(self.path) + ".gzi")) if bgzf else None
        self._fai_path = str(self.cache_entry / (os.path.basename(data_path) + ".fai"))

    # The cache entry's manifest: what was indexed and a checksum of each index file, written last.
    # pyfaidx trusts a .fai it is given, and a damaged one reads the wrong bases without an error, so
    # every open checks the index files against it (a hash of a few kilobytes per record) and rebuilds
    # them on a mismatch.
    def _manifest_path(self) -> Path:
        return self.cache_entry / "manifest.json"

    def _read_manifest(self) -> dict | None:
        try:
            with open(self._manifest_path()) as f:
                manifest = json.load(f)
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def _index_files(self) -> dict[str, str]:
        files = {"fai": self._fai_path}
        if self._gzi_path:
            files["gzi"] = self._gzi_path
        return files

    def _expected_manifest(self) -> dict:
        return {"data": os.path.basename(self._data_path), "copy": self._data_path == self._copy_path,
                "data_size": os.path.getsize(self._data_path),
                **{f"{kind}_sha256": _sha256(path) for kind, path in self._index_files().items()}}

    def _index_is_valid(self, manifest: dict | None) -> bool:
        if manifest is None or not all(os.path.exists(p) for p in (self._data_path, *self._index_files().values())):
            return False
        return manifest == self._expected_manifest()

    def _index(self, kind: str, manifest: dict | None) -> None:
        """(Re)build the cache entry: the copy when one is read, the indexes, then the manifest."""
        for stale in self.cache_entry.glob("nruns-*.npy"):  # scanned through the index being replaced
            stale.unlink(missing_ok=True)
        if self._data_path == self._copy_path and not (
                os.path.exists(self._copy_path)
                and (manifest is None or manifest.get("data_size") == os.path.getsize(self._copy_path))):
            self._copy(f"{self.path} is gzip without random access; decompressing it once into "
                       f"{self.cache_entry} (bgzip the file to skip this)" if kind != "none" else
                       f"{self.path} has CRLF line endings; a copy with LF endings goes into {self.cache_entry}")
        try:
            self._build_index()
        except _LineLengthError as e:
            # pyfaidx counts a blank line as one byte, so a CRLF file with a blank line (often the last line)
            # fails its line-length check though LF files pass. A copy with LF endings indexes as the LF file.
            if self._data_path == self._copy_path or not _has_crlf(self.path, kind):
                raise InputError(self.path, f"not a valid FASTA: {e}") from None
            self._use_data(self._copy_path, bgzf=False)
            self._copy(f"{self.path} has CRLF line endings; a copy with LF endings goes into {self.cache_entry}")
            try:
                self._build_index()
            except _LineLengthError as e:
                raise InputError(self.path, f"not a valid FASTA: {e}") from None
        with atomic_path(self._manifest_path()) as tmp, open(tmp, "w") as f:
            json.dump(self._expected_manifest(), f)

    def _copy(self, announce: str) -> None:
        """The input, decompressed and with LF line endings, as the cache entry's copy."""
        print(f"dnamamba: {announce}", file=sys.stderr)
        try:
            self.cache_entry.mkdir(parents=True, exist_ok=True)
            with atomic_path(self._copy_path) as tmp:
                opener = gzip.open if _compression(self.path) != "none" else open
                with opener(self.path, "rb") as src, open(tmp, "wb") as dst:
                    carry = b""
                    while block := src.read(1 << 20):
                        block = carry + block
                        # A CR at the end of a block may start a CRLF that the next block ends.
                        carry = b"\r" if block.endswith(b"\r") else b""
                        dst.write(block[:len(block) - len(carry)].replace(b"\r\n", b"\n"))
                    dst.write(carry)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; so is a full or read-only cache
            raise InputError(self.path, f"cannot copy into the cache {self.cache_entry} "
                                        f"(set DNAMAMBA_CACHE to move it): {e}") from None

    def _build_index(self) -> None:
        # pyfaidx writes its indexes in place, so it writes to temporary names that are renamed on
        # success: concurrent processes (DDP ranks) never read a half-written index. The manifest,
        # written after both, says they are complete.
        entry = self.cache_entry
        gzi_ctx = atomic_path(self._gzi_path) if self._gzi_path else nullcontext(None)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            with atomic_path(self._fai_path) as tmp_fai, gzi_ctx as tmp_gzi:
                # pyfaidx would take the empty temporary files for up-to-date indexes.
                os.unlink(tmp_fai)
                if tmp_gzi:
                    os.unlink(tmp_gzi)
                pyfaidx.Faidx(self._data_path, indexname=tmp_fai, gzi_indexname=tmp_gzi).close()
        except pyfaidx.FastaIndexingError as e:
            if os.path.getsize(self._data_path) == 0 or "does not contain a valid sequence" in str(e):
                raise InputError(self.path, "empty FASTA: no record (no line starting with '>')") from None
            if "Line length of fasta file is not consistent" in str(e):
                raise _LineLengthError(str(e)) from None
            raise InputError(self.path, f"not a valid FASTA: {e}") from None
        except ValueError as e:  # duplicate record names, or bytes that are not text
            raise InputError(self.path, f"not a valid FASTA: {e}") from None
        except OSError as e:
            if e.errno is not None:  # the system refused a write: permissions, a full disk
                raise InputError(self.path, f"cannot write the index into the cache {entry} "
                                            f"(set DNAMAMBA_CACHE to move it): {e}") from None
            raise InputError(self.path, f"not a valid bgzip file: {e}") from None
        except (EOFError, struct.error, pyfaidx.UnsupportedCompressionFormat) as e:  # truncated BGZF blocks
            raise InputError(self.path, f"not a valid bgzip file (truncated?): {e}") from None

    def _faidx(self) -> pyfaidx.Faidx:
        if self._handle is None or self._pid != os.getpid():
            # A handle inherited through fork shares its file offset with the parent: never reuse it.
            with warnings.catch_warnings():
                # The cache key already covers mtime; pyfaidx's own staleness check would only warn.
                warnings.simplefilter("ignore", RuntimeWarning)
                self._handle = pyfaidx.Faidx(self._data_path, indexname=self._fai_path,
                                             gzi_indexname=self._gzi_path, as_raw=True,
                                             build_index=False, rebuild=False)
            self._pid = os.getpid()
        return self._handle

    def length(self, name: str) -> int:
        """The record's length; InputError naming a few available records when there is no such record."""
        try:
            return self.lengths[name]
        except KeyError:
            shown = ", ".join(self.names[:5]) + (f" (and {len(self.names) - 5} more)" if len(self.names) > 5 else "")
            raise InputError(self.path, f"no such record; available: {shown}", record=str(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self.lengths

    def fetch(self, name: str, start: int, end: int) -> bytes:
        """Bases [start, end) of record `name`, 0-based, as bytes with case kept. Nothing is clipped."""
        length = self.length(name)
        start, end = int(start), int(end)
        if not 0 <= start <= end <= length:
            raise InputError(self.path, f"interval [{start}, {end}) is outside the record (length {length})",
                             record=name)
        if start == end:
            return b""
        try:
            seq = self._read_plain(name, start, end) if self._gzi_path is None else \
                self._faidx().from_file(name, start + 1, end).encode()
        except UnicodeDecodeError:
            raise InputError(self.path, f"bytes that are not text in [{start}, {end})", record=name) from None
        if len(seq) != end - start:
            raise InputError(self.path, f"read {len(seq)} bases for [{start}, {end}): the file changed after "
                                        f"it was indexed, or its line lengths are inconsistent; the index is "
                                        f"in the cache entry {self.cache_entry} (delete it to rebuild)",
                             record=name)
        self._check_bytes(name, start, seq)
        return seq

    def _read_plain(self, name: str, start: int, end: int) -> bytes:
        """[start, end) of an uncompressed file, read at the offsets its .fai gives with one pread. Variant
        scoring fetches tens of thousands of short intervals, where pyfaidx's per-line assembly in Python
        costs ten times the read."""
        faidx = self._faidx()
        rec = faidx.index[name]
        first = rec.offset + (start // rec.lenc) * rec.lenb + start % rec.lenc
        last = rec.offset + ((end - 1) // rec.lenc) * rec.lenb + (end - 1) % rec.lenc + 1
        return os.pread(faidx.file.fileno(), last - first, first).translate(None, b"\r\n")

    def fetch_tokens(self, name: str, start: int, end: int) -> torch.Tensor:
        """`fetch` as token ids, (end - start,) long."""
        return alphabet.encode(self.fetch(name, start, end))

    def _check_bytes(self, name: str, start: int, seq: bytes) -> None:
        arr = np.frombuffer(seq, dtype=np.uint8)
        bad = _INVALID_LUT[arr]
        if bad.any():
            first = int(bad.argmax())
            chars = " ".join(repr(chr(b)) for b in sorted(alphabet.invalid_bytes(seq))[:5])
            raise InputError(self.path, f"unexpected character(s) {chars} (first at position {start + first}); "
                                        f"only IUPAC nucleotide codes are allowed", record=name)

    def n_runs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Maximal runs of bases that do not count toward the loss (N, n and the other IUPAC ambiguity
        codes), as (starts, ends) int64 arrays in increasing order. One pass over the record, which also
        checks every byte of it; the result is kept for later calls."""
        if name not in self._n_runs:
            self._n_runs[name] = self._load_or_scan_n_runs(name)
        return self._n_runs[name]

    def _load_or_scan_n_runs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        # Scanning a human chromosome takes seconds, so the runs are kept in the cache entry.
        digest = hashlib.sha1(name.encode()).hexdigest()[:16]
        cached = Path(self._fai_path).with_name(f"nruns-{digest}.npy")
        if cached.exists():
            runs = np.load(cached)  # (2, n_runs)
            return runs[0], runs[1]
        starts, ends = self._scan_n_runs(name)
        try:
            with atomic_path(cached) as tmp:
                np.save(tmp, np.stack([starts, ends]))
        except OSError:
            pass  # a read-only cache only costs a rescan next time
        return starts, ends

    def _scan_n_runs(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        length = self.length(name)
        starts, ends = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for lo in range(0, length, _SCAN_CHUNK):
            hi = min(lo + _SCAN_CHUNK, length)
            off = _NO_LOSS_LUT[np.frombuffer(self.fetch(name, lo, hi), dtype=np.uint8)]  # (hi - lo,)
            edges = np.flatnonzero(np.diff(off.astype(np.int8), prepend=0, append=0))
            starts.append(edges[0::2].astype(np.int64) + lo)
            ends.append(edges[1::2].astype(np.int64) + lo)
        s, e = np.concatenate(starts), np.concatenate(ends)
        # Join runs that were cut at a chunk boundary.
        if len(s) == 0:
            return s, e
        apart = s[1:] != e[:-1]
        return s[np.concatenate([[True], apart])], e[np.concatenate([apart, [True]])]

    def n_count(self, name: str, starts, ends) -> np.ndarray:
        """Number of non-ACGT bases in each of the intervals [starts[i], ends[i]) of record `name`."""
        run_s, run_e = self.n_runs(name)
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        if len(run_s) == 0:
            return np.zeros(starts.shape, dtype=np.int64)
        run_len = run_e - run_s
        before = np.concatenate([[0], np.cumsum(run_len)])  # N bases in runs 0..i-1

        def covered(x: np.ndarray) -> np.ndarray:  # N bases in [0, x)
            i = np.searchsorted(run_s, x, side="left")  # number of runs that start before x
            last = np.maximum(i - 1, 0)
            return np.where(i > 0, before[last] + np.minimum(x - run_s[last], run_len[last]), 0)

        return covered(ends) - covered(starts)

    def close(self) -> None:
        if self._handle is not None and self._pid == os.getpid():
            self._handle.close()
        self._handle = None
        self._pid = None

    def __enter__(self) -> "FastaFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return f"FastaFile({self.path!r}, {len(self.names)} records)"
