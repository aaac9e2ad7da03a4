"""The process group's end: destroyed while the interpreter is still whole."""
from __future__ import annotations

import atexit

import torch.distributed as dist

_DESTROY_REGISTERED = False


def destroy_process_group_at_exit() -> None:
    """Destroy the default process group, if there is one, when the interpreter exits.

    Lightning does this for NCCL only. A gloo group left to interpreter shutdown may never have its
    destructor run (Python does not promise to collect it), and gloo's threads are then destroyed unjoined:
    std::terminate, SIGABRT, now and then, in a rank that finished its work (pytorch/pytorch#65513). The
    spawned CPU DDP ranks exit right after training, so that is where it showed.
    """
    global _DESTROY_REGISTERED
    if _DESTROY_REGISTERED or not (dist.is_available() and dist.is_initialized()):
        return
    _DESTROY_REGISTERED = True
    atexit.register(_destroy_process_group)


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
