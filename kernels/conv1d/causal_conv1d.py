"""Triton causal depthwise conv1d, channel-last, forward and backward, with SiLU, conv states and packed sequences.

File order follows mamba_ssm: each kernel next to its launcher, then the autograd.Function, then the public
function. The math is `naive.causal_conv1d_ref`'s: per sequence, with xx its inputs preceded by the width-1
initial-state rows, pre_t = bias + sum_k w[:, k] xx[t + k] and y_t = silu(pre_t) (or pre_t).

Forward, `_conv1d_fwd_kernel`: a program owns a tile of `block_t` steps x `block_d` channels and loads it once per
tap, shifted back by the tap's lag (the width-1 halo rows come with it); the repeats hit L1, so DRAM sees one
read of x and one write of y. A tap that reaches before its sequence's start reads the initial state instead.
`_final_state_kernel` copies each sequence's last width-1 inputs (from the initial state where the sequence
is shorter).

Backward, `_conv1d_bwd_kernel`: a program owns a tile of `bwd_block_t` steps x `bwd_block_d` channels. dx_t needs the
pre-activation gradient g at rows t..t+width-1, and a tile cannot shift values across its rows, so the program
rebuilds pre, and g, at each of those `width` row offsets from shifted loads of x and dy (the repeats hit L1,
so DRAM sees one read of x and dy and one write of dx). That costs `width` sigmoids per element, which the
special-function units absorb at this op's bytes per element. dweight and dbias are summed over the tile's rows
and written as one partial sum per program, reduced afterwards (no atomics, no (batch, seqlen, dim)
temporaries). `_dinit_kernel` gives the gradient of each sequence's initial state from its first width-1 rows.
The final state gets no gradient: it is a copy of inputs meant for the next call of a stream.

Packed sequences (`cu_seqlens`, batch 1): the forward tile looks up each row's sequence and start in a
per-step sequence index, and so does the backward tile, for the rows its g may come from too. Offsets that scale with seqlen are
int64, so tensors of more than 2^31 elements are addressed correctly.

The kernels cover widths 2 to 4 (mamba's d_conv).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ..interpreter import interpreting
from .naive import causal_conv1d_ref, check_activation, weight_2d

MIN_WIDTH, MAX_WIDTH = 2, 4
# Triton's own sum combine: tl.sum is a jit function bound at triton's import to compiled mode, which the
# interpreter cannot call, while it runs tl.reduce with this combine through numpy.
_add = tl.standard._sum_combine



class _Kernel:
    """One kernel, compiled for CUDA tensors and interpreted for CPU tensors, chosen per call (not at import,
    so one process can run both), with the same heuristics on both."""

    def __init__(self, fn, heuristics):
        self.fn, self.heuristics = fn, heuristics
        self.compiled = triton.heuristics(heuristics)(JITFunction(fn))
        self.interpreted = None

    def on(self, device: torch.device):
        if device.type == "cuda":
            return self.compiled
        if self.interpreted is None:
            from triton.runtime.interpreter import InterpretedFunction

            self.interpreted = triton.heuristics(self.heuristics)(InterpretedFunction(self.fn))
        return self.interpreted


def _kernel(**heuristics):
    return lambda fn: _Kernel(fn, heuristics)


def _given(arg):
    """Heuristic for a flag that is set when the optional input `arg` is given: absent inputs arrive as None
    and their code is compiled out."""
    return lambda args: args[arg] is not None


def _width_pow2(args):
    return triton.next_power_of_2(args["W"] - 1)


@dataclass(frozen=True)
class Conv1dConfig:
    """Launch shapes. block_t x block_d: the forward tile (powers of two) and warps its warps;
    bwd_block_t x bwd_block_d: the backward tile (powers of two) and bwd_warps its warps (8 x 128 over 4
    warps compiles to 158 registers for sm_90 without spills; 16 or 32 rows spill); state_block_d: channels
    per program of the small state kernels."""

    block_t: int = 32
    block_d: int = 128
    warps: int = 4
    bwd_block_t: int = 8
    bwd_block_d: int = 128
    bwd_warps: int = 4
    state_block_d: int = 128

    def __post_init__(self):
        for name in ("block_t", "block_d", "bwd_block_t", "bwd_block_d", "state_block_d"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")


def _empty(*shape, dtype, device):
    return torch.empty(*shape, dtype=dtype, device=device)


@_kernel(HAS_BIAS=_given("bias_ptr"), HAS_INIT=_given("init_ptr"), PACKED=_given("cu_ptr"))
def _conv1d_fwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, y_ptr,
                L, D, stride_xb, stride_xl, stride_wd, stride_wk, stride_ib, stride_iw, stride_yb, stride_yl,
                W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, SILU: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, PACKED: tl.constexpr):
    pid_b = tl.program_id(2).to(tl.int64)
    t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)  # (BT,) int64
    d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
    tmask = t < L
    dmask = d < D
    if PACKED:
        seq = tl.load(seq_idx_ptr + t, mask=tmask, other=0).to(tl.int64)  # (BT,)
        p = t - tl.load(cu_ptr + seq, mask=tmask, other=0).to(tl.int64)  # (BT,) position in its sequence
        init_row = seq[:, None] * stride_ib  # (BT, 1)
    else:
        p = t
        init_row = pid_b * stride_ib
    if HAS_BIAS:
        acc = tl.broadcast_to(tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :], (BT, BD))
    else:
        acc = tl.full((BT, BD), 0.0, tl.float32)
    x_rows = x_ptr + pid_b * stride_xb + d[None, :]  # (1, BD)
    for k in tl.static_range(W):
        lag = W - 1 - k
        wk = tl.load(w_ptr + d * stride_wd + k * stride_wk, mask=dmask, other=0.0).to(tl.float32)  # (BD,)
        inside = tmask & (p >= lag)  # (BT,) the tap reads x, not the initial state
        xv = tl.load(x_rows + (t - lag)[:, None] * stride_xl, mask=inside[:, None] & dmask[None, :],
                     other=0.0).to(tl.float32)  # (BT, BD)
        if HAS_INIT:
            if lag > 0:
                before = tmask & (p < lag)
                xv += tl.load(init_ptr + init_row + (p + (W - 1 - lag))[:, None] * stride_iw + d[None, :],
                              mask=before[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        acc += wk[None, :] * xv
    if SILU:
        acc = acc / (1.0 + tl.exp2(acc * -1.4426950408889634))
    tl.store(y_ptr + pid_b * stride_yb + t[:, None] * stride_yl + d[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=tmask[:, None] & dmask[None, :])


def _launch_fwd(x, w, bias, init, seq_idx, cu, y, activation, cfg):
    batch, seqlen, dim = x.shape
    if seqlen == 0:
        return
    grid = (triton.cdiv(seqlen, cfg.block_t), triton.cdiv(dim, cfg.block_d), batch)
    _conv1d_fwd_kernel.on(x.device)[grid](
        x_ptr=x, w_ptr=w, bias_ptr=bias, init_ptr=init, seq_idx_ptr=seq_idx, cu_ptr=cu, y_ptr=y,
        L=seqlen, D=dim, stride_xb=x.stride(0), stride_xl=x.stride(1), stride_wd=w.stride(0), stride_wk=w.stride(1),
        stride_ib=_stride(init, 0), stride_iw=_stride(init, 1), stride_yb=y.stride(0), stride_yl=y.stride(1),
        W=w.shape[1], BT=cfg.block_t, BD=cfg.block_d, SILU=activation == "silu", num_warps=cfg.warps)


@_kernel(HAS_INIT=_given("init_ptr"), PACKED=_given("cu_ptr"), WP=_width_pow2)
def _final_state_kernel(x_ptr, init_ptr, cu_ptr, fin_ptr,
                        L, D, stride_xb, stride_xl, stride_ib, stride_iw, stride_fb, stride_fw,
                        W: tl.constexpr, WP: tl.constexpr, BD: tl.constexpr,
                        HAS_INIT: tl.constexpr, PACKED: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
    dmask = d < D
    if PACKED:
        start = tl.load(cu_ptr + s).to(tl.int64)
        end = tl.load(cu_ptr + s + 1).to(tl.int64)
        x_seq = x_ptr
    else:
        start = s * 0
        end = s * 0 + L
        x_seq = x_ptr + s * stride_xb
    j = tl.arange(0, WP)  # (WP,) row of the final state
    jmask = j < W - 1
    q = (end - start) - (W - 1) + j  # (WP,) its position in the sequence; negative: an initial-state row
    inside = jmask & (q >= 0)
    v = tl.load(x_seq + (start + q)[:, None] * stride_xl + d[None, :], mask=inside[:, None] & dmask[None, :],
                other=0.0).to(tl.float32)  # (WP, BD)
    if HAS_INIT:
        before = jmask & (q < 0)
        v += tl.load(init_ptr + s * stride_ib + (q + W - 1)[:, None] * stride_iw + d[None, :],
                     mask=before[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    tl.store(fin_ptr + s * stride_fb + j[:, None] * stride_fw + d[None, :], v.to(fin_ptr.dtype.element_ty),
             mask=jmask[:, None] & dmask[None, :])


def _launch_final_state(x, init, cu, nseq, width, cfg):
    dim = x.shape[2]
    fin = _empty(nseq, width - 1, dim, dtype=x.dtype, device=x.device)
    if nseq == 0:
        return fin
    _final_state_kernel.on(x.device)[(nseq, triton.cdiv(dim, cfg.state_block_d))](
        x_ptr=x, init_ptr=init, cu_ptr=cu, fin_ptr=fin, L=x.shape[1], D=dim, stride_xb=x.stride(0),
        stride_xl=x.stride(1), stride_ib=_stride(init, 0), stride_iw=_stride(init, 1), stride_fb=fin.stride(0),
        stride_fw=fin.stride(1), W=width, BD=cfg.state_block_d, num_warps=4)
    return fin


@_kernel(HAS_BIAS=_given("bias_ptr"), HAS_INIT=_given("init_ptr"), PACKED=_given("cu_ptr"))
def _conv1d_bwd_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, seq_idx_ptr, cu_ptr, dy_ptr, dx_ptr, dw_ptr, db_ptr,
                L, D, nblocks, stride_xb, stride_xl, stride_wd, stride_wk, stride_ib, stride_iw,
                stride_dyb, stride_dyl, stride_dxb, stride_dxl,
                W: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, SILU: tl.constexpr,
                HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, PACKED: tl.constexpr):
    # dx_t = sum_k w_k g_{t+W-1-k} with g_r = dy_r * act'(pre_r). A tile cannot shift g across its rows, so each
    # program rebuilds pre, and g, at the W row offsets j = W-1-k it needs from shifted loads of x (the repeats
    # hit L1); dweight and dbias are per-program partial sums over its rows, reduced by the launcher.
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(2).to(tl.int64)
    t = pid_t.to(tl.int64) * BT + tl.arange(0, BT)  # (BT,) int64
    d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
    tmask = t < L
    dmask = d < D
    if PACKED:
        seq = tl.load(seq_idx_ptr + t, mask=tmask, other=0).to(tl.int64)  # (BT,)
        start = tl.load(cu_ptr + seq, mask=tmask, other=0).to(tl.int64)  # (BT,) the row's sequence bounds
        end = tl.load(cu_ptr + seq + 1, mask=tmask, other=0).to(tl.int64)
        init_row = seq[:, None] * stride_ib  # (BT, 1)
    else:
        start = t * 0
        end = t * 0 + L
        init_row = pid_b * stride_ib
    p = t - start  # (BT,) position in its sequence
    x_rows = x_ptr + pid_b * stride_xb + d[None, :]  # (1, BD)
    dy_rows = dy_ptr + pid_b * stride_dyb + d[None, :]  # (1, BD)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
    else:
        bias = tl.full((BD,), 0.0, tl.float32)
    dx = tl.full((BT, BD), 0.0, tl.float32)
    g0 = tl.full((BT, BD), 0.0, tl.float32)  # g at the tile's own rows, for dweight and dbias
    for j in tl.static_range(W):
        r = t + j  # (BT,) rows whose g reaches dx_t through tap W-1-j
        rmask = tmask & (r < end)
        g = tl.load(dy_rows + r[:, None] * stride_dyl, mask=rmask[:, None] & dmask[None, :],
                    other=0.0).to(tl.float32)  # (BT, BD)
        if SILU:
            pre = tl.broadcast_to(bias[None, :], (BT, BD))
            for m in tl.static_range(W):
                q = p + (j - (W - 1) + m)  # (BT,) position of the input tap m reads for row r
                inside = rmask & (q >= 0)
                xv = tl.load(x_rows + (r - (W - 1) + m)[:, None] * stride_xl,
                             mask=inside[:, None] & dmask[None, :], other=0.0).to(tl.float32)
                if HAS_INIT:
                    before = rmask & (q < 0)
                    xv += tl.load(init_ptr + init_row + (q + (W - 1))[:, None] * stride_iw + d[None, :],
                                  mask=before[:, None] & dmask[None, :],
                                  other=0.0).to(tl.float32)
                wm = tl.load(w_ptr + d * stride_wd + m * stride_wk, mask=dmask, other=0.0).to(tl.float32)
                pre += wm[None, :] * xv
            sig = 1.0 / (1.0 + tl.exp2(pre * -1.4426950408889634))
            g = g * sig * (1.0 + pre * (1.0 - sig))
        wk = tl.load(w_ptr + d * stride_wd + (W - 1 - j) * stride_wk, mask=dmask, other=0.0).to(tl.float32)
        dx += wk[None, :] * g
        if j == 0:
            g0 = g
    tl.store(dx_ptr + pid_b * stride_dxb + t[:, None] * stride_dxl + d[None, :], dx.to(dx_ptr.dtype.element_ty),
             mask=tmask[:, None] & dmask[None, :])
    part = dw_ptr + (pid_b * nblocks + pid_t) * W * D + d  # (BD,) this program's (W, D) partial sums
    for m in tl.static_range(W):
        q = p + (m - (W - 1))  # (BT,) position of the input tap m reads for row t
        inside = tmask & (q >= 0)
        xv = tl.load(x_rows + (t - (W - 1) + m)[:, None] * stride_xl,
                     mask=inside[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        if HAS_INIT:
            before = tmask & (q < 0)
            xv += tl.load(init_ptr + init_row + (q + (W - 1))[:, None] * stride_iw + d[None, :],
                          mask=before[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        tl.store(part + m * D, tl.reduce(g0 * xv, 0, _add), mask=dmask)
    if HAS_BIAS:
        tl.store(db_ptr + (pid_b * nblocks + pid_t) * D + d, tl.reduce(g0, 0, _add), mask=dmask)


def _launch_bwd(x, w, bias, init, seq_idx, cu, dy, dx, activation, cfg):
    """Writes dx; returns dweight (dim, width) and dbias (dim,) (None without bias), fp32."""
    batch, seqlen, dim = x.shape
    width = w.shape[1]
    nblocks = triton.cdiv(seqlen, cfg.bwd_block_t)
    dw_part = _empty(batch, nblocks, width, dim, dtype=torch.float32, device=x.device)
    db_part = None if bias is None else _empty(batch, nblocks, dim, dtype=torch.float32, device=x.device)
    if nblocks:
        grid = (nblocks, triton.cdiv(dim, cfg.bwd_block_d), batch)
        _conv1d_bwd_kernel.on(x.device)[grid](
            x_ptr=x, w_ptr=w, bias_ptr=bias, init_ptr=init, seq_idx_ptr=seq_idx, cu_ptr=cu, dy_ptr=dy, dx_ptr=dx,
            dw_ptr=dw_part, db_ptr=db_part, L=seqlen, D=dim, nblocks=nblocks, stride_xb=x.stride(0),
            stride_xl=x.stride(1), stride_wd=w.stride(0), stride_wk=w.stride(1), stride_ib=_stride(init, 0),
            stride_iw=_stride(init, 1), stride_dyb=dy.stride(0), stride_dyl=dy.stride(1), stride_dxb=dx.stride(0),
            stride_dxl=dx.stride(1), W=width, BT=cfg.bwd_block_t, BD=cfg.bwd_block_d, SILU=activation == "silu",
            num_warps=cfg.bwd_warps)
    dweight = dw_part.sum((0, 1)).t().contiguous()  # (D, W)
    dbias = None if bias is None else db_part.sum((0, 1))
    return dweight, dbias


@_kernel(HAS_BIAS=_given("bias_ptr"), PACKED=_given("cu_ptr"), WP=_width_pow2)
def _dinit_kernel(x_ptr, w_ptr, bias_ptr, init_ptr, cu_ptr, dy_ptr, dinit_ptr,
                  L, D, stride_xb, stride_xl, stride_wd, stride_wk, stride_ib, stride_iw, stride_dyb, stride_dyl,
                  W: tl.constexpr, WP: tl.constexpr, BD: tl.constexpr, SILU: tl.constexpr,
                  HAS_BIAS: tl.constexpr, PACKED: tl.constexpr):
    # initial-state row j feeds rows r <= j of the sequence through tap j - r:
    #   dinit[j] = sum_{r <= j, r < len} w[:, j - r] g_r,  g_r the pre-activation gradient of row r
    s = tl.program_id(0).to(tl.int64)
    d = tl.program_id(1) * BD + tl.arange(0, BD)  # (BD,)
    dmask = d < D
    if PACKED:
        start = tl.load(cu_ptr + s).to(tl.int64)
        end = tl.load(cu_ptr + s + 1).to(tl.int64)
        x_seq = x_ptr + d
        dy_seq = dy_ptr + d
    else:
        start = s * 0
        end = s * 0 + L
        x_seq = x_ptr + s * stride_xb + d
        dy_seq = dy_ptr + s * stride_dyb + d
    init_seq = init_ptr + s * stride_ib + d
    j = tl.arange(0, WP)  # (WP,)
    jmask = j < W - 1
    acc = tl.full((WP, BD), 0.0, tl.float32)
    for r in tl.static_range(W - 1):
        live = tl.where(start + r < end, dmask, False)
        if HAS_BIAS:
            pre = tl.load(bias_ptr + d, mask=dmask, other=0.0).to(tl.float32)
        else:
            pre = tl.full((BD,), 0.0, tl.float32)
        for k in tl.static_range(W):
            q = r - (W - 1) + k  # the tap's position in the sequence; negative: an initial-state row
            if q >= 0:
                xv = tl.load(x_seq + (start + q) * stride_xl, mask=live, other=0.0)
            else:
                xv = tl.load(init_seq + (q + W - 1) * stride_iw, mask=live, other=0.0)
            pre += tl.load(w_ptr + d * stride_wd + k * stride_wk, mask=dmask, other=0.0).to(tl.float32) * \
                xv.to(tl.float32)
        g = tl.load(dy_seq + (start + r) * stride_dyl, mask=live, other=0.0).to(tl.float32)
        if SILU:
            sig = 1.0 / (1.0 + tl.exp2(pre * -1.4426950408889634))
            g = g * sig * (1.0 + pre * (1.0 - sig))
        tap = (j >= r) & jmask
        wj = tl.load(w_ptr + d[None, :] * stride_wd + (j - r)[:, None] * stride_wk,
                     mask=tap[:, None] & dmask[None, :], other=0.0).to(tl.float32)  # (WP, BD)
        acc += wj * g[None, :]
    tl.store(dinit_ptr + s * (W - 1) * D + j[:, None] * D + d[None, :], acc, mask=jmask[:, None] & dmask[None, :])


def _launch_dinit(x, w, bias, init, cu, dy, activation, cfg):
    """(nseq, width-1, dim) fp32 gradient of the initial state."""
    dim = x.shape[2]
    nseq, width = init.shape[0], w.shape[1]
    dinit = _empty(nseq, width - 1, dim, dtype=torch.float32, device=x.device)
    if nseq == 0:
        return dinit
    _dinit_kernel.on(x.device)[(nseq, triton.cdiv(dim, cfg.state_block_d))](
        x_ptr=x, w_ptr=w, bias_ptr=bias, init_ptr=init, cu_ptr=cu, dy_ptr=dy, dinit_ptr=dinit, L=x.shape[1], D=dim,
        stride_xb=x.stride(0), stride_xl=x.stride(1), stride_wd=w.stride(0), stride_wk=w.stride(1),
        stride_ib=init.stride(0), stride_iw=init.stride(1), stride_dyb=dy.stride(0), stride_dyl=dy.stride(1),
        W=width, BD=cfg.state_block_d, SILU=activation == "silu", num_warps=4)
    return dinit


def _stride(t, i):
    return 0 if t is None else t.stride(i)


def sequence_index(cu_seqlens: torch.Tensor, seqlen: int) -> torch.Tensor:
    """(seqlen,) int32: which packed sequence each step belongs to."""
    cu = cu_seqlens.to(dtype=torch.int64)
    return torch.searchsorted(cu[1:], torch.arange(seqlen, device=cu.device), right=True).to(torch.int32)


def _prepare(x, weight, bias, activation, initial_state, cu_seqlens, seq_idx):
    """Checks the arguments and puts them in the layout the kernels read: last dims contiguous, cu_seqlens and
    seq_idx on x's device. Returns (w (dim, width), bias, initial_state, cu_seqlens, seq_idx, nseq)."""
    check_activation(activation)
    if x.dim() != 3:
        raise ValueError(f"x must be (batch, seqlen, dim), got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"the Triton conv1d takes float32, float16 or bfloat16 x, got {x.dtype}; "
                        "use causal_conv1d_ref for float64")
    if x.stride(2) != 1:
        raise ValueError("x's last dimension (channels) must have stride 1")
    batch, seqlen, dim = x.shape
    w = weight_2d(weight, dim)
    width = w.shape[1]
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        raise ValueError(f"the Triton conv1d supports widths {MIN_WIDTH} to {MAX_WIDTH}, got {width}")
    if bias is not None and tuple(bias.shape) != (dim,):
        raise ValueError(f"bias must be ({dim},), got {tuple(bias.shape)}")
    nseq = batch
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError("cu_seqlens needs batch size 1 (sequences packed along seqlen)")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1 or cu_seqlens.is_floating_point():
            raise ValueError("cu_seqlens must be a 1-D integer tensor of nseq+1 offsets")
        nseq = cu_seqlens.numel() - 1
        cu_seqlens = cu_seqlens.to(device=x.device)
        seq_idx = sequence_index(cu_seqlens, seqlen) if seq_idx is None else seq_idx.to(x.device, torch.int32)
    elif seq_idx is not None:
        raise ValueError("seq_idx needs cu_seqlens")
    if initial_state is not None:
        if tuple(initial_state.shape) != (nseq, width - 1, dim):
            raise ValueError(f"initial_state must be ({nseq}, {width - 1}, {dim}), got "
                             f"{tuple(initial_state.shape)}")
        if initial_state.stride(2) != 1:
            initial_state = initial_state.contiguous()
    return w, bias, initial_state, cu_seqlens, seq_idx, nseq


