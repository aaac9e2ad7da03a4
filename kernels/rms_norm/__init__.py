"""Fused residual add + RMSNorm (Triton), with its plain-PyTorch reference.

    from dnamamba_kernels.rms_norm import add_rms_norm, add_rms_norm_ref, rms_norm_fwd, rms_norm_bwd
    out, residual_out = add_rms_norm(x, residual, weight, eps=1e-5, out_dtype=None)

`rms_norm_fwd` / `rms_norm_bwd` are the same forward and backward without autograd, for a caller's own
autograd.Function.
"""
from .add_rms_norm import NormLaunch, add_rms_norm, rms_norm_bwd, rms_norm_fwd
from .naive import add_rms_norm_ref, rms_norm_bwd_ref, rms_norm_fwd_ref

__all__ = ["add_rms_norm", "add_rms_norm_ref", "rms_norm_fwd", "rms_norm_bwd", "rms_norm_fwd_ref",
           "rms_norm_bwd_ref", "NormLaunch"]
