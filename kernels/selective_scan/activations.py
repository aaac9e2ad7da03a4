"""Softplus and sigmoid, written once and called from every kernel.

Compiled, the softplus's log is the hardware lg2.approx (`libdevice.fast_log2f`: one MUFU op, relative error about
2^-22) instead of the precise log's ~25-instruction polynomial, a sixth of a forward step's instructions. The
interpreter has no libdevice, so it calls `_softplus_interpreted` (tl.log) instead (registry.py). Exponentials are
exp2 of a pre-scaled argument: tl.exp adds range fix-up instructions around the same MUFU op.
"""
from __future__ import annotations

import triton.language as tl
from triton.language.extra import libdevice

from .registry import KERNELS


def _softplus_interpreted(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp2(x * 1.4426950408889634)), x)


@KERNELS.helper(interpreted=_softplus_interpreted)
def _softplus(x):
    # log(1 + e^x); above 20 it equals x in fp32
    return tl.where(x <= 20.0, libdevice.fast_log2f(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453, x)


@KERNELS.helper()
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp2(x * -1.4426950408889634))
