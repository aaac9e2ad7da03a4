"""Stop signals (SIGINT from Ctrl-C, SIGTERM from a batch scheduler) as an exception.

Python's default SIGTERM ends the process at once, so `finally` blocks never run and temporary outputs
stay behind; its SIGINT raises KeyboardInterrupt, which libraries print as long tracebacks or turn into
exit status 1 (Lightning). `raise_on_stop_signals` makes both raise `Interrupted` instead: every
`finally` runs, and the CLI prints one line and exits with the shell's status for the signal,
128 + its number (130 for SIGINT, 143 for SIGTERM), so a scheduler never counts the run as a success.

Training must not stop between two halves of an optimizer step. Inside `deferred()` a signal is only
recorded; `check()` (called by the trainer between batches) raises it at a point where the state can
be saved. A second signal while one is pending raises at once.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived. BaseException, like KeyboardInterrupt, so `except Exception` passes it on.

    `at_batch_boundary` is True when it was raised by `check()`, where the training state is whole;
    `note` is what the run could save, for the CLI's one line.
    """

    def __init__(self, signum: int, at_batch_boundary: bool = False):
        self.signum = int(signum)
        self.at_batch_boundary = at_batch_boundary
        self.note = ""
        super().__init__(self.name)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class _State:
    owner: int | None = None  # the process that installed the handler
    deferring = False
    pending: int | None = None
    raised = False


def raise_on_stop_signals() -> None:
    """From now on SIGINT and SIGTERM raise `Interrupted` in this process (once; later ones are ignored
    while the first is being handled)."""
    _State.owner = os.getpid()
    _State.deferring, _State.pending, _State.raised = False, None, False
    for signum in STOP_SIGNALS:
        signal.signal(signum, _handler)


def _handler(signum: int, frame) -> None:
    if os.getpid() != _State.owner:
        # A forked child (a DataLoader worker) ends as it would have without this handler; the main
        # process reports the interruption.
        if signum == signal.SIGINT:
            signal.default_int_handler(signum, frame)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _State.raised:
        return
    if _State.deferring and _State.pending is None:
        _State.pending = signum
        return
    _State.raised = True
    raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold stop signals until `check()` or the end of the block."""
    _State.deferring = True
    try:
        yield
    finally:
        _State.deferring = False
    check()


def check() -> None:
    """Raise the signal recorded inside `deferred()`, if any."""
    if _State.pending is not None and not _State.raised:
        _State.raised = True
        raise Interrupted(_State.pending, at_batch_boundary=True)
