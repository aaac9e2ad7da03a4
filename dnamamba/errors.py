"""The one exception type for bad user input.

The CLI catches `InputError` and prints its message as a single line with a non-zero exit, so every
check on user files raises it with the file and, where there is one, the record that is wrong.
"""
from __future__ import annotations

import os
import sys


class InputError(Exception):
    """A user file or argument is unusable. `str()` is the one-line message the CLI prints."""

    def __init__(self, path: str | os.PathLike | None, message: str, record: str | None = None):
        self.path = None if path is None else str(path)
        self.record = record
        self.message = message
        where = self.path or "input"
        if record is not None:
            where = f"{where}: record {record}"
        super().__init__(f"{where}: {message}")


def require_file(path: str | os.PathLike, what: str = "file") -> str:
    """Return `path` as a string, or raise InputError when it is not an existing, readable regular file.

    Readability is tested by opening the file, not with os.access: that answers for the process as it
    runs (root without CAP_DAC_OVERRIDE, ACLs, read-only mounts) and gives the system's own reason.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(path, f"{what} not found")
    if not os.path.isfile(path):
        raise InputError(path, f"{what} is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputError(path, f"{what} cannot be read: {e.strerror or e}") from None
    return path


def exit_on_input_error(fn, *args, **kwargs):
    """Call `fn`; an InputError becomes one line on stderr and exit status 2, never a traceback. Running out
    of GPU memory is one line too, with what to lower, and exit status 1.

    Libraries that call user code (Hydra's instantiate, Lightning's hooks) wrap its exceptions, so the
    InputError is also looked for along the chain of causes.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        cause = _in_chain(e, lambda x: isinstance(x, InputError))
        if cause is not None:
            print(f"dnamamba: error: {cause}", file=sys.stderr)
            raise SystemExit(2) from None
        # torch.cuda.OutOfMemoryError, named rather than imported: this module stays free of torch
        oom = _in_chain(e, lambda x: type(x).__name__ == "OutOfMemoryError")
        if oom is None:
            raise
        first = str(oom).strip().splitlines()[0] if str(oom).strip() else "out of memory"
        print(f"dnamamba: error: out of GPU memory ({first.rstrip('.')}); a smaller batch_size, window or "
              f"data.seq_len needs less", file=sys.stderr)
        raise SystemExit(1) from None


def _in_chain(e: BaseException | None, match) -> BaseException | None:
    """The first exception along e's chain of causes for which match() holds."""
    seen = set()
    while e is not None and id(e) not in seen:
        if match(e):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None
