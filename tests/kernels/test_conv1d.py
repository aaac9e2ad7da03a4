"""The Triton causal conv1d against its float64 reference, run on CPU under TRITON_INTERPRET=1.

Small launch shapes (forward tiles of 64 steps, backward blocks of 64 steps, 16 channels a program) let short
inputs cross every boundary the GPU shapes have: lengths 1 and 3 (shorter than and equal to width-1), 127 and
129 (around two blocks), dims 7 and 33 (partial and several channel blocks). The GPU test at the end runs the
compiled kernels at the benchmark's shape.
"""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from dnamamba_kernels.conv1d import (Conv1dConfig, causal_conv1d, causal_conv1d_bwd, causal_conv1d_fwd,
                                     causal_conv1d_ref, sequence_index)

impl = importlib.import_module("dnamamba_kernels.conv1d.causal_conv1d")
# the GPU tests run with only torch and triton installed (bench/README.md), so this module imports nothing else
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

SMALL = Conv1dConfig(block_t=64, block_d=16, warps=1, bwd_block_t=64, bwd_block_d=16, state_block_d=16)
# float32 kernels against float64 on the same values; half-precision outputs are rounded once more
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
GRADS = ("x", "weight", "bias", "initial_state")


def make_inputs(batch, seqlen, dim, width, nseq=None, seed=0, dtype=torch.float32):
    """x, weight (dim, width), bias (dim,), initial_state (nseq|batch, width-1, dim); weights at nn.Conv1d's scale."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, seqlen, dim, generator=g).to(dtype)
    weight = torch.randn(dim, width, generator=g) / width ** 0.5
    bias = torch.randn(dim, generator=g) * 0.3
    h0 = torch.randn(nseq or batch, width - 1, dim, generator=g).to(dtype)
    return x, weight, bias, h0


def run(conv, x, weight, bias, h0, gy, activation="silu", cu_seqlens=None, dtype=None, **kw):
    """y, final state and the gradients (by name) of sum(y * gy), with fresh leaves (cast to `dtype` if given).
    The leaves keep their inputs' strides."""
    leaves = {k: (None if t is None else (t if dtype is None else t.to(dtype)).detach().requires_grad_(True))
              for k, t in zip(GRADS, (x, weight, bias, h0))}
    y, final = conv(leaves["x"], leaves["weight"], leaves["bias"], activation=activation,
                    initial_state=leaves["initial_state"], return_final_state=True, cu_seqlens=cu_seqlens, **kw)
    (y.to(gy.dtype) * gy).sum().backward()
    return y, final, {k: v.grad for k, v in leaves.items() if v is not None}


def small_triton(*args, **kw):
    return causal_conv1d(*args, config=SMALL, **kw)


