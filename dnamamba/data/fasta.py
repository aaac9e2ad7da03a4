"""FASTA records by name and 0-based, half-open coordinates, on pyfaidx.

Plain FASTA and bgzip FASTA are read in place with random access. A plain-gzip FASTA has no random
access, so it is decompressed once into the cache. Indexes (.fai, .gzi) always go to the cache, never
beside the input, because input folders are often read-only or shared. Cache entries are keyed by
the input's absolute path, size and mtime, so an edited input gets a fresh entry.

A `FastaFile` is picklable and opens its pyfaidx handle lazily in each process, so one object can be
handed to DataLoader workers (fork or spawn) and each worker gets its own file handle.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.resources
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
        entry = self.cache_dir / "fasta" / _cache_key(self.path)
        kind = _compression(self.path)
        gz_name = self.path.lower().endswith(_GZ_SUFFIXES)

        self._gzi_path: str | None = None
        if kind == "gzip" or (kind == "bgzf" and not gz_name):
            self._data_path = str(entry / _decompressed_name(self.path))
            if not os.path.exists(self._data_path):
                self._decompress(entry)
        elif kind == "bgzf":
            self._data_path = self.path
            self._gzi_path = str(entry / (os.path.basename(self.path) + ".gzi"))
        else:
            if gz_name:
                raise InputError(self.path, "file name ends in .gz but the file is not gzip-compressed")
            self._data_path = self.path
        self._fai_path = str(entry / (os.path.basename(self._data_path) + ".fai"))
        if not os.path.exists(self._fai_path) or (self._gzi_path and not os.path.exists(self._gzi_path)):
            self._build_index(entry)

        self._handle: pyfaidx.Faidx | None = None
        self._pid: int | None = None
        index = self._faidx().index
        self.names: list[str] = list(index)
        self.lengths: dict[str, int] = {name: rec.rlen for name, rec in index.items()}
        self._n_runs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if not self.names or not any(self.lengths.values()):
            raise InputError(self.path, "empty FASTA: no record has any bases")

    def _decompress(self, entry: Path) -> None:
        print(f"dnamamba: {self.path} is gzip without random access; decompressing it once into "
              f"{entry} (bgzip the file to skip this)", file=sys.stderr)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            with atomic_path(self._data_path) as tmp:
                with gzip.open(self.path, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; so is a full or read-only cache
            raise InputError(self.path, f"cannot decompress into the cache {entry} "
                                        f"(set DNAMAMBA_CACHE to move it): {e}") from None

    def _build_index(self, entry: Path) -> None:
        # pyfaidx writes its indexes in place, so it writes to temporary names that are renamed on
        # success: concurrent processes (DDP ranks) never read a half-written index. The .gzi is
        # renamed before the .fai, so an existing .fai means both are complete.
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
            seq = self._faidx().from_file(name, start + 1, end).encode()
        except UnicodeDecodeError:
            raise InputError(self.path, f"bytes that are not text in [{start}, {end})", record=name) from None
        if len(seq) != end - start:
            raise InputError(self.path, f"read {len(seq)} bases for [{start}, {end}); the file changed "
                                        f"after it was indexed, or its line lengths are inconsistent",
                             record=name)
        self._check_bytes(name, start, seq)
        return seq

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
