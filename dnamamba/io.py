"""Safe output: checks before any work starts, and atomic writes.

- `check_writable` and `check_writable_dir`: an output that could not be written fails before the
  work, not after it.
- `refuse_overwriting_inputs`: an output that is one of the command's inputs (by path, through a
  symlink, or as a hard link) is refused; every command calls it with all its outputs and inputs.
- `atomic_path`: write to a temporary file beside the target, then rename it into place. A crash, a
  bad record or a stop signal midway leaves the user's previous file (if any) untouched and no
  half-file; a temporary file left by a killed process is removed by the next write of that target.
"""
from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import zlib
from typing import Iterable, Iterator

from .errors import InputError

# Temporary names carry the writer's host and process id, so that a later run can tell the leftovers of a
# killed process (same host, process gone) from a file that another live process is still writing.
_HOST = f"{zlib.crc32(socket.gethostname().encode()):08x}"


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
    _remove_stale_temporaries(folder, base)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.{_HOST}-{os.getpid()}.", suffix=f".tmp{suffix}", dir=folder)
    os.close(fd)
    try:
        yield tmp
        # mkstemp creates 0600; give the output the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _remove_stale_temporaries(folder: str, base: str) -> None:
    """Delete temporary files of `base` whose writer, a process on this host, no longer exists."""
    pattern = re.compile(rf"\.{re.escape(base)}\.{_HOST}-(\d+)\.[^.]+\.tmp")
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if match and not _process_exists(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _suffixes(name: str) -> list[str]:
    parts = name.split(".")[1:]
    if parts and parts[-1] in {"gz", "bgz"} and len(parts) >= 2:
        return ["." + parts[-2], "." + parts[-1]]
    return ["." + parts[-1]] if parts else []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str) -> None:
    """Fail before any work when the output file could not be written; creates nothing."""
    if os.path.isdir(path):
        raise InputError(path, "output path is a directory")
    _check_creatable(path, os.path.dirname(os.path.abspath(path)))


def check_writable_dir(path: str) -> None:
    """Fail before any work when files could not be written into the folder `path` (created later if
    missing); creates nothing."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise InputError(path, "output folder is an existing file")
    _check_creatable(path, os.path.abspath(path))


def _check_creatable(path: str, folder: str) -> None:
    while not os.path.exists(folder):  # missing folders are created at write time, under this one
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise InputError(path, f"cannot create the output folder: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(path, f"the output folder {folder} is not writable")


def refuse_overwriting_inputs(outputs: Iterable[str | os.PathLike],
                              inputs: Iterable[str | os.PathLike | None]) -> None:
    """InputError when an output would replace an input file.

    An output matches an input when both resolve to the same path (symlinks followed on either side) or
    are the same file on disk (a hard link). A folder among the inputs (a model export) stands for the
    files directly inside it.
    """
    known: dict = {}
    for item in inputs:
        if item is None:
            continue
        item = os.fspath(item)
        files = [item]
        if os.path.isdir(item):
            files = [os.path.join(item, name) for name in sorted(os.listdir(item))]
            files = [f for f in files if os.path.isfile(f)]
        for f in files:
            for key in _identities(f):
                known.setdefault(key, f)
    for out in outputs:
        out = os.fspath(out)
        for key in _identities(out):
            if key in known:
                same = known[key]
                how = "" if os.path.abspath(same) == os.path.abspath(out) else f" ({same})"
                raise InputError(out, f"the output would overwrite an input{how}; choose another output path")


def _identities(path: str) -> list:
    """The resolved path, and (device, inode) when the file exists."""
    keys: list = [os.path.realpath(path)]
    try:
        st = os.stat(path)
    except OSError:
        return keys
    return keys + [(st.st_dev, st.st_ino)]