def assert_matches_reference(x, weight, bias, h0, activation="silu", cu_seqlens=None, conv=small_triton, seed=1):
    """The Triton path on x's dtype (fp32 weights) against the float64 reference on the same values: output, final
    state and every gradient."""
    g = torch.Generator().manual_seed(seed)
    # the output gradient reaches the kernels in the output dtype: give the reference the same values
    gy = torch.randn(x.shape, generator=g).to(x.dtype).double()
    y, f, grads = run(conv, x, weight, bias, h0, gy, activation, cu_seqlens)
    y_r, f_r, grads_r = run(causal_conv1d_ref, x, weight, bias, h0, gy, activation, cu_seqlens, dtype=torch.float64)
    tol = TOL[x.dtype]
    assert y.dtype == x.dtype and f.dtype == x.dtype
    torch.testing.assert_close(y.double(), y_r, **tol)
    torch.testing.assert_close(f.double(), f_r, rtol=0, atol=0)  # a copy of inputs
    assert grads.keys() == grads_r.keys()
    for k, v in grads.items():
        assert v.dtype == {"x": x.dtype, "initial_state": x.dtype}.get(k, torch.float32), k
        torch.testing.assert_close(v.double(), grads_r[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


CASES = [
    # batch, seqlen, dim, width, activation, bias, initial state
    (2, 1, 7, 4, "silu", True, True),
    (1, 3, 7, 4, None, True, False),
    (2, 3, 33, 2, "silu", False, True),
    (2, 127, 33, 4, "silu", True, True),
    (1, 129, 33, 2, None, True, True),
    (2, 129, 7, 4, None, False, False),
    (1, 64, 5, 3, "silu", True, False),
    (1, 130, 16, 4, "silu", False, True),
]


@pytest.mark.parametrize("batch,seqlen,dim,width,activation,use_bias,use_h0", CASES)
def test_matches_reference_output_and_all_gradients(interpret, batch, seqlen, dim, width, activation, use_bias,
                                                    use_h0):
    x, w, b, h0 = make_inputs(batch, seqlen, dim, width, seed=seqlen + dim)
    assert_matches_reference(x, w, b if use_bias else None, h0 if use_h0 else None, activation)


def test_half_precision_and_default_launch_shapes(interpret):
    """bf16 inputs and gradients with fp32 parameters, at the default launch shapes: 513 steps cross the
    default backward block (512) by one step."""
    x, w, b, h0 = make_inputs(1, 513, 20, 4, seed=3, dtype=torch.bfloat16)
    assert_matches_reference(x, w, b, h0, conv=causal_conv1d)


@pytest.mark.parametrize("bwd_block_t", [1, 2, 8])
def test_backward_tiles_shorter_than_the_width(interpret, bwd_block_t):
    """Backward tiles of 1, 2 and 8 rows: every tile rebuilds g beyond its own rows (width-1 of them)."""
    cfg = Conv1dConfig(block_t=16, block_d=8, warps=1, bwd_block_t=bwd_block_t, bwd_block_d=8, state_block_d=8)
    x, w, b, h0 = make_inputs(2, 45, 9, 4, seed=bwd_block_t)
    assert_matches_reference(x, w, b, h0, conv=lambda *a, **k: causal_conv1d(*a, config=cfg, **k))


def test_strided_input_and_conv1d_weight_layout(interpret):
    """x as a column slice of a wider tensor with a padded batch stride (as the in_proj output is split), the
    weight in nn.Conv1d's (dim, 1, width) layout; the results equal those of contiguous inputs."""
    x, w, b, h0 = make_inputs(2, 70, 9, 4, seed=4)
    wide = torch.randn(3, 70, 25)
    wide[::2, :, 5:14] = x  # batch stride 2 * 70 * 25, step stride 25
    xs = wide[::2, :, 5:14]
    assert xs.stride() == (2 * 70 * 25, 25, 1)
    assert_matches_reference(xs, w.unsqueeze(1), b, h0)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).double()
    y, f, g = run(small_triton, xs, w.unsqueeze(1), b, h0, gy)
    y_c, f_c, g_c = run(small_triton, x, w, b, h0, gy)
    assert torch.equal(y, y_c) and torch.equal(f, f_c)
    assert g["weight"].shape == (9, 1, 4)
    for k in GRADS:
        torch.testing.assert_close(g[k].reshape(g_c[k].shape), g_c[k], rtol=0, atol=0)


def test_every_output_element_is_written(interpret, monkeypatch):
    """Outputs, final states and partial sums start as NaN: any element the kernels skip would surface."""
    monkeypatch.setattr(impl, "_empty", lambda *s, dtype, device: torch.full(s, float("nan"), dtype=dtype,
                                                                              device=device))
    x, w, b, h0 = make_inputs(2, 67, 17, 4, seed=5)
    assert_matches_reference(x, w, b, h0)
    cu = torch.tensor([0, 0, 2, 40, 40, 67])
    x, w, b, h0 = make_inputs(1, 67, 17, 4, nseq=5, seed=6)
    assert_matches_reference(x, w, b, h0, cu_seqlens=cu)
    assert_matches_reference(x, w, b, None, cu_seqlens=cu)


@pytest.mark.parametrize("conv", ["triton", "reference"])
@pytest.mark.parametrize("width", [2, 4])
def test_streaming_in_pieces_equals_one_call(interpret, conv, width):
    """A sequence fed in pieces, each starting from the last piece's final state, gives the outputs and final
    state of one call, also with pieces shorter than width-1 (where the state mixes old state and new inputs).
    The kernels compute each output row the same way wherever it falls, so theirs are bitwise equal; PyTorch's
    vectorised reference may round differently for different lengths."""
    fn = small_triton if conv == "triton" else causal_conv1d_ref
    exact = dict(rtol=0, atol=0) if conv == "triton" else {}
    x, w, b, h0 = make_inputs(2, 90, 11, width, seed=width)
    y_all, f_all = fn(x, w, b, initial_state=h0, return_final_state=True)
    ys, state = [], h0
    for lo, hi in [(0, 1), (1, 3), (3, 4), (4, 70), (70, 72), (72, 72), (72, 90)]:
        y, state = fn(x[:, lo:hi], w, b, initial_state=state, return_final_state=True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), y_all, **exact)
    torch.testing.assert_close(state, f_all, rtol=0, atol=0)


