"""The chunked linear + cross-entropy against the full-logits reference (F.cross_entropy, reduction="none").

Losses and both gradients, through the caller's use (a weighted sum of the per-row nll, some weights zero), in
float64 and fp32, with chunk boundaries inside the rows, and under bf16 autocast on CPU.
"""
from __future__ import annotations

import importlib

import pytest
import torch

from dnamamba_kernels.cross_entropy import default_chunk_size, linear_cross_entropy, linear_cross_entropy_ref

# the module itself: the package's `linear_cross_entropy` attribute is the function of the same name
impl = importlib.import_module("dnamamba_kernels.cross_entropy.linear_cross_entropy")

VOCAB = 256
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def make(shape, d, vocab=VOCAB, dtype=torch.float32, seed=0):
    """hidden (*shape, d), the tied weight (vocab, d) fp32 (or float64), targets (*shape) and per-row loss weights,
    a quarter of them zero (masked positions)."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, generator=g).to(dtype)
    weight = (torch.randn(vocab, d, generator=g) / d ** 0.5).to(torch.float64 if dtype == torch.float64 else
                                                                  torch.float32)
    targets = torch.randint(0, vocab, shape, generator=g)
    loss_weights = torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) > 0.25)
    return hidden, weight, targets, loss_weights


def run(fn, hidden, weight, targets, loss_weights, autocast=False, **kw):
    """fn on fresh leaves; the caller's loss, sum(nll * w) / sum(w), backward. Returns nll and both gradients."""
    h, w = (t.detach().clone().requires_grad_() for t in (hidden, weight))
    with torch.autocast(hidden.device.type, dtype=torch.bfloat16, enabled=autocast):
        nll = fn(h, w, targets, **kw)
    ((nll * loss_weights.to(nll)).sum() / loss_weights.sum()).backward()
    return nll, h.grad, w.grad


def assert_close_all(got, want, tol):
    for name, a, b in zip(("nll", "grad hidden", "grad weight"), got, want):
        torch.testing.assert_close(a.double(), b.double(), **tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("chunk", (1, 7, 10, 36, 37, 64, None))
def test_float64_matches_reference(chunk):
    """37 rows: chunks of 7 and 10 end mid-way (the last one short), 36 leaves one row, 37 and 64 take all."""
    hidden, weight, targets, lw = make((37,), 24, dtype=torch.float64, seed=1)
    got = run(linear_cross_entropy, hidden, weight, targets, lw, chunk_size=chunk)
    want = run(linear_cross_entropy_ref, hidden, weight, targets, lw)
    assert got[0].dtype == torch.float64 and got[1].dtype == got[2].dtype == torch.float64
    assert_close_all(got, want, TOL[torch.float64])


@pytest.mark.parametrize("chunk", (5, 16))
def test_fp32_matches_reference(chunk):
    """fp32 against the fp32 reference (same arithmetic up to summation order) and against float64."""
    hidden, weight, targets, lw = make((3, 17), 33, seed=2)
    got = run(linear_cross_entropy, hidden, weight, targets, lw, chunk_size=chunk)
    assert got[0].dtype == got[1].dtype == got[2].dtype == torch.float32 and got[0].shape == (3, 17)
    assert_close_all(got, run(linear_cross_entropy_ref, hidden, weight, targets, lw), TOL[torch.float32])
    want64 = run(linear_cross_entropy_ref, hidden.double(), weight.double(), targets, lw.double())
    assert_close_all(got, want64, TOL[torch.float32])


def test_float64_gradcheck():
    """Finite differences of the chunked function itself, rows spread over three chunks."""
    hidden, weight, targets, _ = make((11,), 5, vocab=7, dtype=torch.float64, seed=3)
    h, w = hidden.requires_grad_(), weight.requires_grad_()
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, chunk_size=4), (h, w))


