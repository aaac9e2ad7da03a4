"""The fused residual add + RMSNorm against its float64 reference, run on CPU under TRITON_INTERPRET=1.

Small launch shapes (4 rows a block, 3 backward programs) let row counts of a few dozen cross every boundary the
GPU shapes have: partial last blocks, programs that walk several blocks, and widths that are not a power of two.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from dnamamba_kernels.rms_norm import (NormLaunch, add_rms_norm, add_rms_norm_ref, rms_norm_bwd, rms_norm_bwd_ref,
                                       rms_norm_fwd, rms_norm_fwd_ref)

# the module itself: the package's `add_rms_norm` attribute is the function of the same name
impl = importlib.import_module("dnamamba_kernels.rms_norm.add_rms_norm")

SMALL = NormLaunch(block_rows=4, bwd_block_rows=4, bwd_programs=3)
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1.6e-2, atol=2e-2)}
WIDTHS = (7, 33, 256, 300)
INPUTS = ("both", "x_only", "residual_only")


def make(shape, d, x_dtype=torch.float32, res_dtype=torch.float32, which="both", seed=0):
    """x, residual (None where `which` leaves it out) and a weight near 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, d, generator=g).to(x_dtype) if which != "residual_only" else None
    res = torch.randn(*shape, d, generator=g).to(res_dtype) * 2 if which != "x_only" else None
    w = 1 + 0.3 * torch.randn(d, generator=g)
    return x, res, w


def run(fn, x, res, w, grads, dtype=None, **kw):
    """fn on fresh leaves (cast to `dtype` if given), backward of sum(out * gout) + sum(residual_out * gres)."""
    leaves = [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in (x, res, w)]
    out, res_out = fn(*leaves, **kw)
    gout, gres = grads
    loss = (out.double() * gout).sum() + (res_out.double() * gres).sum()
    loss.backward()
    return out, res_out, [None if t is None else t.grad for t in leaves]


def compare(x, res, w, tol, launch=SMALL, weight_tol=None, **kw):
    ref = x if x is not None else res
    expected_out = kw.get("out_dtype") or ref.dtype
    g = torch.Generator().manual_seed(99)
    # the output gradient reaches the kernels in the output dtype: give the reference the same values
    grads = [torch.randn(ref.shape, generator=g).to(expected_out).to(ref.device, torch.float64),
             torch.randn(ref.shape, generator=g, dtype=torch.float64).to(ref.device)]
    out, res_out, gr = run(add_rms_norm, x, res, w, grads, launch=launch, **kw)
    out_r, res_out_r, gr_r = run(add_rms_norm_ref, x, res, w, grads, dtype=torch.float64, **kw)
    assert out.dtype == expected_out and res_out.dtype == torch.float32
    torch.testing.assert_close(out.double(), out_r.double(), **tol)
    torch.testing.assert_close(res_out.double(), res_out_r, **TOL[torch.float32])
    for name, t, a, b in zip(("x", "residual", "weight"), (x, res, w), gr, gr_r):
        if t is None:
            continue
        assert a.dtype == t.dtype, name
        tol_grad = weight_tol if name == "weight" and weight_tol else TOL[t.dtype]
        torch.testing.assert_close(a.double(), b, **tol_grad, msg=lambda m, name=name: f"grad {name}: {m}")
    return out, res_out


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("which", INPUTS)
def test_matches_reference_forward_and_gradients(interpret, d, which):
    """fp32 Triton against the float64 reference: 39 rows as (3, 13), so the last block of 4 rows is partial and
    the 3 backward programs walk 4 blocks each (the last one fewer)."""
    x, res, w = make((3, 13), d, which=which, seed=d)
    compare(x, res, w, TOL[torch.float32])


@pytest.mark.parametrize("rows", (1, 15, 16, 17, 33))
def test_default_launch_shapes(interpret, rows):
    """The default launch (blocks of 16 rows forward and 8 backward at d = 256, 4 backward programs) around its
    block edges."""
    x, res, w = make((rows,), 256, seed=rows)
    compare(x, res, w, TOL[torch.float32], launch=None)


def test_bf16_x_with_fp32_residual(interpret):
    """The model's case: the mixer output in bf16 added to the fp32 residual stream. out is bf16 (x's dtype),
    residual_out fp32; x's gradient arrives in bf16 and the residual's in fp32."""
    x, res, w = make((2, 21), 33, x_dtype=torch.bfloat16, seed=3)
    compare(x, res, w, TOL[torch.bfloat16])