@pytest.mark.parametrize("width", [2, 4])
@pytest.mark.parametrize("use_h0", [False, True])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_packed_equals_separate_sequences(interpret, width, use_h0, activation):
    """Packed sequences give each sequence's outputs, final state and gradients as if it ran alone: an empty one,
    one of a single step, one that crosses the first backward block (64 steps) and ends one step after it, and
    a two-step one that starts inside that block's halo."""
    lengths = [5, 0, 1, 59, 2, 51]
    cu = torch.tensor([0] + lengths).cumsum(0)
    x, w, b, h0 = make_inputs(1, int(cu[-1]), 13, width, nseq=len(lengths), seed=7)
    h0 = h0 if use_h0 else None
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(8)).double()
    y, f, g = run(small_triton, x, w, b, h0, gy, activation, cu_seqlens=cu)
    ys, fs, sep = [], [], {k: [] for k in GRADS}
    for i, (lo, hi) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        y_i, f_i, g_i = run(causal_conv1d_ref, x[:, lo:hi], w, b, None if h0 is None else h0[i:i + 1],
                            gy[:, lo:hi], activation, dtype=torch.float64)
        ys.append(y_i)
        fs.append(f_i)
        for k, v in g_i.items():
            sep[k].append(v)
    torch.testing.assert_close(y.double(), torch.cat(ys, 1), **TOL[torch.float32])
    torch.testing.assert_close(f.double(), torch.cat(fs), rtol=0, atol=0)
    expected = {"x": torch.cat(sep["x"], 1), "weight": sum(sep["weight"]), "bias": sum(sep["bias"])}
    if h0 is not None:
        expected["initial_state"] = torch.cat(sep["initial_state"])
    assert g.keys() == expected.keys()
    for k, v in g.items():
        torch.testing.assert_close(v.double(), expected[k], **TOL[torch.float32], msg=lambda m, k=k: f"grad {k}: {m}")


def one_hot_dna(seq: str) -> torch.Tensor:
    """(len, 5) float: A, C, G, T, N channels."""
    idx = torch.tensor([b"ACGTN".index(c) for c in seq.upper().encode()])
    return torch.nn.functional.one_hot(idx, 5).float()


def test_real_dna_packed_across_an_assembly_gap(interpret):
    """One-hot bases of both chr20 excerpts around their N-gap edges, packed, against the reference."""
    SeqIO = pytest.importorskip("Bio.SeqIO")
    records = [str(r.seq) for r in SeqIO.parse(FIXTURES / "chr20_n_boundary.fa", "fasta")]
    windows = [records[0][1960:2050], records[1][1990:2020]]  # N run then bases; bases then N run
    assert set(windows[0][:40]) == {"N"} and "N" not in windows[0][40:] and set(windows[1][18:]) == {"N"}
    x = torch.cat([one_hot_dna(s) for s in windows])[None]  # (1, 120, 5)
    cu = torch.tensor([0, 90, 120])
    _, w, b, h0 = make_inputs(1, 1, 5, 4, nseq=2, seed=9)
    assert_matches_reference(x, w, b, h0, cu_seqlens=cu)


def test_low_level_launches_write_into_slices(interpret):
    """causal_conv1d_fwd / _bwd as a fused layer calls them: y and dx written into column slices of wider
    buffers, a precomputed sequence index; they agree with the autograd path."""
    lengths = [30, 2, 40]
    cu = torch.tensor([0] + lengths).cumsum(0)
    x, w, b, h0 = make_inputs(1, 72, 10, 4, nseq=3, seed=10)
    seq_idx = sequence_index(cu, 72)
    y_buf = torch.full((1, 72, 24), float("nan"))
    y, f = causal_conv1d_fwd(x, w, b, "silu", h0, cu_seqlens=cu, seq_idx=seq_idx, return_final_state=True,
                             out=y_buf[..., 4:14], config=SMALL)
    assert y.data_ptr() == y_buf[..., 4:14].data_ptr()
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(11))
    dx_buf = torch.full((1, 72, 20), float("nan"))
    dx, dw, db, dh0 = causal_conv1d_bwd(x, w, b, gy, "silu", h0, cu_seqlens=cu, seq_idx=seq_idx,
                                        dx=dx_buf[..., 10:], config=SMALL)
    assert dx_buf[..., :10].isnan().all() and y_buf[..., :4].isnan().all() and y_buf[..., 14:].isnan().all()
    assert dw.dtype == db.dtype == torch.float32 and dw.shape == w.shape
    y_a, f_a, g_a = run(small_triton, x, w, b, h0, gy.double(), cu_seqlens=cu)
    torch.testing.assert_close(y, y_a, rtol=0, atol=0)
    torch.testing.assert_close(f, f_a, rtol=0, atol=0)
    for got, k in zip((dx, dw, db, dh0), GRADS):
        torch.testing.assert_close(got, g_a[k], rtol=0, atol=0)