@pytest.mark.parametrize("hidden_dtype", (torch.float32, torch.bfloat16))
def test_bf16_autocast_on_cpu(hidden_dtype):
    """Under bf16 autocast the matmul runs in bf16 (as F.linear): the nll matches the autocast reference, which
    differs from fp32 logits by bf16 rounding; nll stays fp32, d_hidden comes in hidden's dtype, d_weight fp32."""
    hidden, weight, targets, lw = make((45,), 32, seed=4)
    hidden = hidden.to(hidden_dtype)
    got = run(linear_cross_entropy, hidden, weight, targets, lw, autocast=True, chunk_size=16)
    want = run(linear_cross_entropy_ref, hidden, weight, targets, lw, autocast=True)
    assert got[0].dtype == torch.float32 and got[1].dtype == hidden_dtype and got[2].dtype == torch.float32
    # the chunked d_weight sums each chunk's bf16 product in fp32; the reference rounds the whole sum to bf16
    assert_close_all(got, want, dict(rtol=2e-2, atol=2e-3))
    torch.testing.assert_close(got[0], want[0], rtol=1e-3, atol=1e-3)
    fp32_nll = linear_cross_entropy_ref(hidden.float(), weight, targets)
    assert not torch.allclose(got[0], fp32_nll, rtol=1e-6, atol=1e-6)  # it did run in bf16


def test_bf16_hidden_without_autocast():
    """Outside autocast a bf16 hidden meets the fp32 weight in fp32 (the promoted dtype); its gradient is bf16."""
    hidden, weight, targets, lw = make((20,), 16, seed=5)
    hidden = hidden.to(torch.bfloat16)
    got = run(linear_cross_entropy, hidden, weight, targets, lw, chunk_size=6)
    want = run(linear_cross_entropy_ref, hidden, weight, targets, lw)
    assert got[1].dtype == torch.bfloat16
    assert_close_all(got, want, dict(rtol=1e-5, atol=1e-5))


def test_logits_never_exceed_one_chunk(monkeypatch):
    """Every logits block formed, in forward and backward, has at most chunk_size rows, and together they cover
    the rows once per pass."""
    shapes = []
    logits = impl._chunk_logits
    monkeypatch.setattr(impl, "_chunk_logits", lambda h, w, acc: shapes.append(tuple(h.shape)) or logits(h, w, acc))
    hidden, weight, targets, lw = make((50,), 8, seed=6)
    run(linear_cross_entropy, hidden, weight, targets, lw, chunk_size=16)
    assert shapes == [(16, 8), (16, 8), (16, 8), (2, 8)] * 2


def test_default_chunk_size():
    assert default_chunk_size(VOCAB) * VOCAB * 4 == impl.CHUNK_BYTES
    assert default_chunk_size(10 ** 12) == 1


def test_bad_input():
    hidden, weight, targets, _ = make((4,), 8)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(hidden, weight, targets, chunk_size=0)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(hidden, weight, targets[:3])
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(hidden, weight[:, :5], targets)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk", (None, 2 ** 15))
def test_gpu_peak_memory_is_bounded(chunk):
    """N = 2^20 rows, d = 256, V = 256, bf16 hidden under bf16 autocast (the model's loss). Full fp32 logits would
    take 1 GiB; forward and backward together stay within d_hidden, a few (N,) vectors and a few chunks of logits.
    Loss and gradients match the reference (which does materialise the logits)."""
    n, d = 2 ** 20, 256
    hidden, weight, targets, lw = (t.cuda() for t in make((n,), d, seed=7))
    hidden = hidden.to(torch.bfloat16).requires_grad_()
    weight.requires_grad_()
    rows = chunk or default_chunk_size(VOCAB)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        nll = linear_cross_entropy(hidden, weight, targets, chunk_size=chunk)
    ((nll * lw).sum() / lw.sum()).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # d_hidden (bf16), nll, lse and their gradients (fp32), d_weight; logits: fp32 and bf16 of one chunk, held twice
    # while one is converted to the other
    bound = n * d * 2 + 8 * n * 4 + 2 * VOCAB * d * 4 + 3 * rows * VOCAB * (4 + 2)
    assert extra <= bound, f"extra peak {extra / 2 ** 20:.0f} MiB > bound {bound / 2 ** 20:.0f} MiB"
    want = run(linear_cross_entropy_ref, hidden.detach(), weight.detach(), targets, lw, autocast=True)
    # bf16 logits from two different matmul shapes may round a dot product to neighbouring bf16 values
    diff = (nll.detach() - want[0]).abs()
    assert diff.mean() < 1e-3 and diff.max() < 0.1, (diff.mean().item(), diff.max().item())
    for name, got, ref in (("hidden", hidden.grad, want[1]), ("weight", weight.grad, want[2])):
        rel = ((got.double() - ref.double()).norm() / ref.double().norm()).item()
        assert rel < 1e-2, f"grad {name}: relative error {rel:.2e}"