def causal_conv1d_fwd(x, weight, bias=None, activation="silu", initial_state=None, *, cu_seqlens=None, seq_idx=None,
                      return_final_state=False, out=None, config: Conv1dConfig | None = None):
    """Forward launch, no autograd. Same arguments as `causal_conv1d` (keyword after initial_state), plus:

    seq_idx: (seqlen,) int32 sequence of each step (`sequence_index(cu_seqlens, seqlen)`), to reuse across calls.
    out: (batch, seqlen, dim) tensor to write y into, in its dtype (last dim stride 1; may be a slice of a
    wider tensor).
    config: launch shapes (`Conv1dConfig`).
    Returns y (batch, seqlen, dim) in x's dtype, or (y, final_state (batch|nseq, width-1, dim) in x's dtype).
    """
    cfg = config or Conv1dConfig()
    w, bias, init, cu, seq_idx, nseq = _prepare(x, weight, bias, activation, initial_state, cu_seqlens, seq_idx)
    if out is None:
        out = _empty(*x.shape, dtype=x.dtype, device=x.device)
    elif out.shape != x.shape or out.stride(2) != 1:
        raise ValueError("out must have x's shape and stride 1 in its last dimension")
    _launch_fwd(x, w, bias, init, seq_idx, cu, out, activation, cfg)
    if not return_final_state:
        return out
    return out, _launch_final_state(x, init, cu, nseq, w.shape[1], cfg)