def test_plain_cpu_float64_and_other_widths_run_the_reference(monkeypatch):
    """Without TRITON_INTERPRET, CPU tensors take the reference; so do float64 and widths outside 2..4."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, w, b, h0 = make_inputs(1, 20, 6, 4, seed=12)
    y = causal_conv1d(x.double(), w.double(), b.double(), initial_state=h0.double())
    torch.testing.assert_close(y, causal_conv1d_ref(x.double(), w.double(), b.double(), initial_state=h0.double()))
    x5, w5, b5, h5 = make_inputs(1, 20, 6, 5, seed=13)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.testing.assert_close(causal_conv1d(x5, w5, b5, initial_state=h5),
                               causal_conv1d_ref(x5, w5, b5, initial_state=h5), rtol=0, atol=0)


def test_reference_matches_torch_conv1d():
    """The reference against nn.functional.conv1d with left padding (zero initial state, one sequence)."""
    x, w, b, _ = make_inputs(2, 50, 8, 4, seed=14, dtype=torch.float64)
    w, b = w.double(), b.double()
    expected = torch.nn.functional.conv1d(x.transpose(1, 2), w[:, None], b, padding=3, groups=8)[..., :50]
    torch.testing.assert_close(causal_conv1d_ref(x, w, b, activation=None), expected.transpose(1, 2))
    torch.testing.assert_close(causal_conv1d_ref(x, w, b), torch.nn.functional.silu(expected.transpose(1, 2)))


@pytest.mark.parametrize("bad,message", [
    (dict(activation="relu"), "activation"),
    (dict(initial_state=torch.zeros(2, 2, 6)), "initial_state"),
    (dict(cu_seqlens=torch.tensor([0, 10])), "batch size 1"),
    (dict(bias=torch.zeros(5)), "bias"),
])
def test_bad_arguments_raise(interpret, bad, message):
    x, w, b, _ = make_inputs(2, 10, 6, 4)
    kw = dict(dict(bias=b), **bad)
    with pytest.raises(ValueError, match=message):
        causal_conv1d(x, w, **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_large_matches_reference(dtype):
    """The compiled kernels at the benchmark's shape (batch 1, seqlen 2^20, dim 512, width 4), x a column slice
    of a wider tensor, with bias and initial state, against the reference in fp32 on the same values."""
    g = torch.Generator(device="cuda").manual_seed(0)
    L, D = 2 ** 20, 512
    xz = torch.randn(1, L, 2 * D, device="cuda", generator=g).to(dtype)
    x = xz[..., :D]
    w = torch.randn(D, 4, device="cuda", generator=g) / 2
    b = torch.randn(D, device="cuda", generator=g) * 0.3
    h0 = torch.randn(1, 3, D, device="cuda", generator=g).to(dtype)
    gy = torch.randn(1, L, D, device="cuda", generator=g).to(dtype).float()
    y, f, grads = run(causal_conv1d, x, w, b, h0, gy)
    y_r, f_r, grads_r = run(causal_conv1d_ref, x, w, b, h0, gy, dtype=torch.float32)
    # fp32 sums of 2^20 terms differ in order between the two; bf16 outputs are rounded once more
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.float(), y_r, **tol)
    torch.testing.assert_close(f.float(), f_r, rtol=0, atol=0)
    for k, v in grads.items():
        ref = grads_r[k]
        if k in ("weight", "bias"):  # sums over 2^20 steps: compare relative to their size
            torch.testing.assert_close(v.float(), ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item(),
                                       msg=lambda m, k=k: f"grad {k}: {m}")
        else:
            torch.testing.assert_close(v.float(), ref, **tol, msg=lambda m, k=k: f"grad {k}: {m}")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_packed_matches_reference():
    """The compiled packed path: many short sequences (some empty, some shorter than width-1) and long ones."""
    g = torch.Generator(device="cuda").manual_seed(1)
    lengths = torch.randint(0, 6, (300,), generator=torch.Generator().manual_seed(2)).tolist() + [5000, 1, 20000, 0]
    cu = torch.tensor([0] + lengths).cumsum(0).to("cuda", torch.int32)
    L, D = int(cu[-1]), 256
    x = torch.randn(1, L, D, device="cuda", generator=g)
    w = torch.randn(D, 4, device="cuda", generator=g) / 2
    b = torch.randn(D, device="cuda", generator=g) * 0.3
    h0 = torch.randn(len(lengths), 3, D, device="cuda", generator=g)
    gy = torch.randn(1, L, D, device="cuda", generator=g)
    y, f, grads = run(causal_conv1d, x, w, b, h0, gy, cu_seqlens=cu)
    y_r, f_r, grads_r = run(causal_conv1d_ref, x, w, b, h0, gy, cu_seqlens=cu, dtype=torch.float64)
    torch.testing.assert_close(y.double(), y_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f.double(), f_r, rtol=0, atol=0)
    for k, v in grads.items():
        torch.testing.assert_close(v.double(), grads_r[k], rtol=1e-4, atol=1e-4, msg=lambda m, k=k: f"grad {k}: {m}")