def test_out_dtype_and_bf16_residual(interpret):
    """out_dtype overrides x's dtype; a bf16 residual with an fp32 x gets its gradient in bf16 and x in fp32."""
    x, res, w = make((19,), 300, res_dtype=torch.bfloat16, seed=4)
    compare(x, res, w, TOL[torch.float32], out_dtype=torch.float32)
    compare(x, res, w, TOL[torch.bfloat16], out_dtype=torch.bfloat16)
    x, res, w = make((19,), 300, x_dtype=torch.bfloat16, which="x_only", seed=5)
    out, res_out = compare(x, res, w, TOL[torch.float32], out_dtype=torch.float32)
    torch.testing.assert_close(res_out, x.float(), rtol=0, atol=0)  # residual_out = x in fp32


def test_fp32_input_alone_is_returned_as_residual_out(interpret):
    """With one fp32 input, residual_out is that tensor (not a copy) and gradients still reach it."""
    x, res, w = make((9,), 33, which="residual_only")
    out, res_out = add_rms_norm(None, res, w, launch=SMALL)
    assert res_out.data_ptr() == res.data_ptr()
    compare(x, res, w, TOL[torch.float32])


def test_every_output_element_is_written(interpret, monkeypatch):
    """Every buffer the launchers allocate (out, residual_out, rstd, dresidual, its second copy, the dweight
    partial sums) starts as NaN: an element a kernel skips would fail the comparison."""
    allocated = []

    def nan_empty(*shape, dtype, device):
        allocated.append(shape)
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(impl, "_empty", nan_empty)
    x, res, w = make((37,), 33, x_dtype=torch.bfloat16, seed=7)
    compare(x, res, w, TOL[torch.bfloat16])
    # forward: out, residual_out, rstd; backward: dresidual, the bf16 copy for x, the (programs, d) partials
    assert (3, 33) in allocated and len(allocated) == 6
    for which in ("x_only", "residual_only"):
        x, res, w = make((37,), 33, which=which, seed=8)
        compare(x, res, w, TOL[torch.float32])


@pytest.mark.parametrize("with_rstd", (True, False), ids=("saved_rstd", "recomputed_rstd"))
@pytest.mark.parametrize("with_dres", (True, False), ids=("dresidual_out", "no_dresidual_out"))
def test_low_level_fwd_bwd_match_reference(interpret, with_rstd, with_dres):
    """rms_norm_fwd / rms_norm_bwd (Triton, fp32) against their float64 PyTorch forms, with rstd read back or
    recomputed from residual_out, with and without an incoming d(residual_out)."""
    x, res, w = make((5, 7), 300, x_dtype=torch.bfloat16, seed=11)
    eps = 1e-5
    out, res_out, rstd = rms_norm_fwd(x, res, w, eps, None, launch=SMALL)
    out_r, res_out_r, rstd_r = rms_norm_fwd_ref(x.double(), res.double(), w.double(), eps, torch.float64)
    assert out.dtype == torch.bfloat16 and res_out.dtype == rstd.dtype == torch.float32 and rstd.shape == (5, 7)
    torch.testing.assert_close(out.double(), out_r, **TOL[torch.bfloat16])
    torch.testing.assert_close(res_out.double(), res_out_r, **TOL[torch.float32])
    torch.testing.assert_close(rstd.double(), rstd_r, **TOL[torch.float32])
    g = torch.Generator().manual_seed(12)
    dout = torch.randn(5, 7, 300, generator=g).to(torch.bfloat16)
    dres = torch.randn(5, 7, 300, generator=g) if with_dres else None
    dr, dw = rms_norm_bwd(dout, res_out, w, rstd if with_rstd else None, eps, dres, launch=SMALL)
    dr_r, dw_r = rms_norm_bwd_ref(dout.double(), res_out_r, w.double(), rstd_r if with_rstd else None, eps,
                                  None if dres is None else dres.double())
    assert dr.dtype == dw.dtype == torch.float32 and dr.shape == (5, 7, 300) and dw.shape == (300,)
    torch.testing.assert_close(dr.double(), dr_r, **TOL[torch.float32])
    torch.testing.assert_close(dw.double(), dw_r, **TOL[torch.float32])


