"""The one seam between the model and the kernels: pick a selective-scan implementation, and the kernels
of the fused path (model/fused.py).

auto: the Triton kernels for CUDA tensors, the chunked PyTorch scan elsewhere.
torch: the chunked PyTorch scan. naive: the reference loop. triton: the Triton kernels always
(CUDA, or CPU under TRITON_INTERPRET=1).
"""
from __future__ import annotations

import functools

import torch

import dnamamba_kernels as K
from dnamamba_kernels import ScanConfig, selective_scan_bwd, selective_scan_fwd
from dnamamba_kernels.conv1d import causal_conv1d_bwd as _conv_bwd
from dnamamba_kernels.conv1d import causal_conv1d_fwd as _conv_fwd
from dnamamba_kernels.cross_entropy import linear_cross_entropy
from dnamamba_kernels.rms_norm import add_rms_norm, rms_norm_bwd, rms_norm_fwd


def scan_fn(backend: str, device: torch.device, chunk_size: int):
    """The selective_scan callable for `backend` on `device`, all with the kernels' shared signature."""
    if backend == "naive":
        return K.selective_scan_ref
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return functools.partial(K.selective_scan_chunked, chunk_size=chunk_size)
    if backend in ("auto", "triton"):
        return K.selective_scan
    raise ValueError(f"unknown scan backend {backend!r}")


def use_fused(fused, device: torch.device) -> bool:
    """Whether the model takes the fused path: `fused` is MambaConfig.fused (auto: on CUDA)."""
    if fused == "auto":
        return device.type == "cuda"
    return bool(fused)


def causal_conv1d_fwd(x, weight, bias, initial_state, cu_seqlens, return_final_state=False):
    """Depthwise causal conv1d + SiLU, no autograd. x (B, L, D) -> (B, L, D) [, final conv state]."""
    return _conv_fwd(x, weight, bias, activation="silu", initial_state=initial_state, cu_seqlens=cu_seqlens,
                     return_final_state=return_final_state)


def causal_conv1d_bwd(x, weight, bias, dy, initial_state, cu_seqlens):
    """(dx, dweight, dbias, dinitial_state) of `causal_conv1d_fwd`; recomputes the conv from x."""
    return _conv_bwd(x, weight, bias, dy, activation="silu", initial_state=initial_state, cu_seqlens=cu_seqlens)


__all__ = ["ScanConfig", "scan_fn", "use_fused", "causal_conv1d_fwd", "causal_conv1d_bwd", "rms_norm_fwd", "rms_norm_bwd",
           "add_rms_norm", "linear_cross_entropy", "selective_scan_fwd", "selective_scan_bwd"]