def causal_conv1d_bwd(x, weight, bias, dy, activation="silu", initial_state=None, *, cu_seqlens=None, seq_idx=None,
                      dx=None, config: Conv1dConfig | None = None):
    """Backward launch, no autograd: recomputes the pre-activation from x (nothing saved from the forward).

    x, weight, bias, activation, initial_state, cu_seqlens, seq_idx, config: as for `causal_conv1d_fwd`.
    dy: (batch, seqlen, dim) gradient of y, any float dtype.
    dx: (batch, seqlen, dim) tensor to write dx into, in its dtype (last dim stride 1; may be a slice of a
    wider tensor).
    Returns (dx (x's dtype unless given), dweight fp32 in weight's shape, dbias (dim,) fp32 or None,
    dinitial_state (batch|nseq, width-1, dim) fp32 or None). The final state has no gradient.
    """
    cfg = config or Conv1dConfig()
    w, bias, init, cu, seq_idx, nseq = _prepare(x, weight, bias, activation, initial_state, cu_seqlens, seq_idx)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    if dy.stride(2) != 1:
        dy = dy.contiguous()
    if dx is None:
        dx = _empty(*x.shape, dtype=x.dtype, device=x.device)
    elif dx.shape != x.shape or dx.stride(2) != 1:
        raise ValueError("dx must have x's shape and stride 1 in its last dimension")
    dweight, dbias = _launch_bwd(x, w, bias, init, seq_idx, cu, dy, dx, activation, cfg)
    dinit = None if init is None else _launch_dinit(x, w, bias, init, cu, dy, activation, cfg)
    return dx, dweight.reshape(weight.shape), dbias, dinit


