"""Atomic output: write to a temporary file beside the target, then rename it into place.

A crash or a bad record midway leaves the user's previous file (if any) untouched and no half-file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success rename it to `path`, else delete it.

    The temporary name keeps the target's extension (or `suffix`) because some writers (pysam, numpy)
    choose the format from it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    if suffix is None:
        suffix = "".join(s for s in _suffixes(base))
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; give the output the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")[1:]
    if parts and parts[-1] in {"gz", "bgz"} and len(parts) >= 2:
        return ["." + parts[-2], "." + parts[-1]]
    return ["." + parts[-1]] if parts else []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
