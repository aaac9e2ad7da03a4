"""Every Triton function of the scan in its two forms: compiled, and interpreted (TRITON_INTERPRET=1, CPU).

The mode is chosen per launch, not at import (as `triton.jit` does), so one process can run both: CUDA tensors
get the compiled kernel, CPU tensors the interpreted one. The interpreter runs kernel code as Python and cannot
call a JITFunction from it, and it has no libdevice or inline assembly. So each helper is registered with the
plain function the interpreter should call in its place (its own body by default), and an interpreted kernel is
the kernel's body with the helper names rebound to those functions.

    @KERNELS.helper(interpreted=_softplus_interpreted)
    def _softplus(x): ...                   # the name now holds the JITFunction that compiled kernels call

    @KERNELS.kernel(heuristics={"HAS_D": present("D_ptr")}, do_not_specialize=["unit"])
    def _chunk_out_kernel(...): ...

    KERNELS.get("_chunk_out_kernel", device)[grid](u_ptr=u, ..., D_ptr=None, ...)
"""
from __future__ import annotations

import types

import torch
import triton
from triton.runtime.jit import JITFunction

from ..interpreter import interpreting



def present(ptr: str):
    """A heuristic: whether the optional input `ptr` was passed (absent inputs are passed as None, which Triton
    specialises as a constexpr, so the kernel's parameter list has no slot for them)."""
    return lambda args: args[ptr] is not None


class Registry:
    def __init__(self):
        self._helpers: dict = {}  # name -> plain function the interpreter calls in its place
        self._kernels: dict = {}  # name -> (plain function, JITFunction, compiled launch object, heuristics)
        self._interpreted: dict = {}

    def helper(self, interpreted=None):
        """Register a device function; returns its JITFunction. `interpreted`: the plain function the interpreter
        calls instead (default: the same body). Helpers may call helpers registered before them."""

        def register(fn):
            self._helpers[fn.__name__] = interpreted or fn
            self._interpreted.clear()
            return JITFunction(fn)

        return register

    @staticmethod
    def combine(fn):
        """A combine function for tl.reduce: one JITFunction serves both modes (the interpreter calls its `.fn`)."""
        return JITFunction(fn)

    def kernel(self, heuristics: dict | None = None, do_not_specialize=None):
        """Register a kernel; returns its compiled form, wrapped in `triton.heuristics` when it has any."""

        def register(fn):
            jit = JITFunction(fn, do_not_specialize=do_not_specialize)
            compiled = triton.heuristics(heuristics)(jit) if heuristics else jit
            self._kernels[fn.__name__] = (fn, jit, compiled, heuristics or {})
            return compiled

        return register

    def names(self) -> list:
        return list(self._kernels)

    def jit(self, name: str) -> JITFunction:
        """The kernel's JITFunction (without heuristics), for offline compilation."""
        return self._kernels[name][1]

    def heuristics(self, name: str) -> dict:
        """The kernel's heuristics: constexpr name -> function of the launch arguments."""
        return self._kernels[name][3]

    def get(self, name: str, device: torch.device):
        """The kernel to launch for tensors on `device`: compiled for CUDA, interpreted otherwise."""
        if device.type == "cuda":
            return self._kernels[name][2]
        if name not in self._interpreted:
            from triton.runtime.interpreter import InterpretedFunction

            fn, _, _, heuristics = self._kernels[name]
            interpreted = InterpretedFunction(self._bind(fn))
            if heuristics:
                interpreted = triton.heuristics(heuristics)(interpreted)
            self._interpreted[name] = interpreted
        return self._interpreted[name]

    def _bind(self, fn):
        """`fn` with every helper name bound to its interpreted form (helpers in registration order, so a helper
        that calls an earlier one gets that one's interpreted form too)."""
        bound: dict = {}
        for name, helper in self._helpers.items():
            bound[name] = self._rebind(helper, bound)
        return self._rebind(fn, bound)

    @staticmethod
    def _rebind(fn, names):
        return types.FunctionType(fn.__code__, {**fn.__globals__, **names}, fn.__name__, fn.__defaults__,
                                  fn.__closure__)


KERNELS = Registry()
