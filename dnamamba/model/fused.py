"""The fused path of the model: one autograd Function per block, the analogue of mamba_ssm's mamba_inner_fn.

A block's forward is: residual add + RMSNorm (one kernel) -> in_proj as two GEMMs (x and z come out
contiguous, no split copy) -> causal depthwise conv1d + SiLU (one kernel, channel-last) -> x_proj ->
dt_proj -> selective scan with D skip and z gate -> out_proj.

What the backward keeps, per block: the residual stream after the add (fp32, (B, L, d_model)), the scan
output y (compute dtype, (B, L, d_inner), for out_proj's weight gradient), x_proj's output
((B, L, dt_rank + 2 d_state), small), the per-row rstd and the scan's chunk-start states. Everything else of
size (B, L, d_inner) -- x, z, the conv output, delta -- is rebuilt in the backward: two GEMMs at K = d_model
and one memory-bound conv cost less than keeping them (1 GB each per block at 2^20 tokens, d_inner 512).

The reference modules in mamba.py compute the same function; tests/model/test_fused.py compares the two
on outputs and every parameter gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .scan import (ScanConfig, causal_conv1d_bwd, causal_conv1d_fwd, rms_norm_bwd, rms_norm_fwd, selective_scan_bwd,
                   selective_scan_fwd)

# The scan's launch shapes on the fused path (the defaults; bench/score_variants.py swaps in variants).
SCAN_CONFIG = ScanConfig()


def _compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype autocast would run the GEMMs in, else the residual stream's own dtype."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return default


class FusedBlockFn(torch.autograd.Function):
    """residual_out = residual + x_prev; out = mixer(rmsnorm(residual_out)). Returns (out, residual_out,
    conv_final, ssm_final); the states are None unless asked for."""

    @staticmethod
    def forward(ctx, residual, x_prev, norm_w, in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D, out_w,
                conv_state, ssm_state, cu_seqlens, eps, return_state, keep_states):
        dtype = _compute_dtype(residual.device, residual.dtype)
        with torch.autocast(residual.device.type, enabled=False):
            d_inner, width = conv_w.shape[0], conv_w.shape[-1]
            r = dtproj_w.shape[1]
            n = A_log.shape[1]
            hn, residual_out, rstd = rms_norm_fwd(x_prev, residual, norm_w, eps, dtype)  # hn (B, L, d_model)
            w_in = in_w.to(dtype)  # (2 d_inner, d_model): rows [:d_inner] give x, the rest z
            x = F.linear(hn, w_in[:d_inner])  # (B, L, d_inner)
            z = F.linear(hn, w_in[d_inner:])  # (B, L, d_inner)
            u = causal_conv1d_fwd(x, conv_w.view(d_inner, width), conv_b, conv_state, cu_seqlens,
                                  return_final_state=return_state)  # (B, L, d_inner)
            u, conv_final = u if return_state else (u, None)  # conv_final (B|nseq, width-1, d_inner)
            x_dbl = F.linear(u, xproj_w.to(dtype))  # (B, L, r + 2n)
            delta = F.linear(x_dbl[..., :r], dtproj_w.to(dtype))  # (B, L, d_inner)
            Bm, Cm = _state_rows(x_dbl, r, n)  # (B, L, 1, n) fp32 each
            A = -torch.exp(A_log.float())  # (d_inner, n)
            h0 = None if ssm_state is None else ssm_state.float().contiguous()
            y, ssm_final, saved = selective_scan_fwd(u, delta, A, Bm, Cm, D.float(), z, dtproj_b.float(), True, h0,
                                                     cu_seqlens, SCAN_CONFIG, keep_states)  # y (B, L, d_inner)
            out = F.linear(y, out_w.to(dtype))  # (B, L, d_model)
        ctx.save_for_backward(residual_out, rstd, x_dbl, y, norm_w, in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b,
                              A_log, D, out_w, conv_state, h0, cu_seqlens)
        ctx.scan_saved = saved
        ctx.eps, ctx.dtype = eps, dtype
        ctx.x_prev_dtype = None if x_prev is None else x_prev.dtype
        ctx.residual_dtype = residual.dtype
        if not return_state:
            ssm_final = None
        ctx.mark_non_differentiable(*(t for t in (conv_final,) if t is not None))
        return out, residual_out, conv_final, ssm_final

    @staticmethod
    def backward(ctx, d_out, d_residual_out, _d_conv_final, d_ssm_final):
        (residual_out, rstd, x_dbl, y, norm_w, in_w, conv_w, conv_b, xproj_w, dtproj_w, dtproj_b, A_log, D, out_w,
         conv_state, h0, cu_seqlens) = ctx.saved_tensors
        dtype = ctx.dtype
        with torch.autocast(residual_out.device.type, enabled=False):
            d_inner, width = conv_w.shape[0], conv_w.shape[-1]
            r, n = dtproj_w.shape[1], A_log.shape[1]
            hn, _, _ = rms_norm_fwd(None, residual_out, norm_w, ctx.eps, dtype)  # (B, L, d_model), rebuilt
            w_in, w_x, w_dt, w_out = in_w.to(dtype), xproj_w.to(dtype), dtproj_w.to(dtype), out_w.to(dtype)
            x = F.linear(hn, w_in[:d_inner])  # (B, L, d_inner)
            z = F.linear(hn, w_in[d_inner:])  # (B, L, d_inner)
            conv_w2 = conv_w.view(d_inner, width)
            u = causal_conv1d_fwd(x, conv_w2, conv_b, conv_state, cu_seqlens)  # (B, L, d_inner)
            dt_in = x_dbl[..., :r]  # (B, L, r)
            delta = F.linear(dt_in, w_dt)  # (B, L, d_inner)
            Bm, Cm = _state_rows(x_dbl, r, n)
            A = -torch.exp(A_log.float())
            d_out = d_out.to(dtype).contiguous()
            rows = d_out.shape[0] * d_out.shape[1]
            d_out_w = (d_out.view(rows, -1).t() @ y.view(rows, -1)).float()  # (d_model, d_inner)
            dy = d_out @ w_out  # (B, L, d_inner)
            du, ddelta, dA, dB, dC, dD, dz, dbias, dh0 = selective_scan_bwd(
                dy, d_ssm_final, u, delta, A, Bm, Cm, D.float(), z, dtproj_b.float(), True, h0, ctx.scan_saved)
            d_A_log = dA * A  # A = -exp(A_log)
            d_dtproj_w = (ddelta.view(rows, -1).t() @ dt_in.reshape(rows, r)).float()  # (d_inner, r)
            d_x_dbl = torch.empty_like(x_dbl)  # (B, L, r + 2n)
            d_x_dbl[..., :r].copy_(ddelta @ w_dt)
            d_x_dbl[..., r:r + n].copy_(dB.squeeze(2))
            d_x_dbl[..., r + n:].copy_(dC.squeeze(2))
            d_xproj_w = (d_x_dbl.view(rows, -1).t() @ u.view(rows, -1)).float()  # (r + 2n, d_inner)
            du = du.view(rows, -1).addmm_(d_x_dbl.view(rows, -1), w_x).view_as(u)  # (B, L, d_inner)
            dx, d_conv_w, d_conv_b, d_conv_state = causal_conv1d_bwd(x, conv_w2, conv_b, du, conv_state, cu_seqlens)
            hn_rows = hn.view(rows, -1)
            d_in_w = torch.cat([dx.view(rows, -1).t() @ hn_rows, dz.view(rows, -1).t() @ hn_rows]).float()
            d_hn = (dx @ w_in[:d_inner]).view(rows, -1).addmm_(dz.view(rows, -1), w_in[d_inner:])  # (rows, d_model)
            d_residual, d_norm_w = rms_norm_bwd(d_hn.view_as(hn), residual_out, norm_w, rstd, ctx.eps,
                                                d_residual_out)
        d_x_prev = None if ctx.x_prev_dtype is None else d_residual.to(ctx.x_prev_dtype)
        d_res_in = d_residual.to(ctx.residual_dtype)
        d_conv_state = None if conv_state is None or d_conv_state is None else d_conv_state.to(conv_state.dtype)
        return (d_res_in, d_x_prev, d_norm_w, d_in_w, d_conv_w.view_as(conv_w), d_conv_b, d_xproj_w, d_dtproj_w,
                dbias, d_A_log, dD, d_out_w, d_conv_state, dh0, None, None, None, None)


def _state_rows(x_dbl: torch.Tensor, r: int, n: int):
    """x_proj's B and C columns as the scan takes them: (B, L, 1, n) fp32 contiguous (small copies)."""
    Bm = x_dbl[..., r:r + n].float().unsqueeze(2).contiguous()
    Cm = x_dbl[..., r + n:].float().unsqueeze(2).contiguous()
    return Bm, Cm


def fused_block(block, residual, x_prev, state=None, return_state=False, cu_seqlens=None):
    """Run MambaBlock `block` on the fused path. residual (B, L, d_model) fp32, x_prev the previous block's
    mixer output or None; returns (out, residual_out, (conv_final, ssm_final) or None)."""
    m = block.mixer
    conv_state = None if state is None else state.conv
    ssm_state = None if state is None else state.ssm
    params = (block.norm.weight, m.in_proj.weight, m.conv_weight, m.conv_bias, m.x_proj.weight, m.dt_proj.weight,
              m.dt_proj.bias, m.A_log, m.D, m.out_proj.weight)
    # Without a backward to follow (inference, no_grad) the scan keeps no chunk states and may take one pass.
    keep_states = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in
                                                  (residual, x_prev, conv_state, ssm_state, *params))
    out, residual_out, conv_final, ssm_final = FusedBlockFn.apply(
        residual, x_prev, *params, conv_state, ssm_state, cu_seqlens, block.norm.eps, return_state, keep_states)
    return out, residual_out, (conv_final, ssm_final) if return_state else None