def test_hand_written_backward_equals_autograd_of_reference():
    """rms_norm_bwd_ref (the backward written out) against autograd through add_rms_norm_ref, in float64."""
    x, res, w = make((4, 9), 33, seed=13)
    x, res, w = (t.double().requires_grad_() for t in (x, res, w))
    out, res_out = add_rms_norm_ref(x, res, w)
    g = torch.Generator().manual_seed(14)
    dout, dres = (torch.randn(4, 9, 33, generator=g, dtype=torch.float64) for _ in range(2))
    torch.autograd.backward((out, res_out), (dout, dres))
    dr, dw = rms_norm_bwd_ref(dout, res_out.detach(), w.detach(), None, 1e-5, dres)
    torch.testing.assert_close(dr, x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dr, res.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dw, w.grad, rtol=1e-12, atol=1e-12)


def test_dispatch(monkeypatch):
    """CPU tensors run the PyTorch forms unless TRITON_INTERPRET=1; float64 always does; the interpreter runs the
    Triton kernels."""
    launched = []
    kernel = impl._kernel
    monkeypatch.setattr(impl, "_kernel", lambda name, device: launched.append(name) or kernel(name, device))
    x, res, w = make((3,), 8)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    add_rms_norm(x, res, w)
    rms_norm_bwd(x, rms_norm_fwd(x, res, w, 1e-5)[1], w, None, 1e-5)
    assert launched == []
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    add_rms_norm(x.double(), res, w)
    assert launched == []
    out, res_out = add_rms_norm(x.requires_grad_(), res, w)
    out.sum().backward()
    assert launched == ["_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel"]


def test_bad_input(interpret):
    x, res, w = make((3,), 8)
    with pytest.raises(ValueError, match="x or residual"):
        add_rms_norm(None, None, w)
    with pytest.raises(ValueError, match="differ in shape"):
        add_rms_norm(x, res[:2], w)
    with pytest.raises(ValueError, match="power of two"):
        add_rms_norm(x, res, w, launch=NormLaunch(block_rows=3))
    wide = torch.zeros(1, impl.MAX_WIDTH + 1)
    with pytest.raises(ValueError, match="do not fit"):
        add_rms_norm(wide, None, torch.ones(impl.MAX_WIDTH + 1))


@pytest.mark.parametrize("d", WIDTHS)
@pytest.mark.parametrize("which", INPUTS)
@pytest.mark.parametrize("launch", (None, SMALL), ids=("default_launch", "small_launch"))
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_matches_reference(d, which, launch):
    """The compiled kernels against float64, at 1001 rows (odd, past several blocks and backward programs). The
    weight gradient is a sum over all rows of products with the hardware's approximate rsqrt, so its fp32 error
    is larger than a single row's: 1.5e-5 absolute (4.8e-5 relative) was seen on the H200."""
    x, res, w = make((7, 143), d, which=which, seed=d)
    compare(*(None if t is None else t.cuda() for t in (x, res, w)), TOL[torch.float32], launch=launch,
            weight_tol=dict(rtol=1e-4, atol=1e-4))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_x_fp32_residual_at_a_million_rows():
    """N = 2^20 rows of d = 256 (the benchmark's shape): bf16 x with the fp32 residual stream, against the float64
    reference on the GPU, outputs and all gradients; residual_out and rstd also through the low-level functions."""
    x, res, w = make((1, 2 ** 20), 256, x_dtype=torch.bfloat16, seed=21)
    x, res, w = x.cuda(), res.cuda(), w.cuda()
    # dweight sums 2^20 rows whose fp32 terms each carry ~1e-7 relative error: ~1e-4 absolute in sums of ~1e3
    compare(x, res, w, TOL[torch.bfloat16], launch=None, weight_tol=dict(rtol=1e-4, atol=1e-2))
    out, res_out, rstd = rms_norm_fwd(x, res, w, 1e-5)
    assert torch.isfinite(out).all() and torch.isfinite(rstd).all()
    dr, dw = rms_norm_bwd(out, res_out, w, rstd, 1e-5)
    dr_r, dw_r = rms_norm_bwd_ref(out.double(), res_out.double(), w.double(), None, 1e-5)
    torch.testing.assert_close(dr.double(), dr_r, **TOL[torch.float32])
    torch.testing.assert_close(dw.double(), dw_r, rtol=1e-4, atol=1e-2)
