"""Fused residual add + RMSNorm in Triton, forward and backward.

File order follows mamba_ssm: kernels, then launchers, then the autograd.Function, then the public functions.
The math (`naive.py`):

    residual_out = residual + x  (fp32);  out = residual_out * rstd * weight,  rstd = rsqrt(mean(residual_out^2) + eps)

Inputs of shape (..., d) are taken as N = prod(...) rows of width d; a whole row sits in one program's registers
(d up to MAX_WIDTH).
- Forward, `_rms_norm_fwd_kernel`: one program per block of `block_rows` rows. It reads x and residual once, adds them in
  fp32, writes residual_out, rstd and out (in out's dtype). Where residual_out would only be a copy of an fp32
  input (x or residual alone), it is not written: that input is returned.
- Backward, `_rms_norm_bwd_kernel`: `bwd_programs` programs, each owning a contiguous range of rows walked in blocks of
  `bwd_block_rows`. Per row dr = rstd * (g - xhat * mean(g * xhat)) with xhat = r * rstd, g = dout * weight, plus
  d(residual_out) if given; written once or twice (fp32 for the caller's residual, and a copy in x's dtype when
  it differs, so no separate cast pass). dweight is one partial sum per program, added up by one torch sum at the
  end: no atomics, so the result does not depend on scheduling. rstd can be recomputed from residual_out instead
  of read, for callers that keep only residual_out.
All row offsets are int64.

CUDA tensors run the compiled kernels; CPU tensors run them through Triton's interpreter when TRITON_INTERPRET=1
is set at the call; anything else (CPU without it, float64) runs the PyTorch forms in `naive.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction

from ..interpreter import interpreting
from .naive import add_rms_norm_ref, norm_dtype, rms_norm_bwd_ref, rms_norm_fwd_ref

# A block of rows holds about this many elements: 16 rows of 256 at the benchmark's d_model in the forward. The
# backward keeps more values a row alive (its dweight accumulator among them): at 16 x 256 it compiles to 237
# registers a thread for sm_90, at 8 x 256 to 121, so its blocks are half the size.
BLOCK_ELEMENTS = 4096
BWD_BLOCK_ELEMENTS = 2048
# Wider rows spill registers in the backward at 16 warps (seen compiling for sm_90 with triton 3.9)
MAX_WIDTH = 8192
BWD_PROGRAMS_PER_SM = 4
# Triton's own sum combine: the interpreter recognises it and sums with numpy, and compiled kernels take it as
# any combine function. tl.sum itself is a jit function bound at triton's import to one mode, so it is not used.
_add = tl.standard._sum_combine


def _rms_norm_fwd_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr, rstd_ptr, n_rows, d, eps,
                HAS_X: tl.constexpr, HAS_RES: tl.constexpr, STORE_RES: tl.constexpr, ROWS: tl.constexpr,
                BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)  # (ROWS,) int64
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < n_rows
    cmask = cols < d
    mask = rmask[:, None] & cmask[None, :]
    offs = rows[:, None] * d + cols[None, :]  # (ROWS, BLOCK_D) int64
    if HAS_X:
        r = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RES:
            r += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        r = tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if STORE_RES:
        tl.store(res_out_ptr + offs, r, mask=mask)
    rstd = 1.0 / tl.sqrt(tl.reduce(r * r, 1, _add) / d + eps)  # (ROWS,)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, r * rstd[:, None] * w[None, :], mask=mask)


def _rms_norm_bwd_kernel(dout_ptr, r_ptr, w_ptr, rstd_ptr, dres_out_ptr, dr_ptr, dr2_ptr, dw_ptr, n_rows, d, eps,
                rows_per_program, HAS_RSTD: tl.constexpr, HAS_DRES: tl.constexpr, STORE_2: tl.constexpr,
                ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < d
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    dw = tl.full((ROWS, BLOCK_D), 0.0, tl.float32)
    first = pid * rows_per_program
    for start in range(0, rows_per_program, ROWS):
        rows = first + start + tl.arange(0, ROWS)  # (ROWS,) int64
        rmask = rows < n_rows
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None] * d + cols[None, :]  # (ROWS, BLOCK_D) int64
        r = tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_RSTD:
            rstd = tl.load(rstd_ptr + rows, mask=rmask, other=0.0)
        else:
            rstd = 1.0 / tl.sqrt(tl.reduce(r * r, 1, _add) / d + eps)
        xhat = r * rstd[:, None]
        dy = tl.load(dout_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = dy * w[None, :]
        c = tl.reduce(g * xhat, 1, _add) / d  # (ROWS,)
        dr = (g - xhat * c[:, None]) * rstd[:, None]
        if HAS_DRES:
            dr += tl.load(dres_out_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(dr_ptr + offs, dr, mask=mask)
        if STORE_2:
            tl.store(dr2_ptr + offs, dr, mask=mask)
        dw += dy * xhat  # rows past the end load zeros and add nothing
    tl.store(dw_ptr + pid * d + cols, tl.reduce(dw, 0, _add), mask=cmask)


_RAW = {f.__name__: f for f in (_rms_norm_fwd_kernel, _rms_norm_bwd_kernel)}
_COMPILED = {name: JITFunction(f) for name, f in _RAW.items()}
_INTERPRETED: dict = {}



def _kernel(name: str, device: torch.device):
    """The compiled kernel for CUDA tensors, the interpreted one for CPU tensors (decided per call)."""
    if device.type == "cuda":
        return _COMPILED[name]
    if name not in _INTERPRETED:
        from triton.runtime.interpreter import InterpretedFunction

        _INTERPRETED[name] = InterpretedFunction(_RAW[name])
    return _INTERPRETED[name]


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """The Triton path takes CUDA tensors, or CPU tensors under TRITON_INTERPRET=1, and computes in fp32."""
    first = next(t for t in tensors if t is not None)
    return (first.is_cuda or interpreting()) and norm_dtype(*tensors) != torch.float64


@dataclass(frozen=True)
class NormLaunch:
    """Launch shapes. block_rows / bwd_block_rows: rows a forward / backward program handles at once, powers of
    two (None: about BLOCK_ELEMENTS / BWD_BLOCK_ELEMENTS elements a block); warps: per program (None: 4 up to 1024
    columns, 8 up to 4096, then 16); bwd_programs: backward programs (None: BWD_PROGRAMS_PER_SM per SM on CUDA, 4
    when interpreting)."""

    block_rows: int | None = None
    bwd_block_rows: int | None = None
    warps: int | None = None
    bwd_programs: int | None = None

    def resolve(self, d: int, device: torch.device, backward: bool = False) -> tuple[int, int, int, int]:
        """(BLOCK_D, rows a block, warps, backward programs) for rows of width d on `device`."""
        if d > MAX_WIDTH:
            raise ValueError(f"rows of width {d} do not fit one program (at most {MAX_WIDTH}); use add_rms_norm_ref")
        block_d = triton.next_power_of_2(d)
        if backward:
            rows = self.bwd_block_rows or max(1, BWD_BLOCK_ELEMENTS // block_d)
        else:
            rows = self.block_rows or max(1, BLOCK_ELEMENTS // block_d)
        if rows & (rows - 1):
            raise ValueError(f"block rows must be a power of two, got {rows}")
        warps = self.warps or (4 if block_d <= 1024 else 8 if block_d <= 4096 else 16)
        programs = self.bwd_programs
        if programs is None:
            programs = (torch.cuda.get_device_properties(device).multi_processor_count * BWD_PROGRAMS_PER_SM
                        if device.type == "cuda" else 4)
        return block_d, rows, warps, programs


def _empty(*shape, dtype, device):
    return torch.empty(*shape, dtype=dtype, device=device)


def _rows(t: torch.Tensor | None, d: int) -> torch.Tensor | None:
    """(..., d) as contiguous (N, d) rows."""
    return None if t is None else t.reshape(-1, d).contiguous()


def _fwd(x, residual, weight, eps, out_dtype, launch):
    """x, residual: (N, d) contiguous or None; weight: (d,). Returns out (N, d), residual_out (N, d) fp32, rstd (N,)."""
    ref = x if x is not None else residual
    n, d = ref.shape
    block_d, rows, warps, _ = launch.resolve(d, ref.device)
    alone = residual if x is None else (x if residual is None else None)
    store_res = alone is None or alone.dtype != torch.float32
    res_out = _empty(n, d, dtype=torch.float32, device=ref.device) if store_res else alone
    out = _empty(n, d, dtype=out_dtype, device=ref.device)
    rstd = _empty(n, dtype=torch.float32, device=ref.device)
    if n:
        _kernel("_rms_norm_fwd_kernel", ref.device)[(triton.cdiv(n, rows),)](
            ref if x is None else x, ref if residual is None else residual, weight.contiguous(), out, res_out, rstd,
            n, d, eps, HAS_X=x is not None, HAS_RES=residual is not None, STORE_RES=store_res, ROWS=rows,
            BLOCK_D=block_d, num_warps=warps)
    return out, res_out, rstd


def _bwd(dout, res_out, weight, rstd, eps, dres_out, dtypes, launch):
    """dout, res_out, dres_out: (N, d) contiguous; rstd (N,) or None (recomputed). Returns dr in each of `dtypes`
    (one or two dtypes; None in the second place when only one is asked) and dweight (d,) fp32."""
    n, d = res_out.shape
    block_d, rows, warps, programs = launch.resolve(d, res_out.device, backward=True)
    dev = res_out.device
    dr = _empty(n, d, dtype=dtypes[0], device=dev)
    dr2 = _empty(n, d, dtype=dtypes[1], device=dev) if len(dtypes) > 1 else None
    if not n:
        return dr, dr2, torch.zeros(d, dtype=torch.float32, device=dev)
    programs = max(1, min(programs, triton.cdiv(n, rows)))
    per_program = triton.cdiv(triton.cdiv(n, programs), rows) * rows
    programs = triton.cdiv(n, per_program)
    partial = _empty(programs, d, dtype=torch.float32, device=dev)
    _kernel("_rms_norm_bwd_kernel", dev)[(programs,)](
        dout, res_out, weight.contiguous(), res_out if rstd is None else rstd,
        res_out if dres_out is None else dres_out, dr, dr if dr2 is None else dr2, partial, n, d, eps, per_program,
        HAS_RSTD=rstd is not None, HAS_DRES=dres_out is not None, STORE_2=dr2 is not None, ROWS=rows,
        BLOCK_D=block_d, num_warps=warps)
    return dr, dr2, partial.sum(0)


def rms_norm_fwd(x, residual, weight, eps, out_dtype=None, *, launch: NormLaunch | None = None):
    """The forward without autograd, for callers that keep their own saved tensors (the fused mixer).

    x, residual: (..., d) or None (not both); weight: (d,). Returns out (..., d) in out_dtype (default: x's dtype,
    or residual's if x is None), residual_out (..., d) fp32 and rstd (...) fp32; float64 inputs give float64.
    """
    if not use_triton(x, residual, weight):
        return rms_norm_fwd_ref(x, residual, weight, eps, out_dtype)
    if x is None and residual is None:
        raise ValueError("rms_norm_fwd needs x or residual (both are None)")
    if x is not None and residual is not None and x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape")
    ref = x if x is not None else residual
    shape, d = ref.shape, ref.shape[-1]
    out_dtype = out_dtype if out_dtype is not None else ref.dtype
    out, res_out, rstd = _fwd(_rows(x, d), _rows(residual, d), weight, eps, out_dtype, launch or NormLaunch())
    return out.view(shape), res_out.view(shape), rstd.view(shape[:-1])


def rms_norm_bwd(dout, residual_out, weight, rstd, eps, dresidual_out=None, *, launch: NormLaunch | None = None):
    """Gradients of `rms_norm_fwd` without autograd: dresidual (..., d) fp32, the gradient w.r.t. residual_out's
    inputs (the norm's backward of dout, plus dresidual_out if given), and dweight (d,) fp32.

    dout: (..., d) any float dtype; residual_out: (..., d); rstd: (...) from the forward, or None to recompute it
    from residual_out and eps. float64 inputs give float64.
    """
    if not use_triton(dout, residual_out, weight, rstd, dresidual_out):
        return rms_norm_bwd_ref(dout, residual_out, weight, rstd, eps, dresidual_out)
    shape, d = residual_out.shape, residual_out.shape[-1]
    dr, _, dweight = _bwd(_rows(dout, d), _rows(residual_out, d), weight,
                          None if rstd is None else rstd.reshape(-1).contiguous(), eps, _rows(dresidual_out, d),
                          (torch.float32,), launch or NormLaunch())
    return dr.view(shape), dweight


class AddRMSNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, residual, weight, eps, out_dtype, launch):
        ref = x if x is not None else residual
        shape, d = ref.shape, ref.shape[-1]
        out, res_out, rstd = _fwd(_rows(x, d), _rows(residual, d), weight, eps, out_dtype, launch)
        ctx.save_for_backward(res_out, weight, rstd)
        ctx.eps, ctx.launch, ctx.shape = eps, launch, shape
        ctx.x_dtype = None if x is None else x.dtype
        ctx.res_dtype = None if residual is None else residual.dtype
        return out.view(shape), res_out.view(shape)

    @staticmethod
    def backward(ctx, dout, dres_out):
        res_out, weight, rstd = ctx.saved_tensors
        d = res_out.shape[-1]
        if dout is None:
            dout = torch.zeros_like(res_out)
        # one gradient in the residual's dtype (x's when x is alone), and a second copy only where x's dtype differs
        first = ctx.res_dtype or ctx.x_dtype
        dtypes = (first,) if ctx.x_dtype in (None, first) else (first, ctx.x_dtype)
        dr, dr2, dweight = _bwd(_rows(dout, d), res_out, weight, rstd, ctx.eps, _rows(dres_out, d), dtypes,
                                ctx.launch)
        dr = dr.view(ctx.shape)
        dx = None if ctx.x_dtype is None else (dr if dr2 is None else dr2.view(ctx.shape))
        dres = dr if ctx.res_dtype is not None else None
        return dx, dres, dweight.to(weight.dtype), None, None, None


def add_rms_norm(x, residual, weight, eps=1e-5, out_dtype=None, *, launch: NormLaunch | None = None):
    """Residual add then RMSNorm, fused. Same contract as `add_rms_norm_ref`.

    x: (..., d) any float dtype, or None (then residual_out = residual); residual: (..., d) or None (then
    residual_out = x in fp32); weight: (d,). Returns out (..., d) in out_dtype (default: x's dtype, or residual's if
    x is None) and residual_out (..., d) fp32. Gradients reach x and residual (each in its own dtype) and weight.
    """
    if not use_triton(x, residual, weight):
        return add_rms_norm_ref(x, residual, weight, eps, out_dtype)
    if x is None and residual is None:
        raise ValueError("add_rms_norm needs x or residual (both are None)")
    if x is not None and residual is not None and x.shape != residual.shape:
        raise ValueError(f"x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape")
    ref = x if x is not None else residual
    return AddRMSNormFn.apply(x, residual, weight, eps, out_dtype if out_dtype is not None else ref.dtype,
                              launch or NormLaunch())