class CausalConv1dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, initial_state, cu_seqlens, activation, return_final_state, config):
        seq_idx = None if cu_seqlens is None else sequence_index(cu_seqlens.to(x.device), x.shape[1])
        res = causal_conv1d_fwd(x, weight, bias, activation, initial_state, cu_seqlens=cu_seqlens, seq_idx=seq_idx,
                                return_final_state=return_final_state, config=config)
        ctx.save_for_backward(x, weight, bias, initial_state, cu_seqlens, seq_idx)
        ctx.activation, ctx.config = activation, config
        if return_final_state:
            ctx.mark_non_differentiable(res[1])
        return res

    @staticmethod
    def backward(ctx, dy, *_final_state_grad):
        x, weight, bias, initial_state, cu_seqlens, seq_idx = ctx.saved_tensors
        dx, dweight, dbias, dinit = causal_conv1d_bwd(x, weight, bias, dy, ctx.activation, initial_state,
                                                      cu_seqlens=cu_seqlens, seq_idx=seq_idx, config=ctx.config)
        return (dx, dweight.to(weight.dtype), None if dbias is None else dbias.to(bias.dtype),
                None if dinit is None else dinit.to(initial_state.dtype), None, None, None, None)


def causal_conv1d(x, weight, bias=None, activation="silu", initial_state=None, return_final_state=False,
                  cu_seqlens=None, *, config: Conv1dConfig | None = None):
    """Causal depthwise conv1d over time, channel-last, with gradients for x, weight, bias and initial_state.

    x: (batch, seqlen, dim), last dim stride 1; fp32, fp16 or bf16 (float64 goes to the reference)
    weight: (dim, width) or (dim, 1, width); bias: (dim,) or None; activation: "silu" or None
    initial_state: (batch, width-1, dim), the inputs before x[:, 0]; with cu_seqlens (nseq, width-1, dim)
    cu_seqlens: (nseq+1,) int, sequences packed along seqlen in batch 1; the conv never looks across a boundary.
    Its values are not checked on the GPU (that would synchronise): they must rise from 0 to seqlen.
    Returns y (batch, seqlen, dim) in x's dtype, or (y, final_state (batch|nseq, width-1, dim) in x's dtype):
    the last width-1 inputs of each sequence, for the next piece of a stream. final_state has no gradient.
    Runs the Triton kernels on CUDA (and on CPU under TRITON_INTERPRET=1) for widths 2 to 4; float64,
    other widths and plain CPU tensors run `causal_conv1d_ref`.
    """
    width = weight.shape[-1]
    use_triton = (x.is_cuda or interpreting()) and x.dtype != torch.float64 and MIN_WIDTH <= width <= MAX_WIDTH
    if not use_triton:
        return causal_conv1d_ref(x, weight, bias, activation, initial_state, return_final_state, cu_seqlens)
    return CausalConv1dFn.apply(x, weight, bias, initial_state, cu_seqlens, activation, bool(return_final_state),
                                config)
