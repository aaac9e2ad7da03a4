"""Reference residual add + RMSNorm, plain PyTorch, in float32 or float64.

    residual_out = residual + x                                        fp32 (float64 stays float64)
    out = residual_out * rsqrt(mean(residual_out^2, -1) + eps) * weight      in out_dtype

`add_rms_norm_ref` is the definition the Triton path is tested against (its gradients come from autograd).
`rms_norm_fwd_ref` and `rms_norm_bwd_ref` are the same math split the way the low-level Triton launchers are,
with the backward written out by hand; they are what `rms_norm_fwd` / `rms_norm_bwd` run where Triton does not
(CPU tensors without TRITON_INTERPRET=1, float64).
"""
from __future__ import annotations

import torch


def norm_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """float64 if any input is float64 (reference checks), else float32: the statistics are never lower."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _sum_inputs(x, residual, dtype):
    if x is None and residual is None:
        raise ValueError("add_rms_norm needs x or residual (both are None)")
    if residual is None:
        return x.to(dtype)
    if x is None:
        return residual.to(dtype)
    if x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape")
    return residual.to(dtype) + x.to(dtype)


def _default_out_dtype(x, residual, out_dtype):
    return out_dtype if out_dtype is not None else (x if x is not None else residual).dtype


def add_rms_norm_ref(x, residual, weight, eps=1e-5, out_dtype=None):
    """Residual add then RMSNorm. x, residual: (..., d) or None (not both); weight: (d,).

    Returns out (..., d) in out_dtype (default: x's dtype, or residual's if x is None) and residual_out (..., d)
    in fp32 (float64 if any input is float64).
    """
    dtype = norm_dtype(x, residual, weight)
    r = _sum_inputs(x, residual, dtype)  # (..., d)
    rstd = torch.rsqrt(r.pow(2).mean(-1, keepdim=True) + eps)  # (..., 1)
    out = r * rstd * weight.to(dtype)
    return out.to(_default_out_dtype(x, residual, out_dtype)), r


def rms_norm_fwd_ref(x, residual, weight, eps, out_dtype=None):
    """`add_rms_norm_ref` without autograd, also returning rstd (...) = rsqrt(mean(residual_out^2) + eps)."""
    with torch.no_grad():
        dtype = norm_dtype(x, residual, weight)
        r = _sum_inputs(x, residual, dtype)  # (..., d)
        rstd = torch.rsqrt(r.pow(2).mean(-1) + eps)  # (...)
        out = (r * rstd[..., None] * weight.to(dtype)).to(_default_out_dtype(x, residual, out_dtype))
    return out, r, rstd


def rms_norm_bwd_ref(dout, residual_out, weight, rstd, eps, dresidual_out=None):
    """Gradient of the norm w.r.t. residual_out (plus dresidual_out), and w.r.t. weight.

    With xhat = r * rstd and g = dout * weight, d(out)/dr gives dr = rstd * (g - xhat * mean(g * xhat)), and
    dweight = sum over rows of dout * xhat. rstd may be None: it is then recomputed from residual_out and eps.
    Returns dresidual (..., d) and dweight (d,), fp32 (float64 if residual_out is float64).
    """
    with torch.no_grad():
        dtype = norm_dtype(residual_out)
        r = residual_out.to(dtype)  # (..., d)
        if rstd is None:
            rstd = torch.rsqrt(r.pow(2).mean(-1) + eps)
        rstd = rstd.to(dtype)[..., None]  # (..., 1)
        xhat = r * rstd
        dy = dout.to(dtype)
        g = dy * weight.to(dtype)
        dr = (g - xhat * (g * xhat).mean(-1, keepdim=True)) * rstd
        if dresidual_out is not None:
            dr = dr + dresidual_out.to(dtype)
        dweight = (dy * xhat).reshape(-1, r.shape[-1]).sum(0)  # (d,)
    return dr, dweight
