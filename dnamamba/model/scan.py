"""The one seam between the model and the kernels: pick a selective-scan implementation.

auto: the Triton kernels for CUDA tensors, the chunked PyTorch scan elsewhere.
torch: the chunked PyTorch scan. naive: the reference loop. triton: the Triton kernels always
(CUDA, or CPU under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import functools

import torch

import dnamamba_kernels as K


def scan_fn(backend: str, device: torch.device, chunk_size: int):
    """The selective_scan callable for `backend` on `device`, all with the kernels' shared signature."""
    if backend == "naive":
        return K.selective_scan_ref
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return functools.partial(K.selective_scan_chunked, chunk_size=chunk_size)
    if backend in ("auto", "triton"):
        return K.selective_scan
    raise ValueError(f"unknown scan backend {backend!r}")
