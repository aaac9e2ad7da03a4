"""GPU checks of the compiled kernels at the launch shapes used in practice; skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from dnamamba_kernels import ScanConfig, selective_scan_ref, selective_scan_triton

from kernel_inputs import as64, assert_matches_reference, make_inputs, run_scan

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
# mamba_ssm's tolerances (tests/ops/test_selective_scan.py)
TOL = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.float16: dict(rtol=3e-3, atol=5e-3),
       torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}


# the defaults; and launch shapes where no warp-level PTX applies (two channels a thread in the forward passes
# and the recompute, 64 channels in two warps in the backward walk), so B and C rows are loaded whole by every
# lane and dB/dC summed per state, with 32-step checkpoints
GPU_CONFIGS = {"default": dict(),
               "plain_rows_sub32": dict(block_d=256, warps=4, seq_block_d=64, seq_warps=2, seq_programs_per_sm=4,
                                        sub=32)}


@pytest.fixture(params=list(GPU_CONFIGS))
def scan(request):
    """The Triton scan at the default launch shapes, and at shapes that take the plain paths."""
    cfg = ScanConfig(**GPU_CONFIGS[request.param])
    lanes = request.param == "default"
    assert cfg.seq_lanes(16, 64, 1) == lanes and cfg.block_lanes(16, 64, 1) == lanes

    def run(*args, **kw):
        return selective_scan_triton(*args, config=cfg, **kw)

    return run


@pytest.mark.parametrize("batch,seqlen,dim,ngroups,dtype", [(2, 2049, 96, 2, torch.float32),
                                                             (1, 2048, 200, 1, torch.bfloat16),
                                                             (2, 1100, 64, 1, torch.float16)])
def test_gpu_matches_reference(scan, batch, seqlen, dim, ngroups, dtype):
    tensors = make_inputs(batch, seqlen, dim, 16, ngroups, dtype=dtype, seed=seqlen, device="cuda")
    # the output gradient reaches the kernels in the output dtype: give the reference the same values
    gy = torch.randn(batch, seqlen, dim, device="cuda").to(dtype).float()
    gf = torch.randn(batch, dim, 16, device="cuda")
    y, f, g = run_scan(scan, tensors, grad_out=gy, grad_final=gf)
    y_r, f_r, g_r = run_scan(selective_scan_ref, as64(tensors), grad_out=gy.double(), grad_final=gf.double())
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), y_r, **tol)
    torch.testing.assert_close(f.double(), f_r, **tol)
    for k in g:
        torch.testing.assert_close(g[k].double(), g_r[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


def test_gpu_packed_matches_reference(scan):
    cu = torch.tensor([0, 700, 701, 2500, 3000], device="cuda", dtype=torch.int32)
    tensors = make_inputs(1, 3000, 64, 16, 1, seed=7, device="cuda")
    tensors[8] = torch.randn(4, 64, 16, device="cuda")
    gy = torch.randn(1, 3000, 64, device="cuda")
    gf = torch.randn(4, 64, 16, device="cuda")
    assert_matches_reference(scan, tensors, TOL[torch.float32], gy, gf, cu_seqlens=cu)


def test_int64_offsets_past_2_31_elements(scan):
    """B=1, L=2^21, D=1536: 3.2e9 elements per (batch, seqlen, dim) tensor. The decay is strong (every
    step multiplies the state by at most exp(-1)), so outputs and gradients inside a window depend only
    on that window: windows at the start, across element 2^31 and at the end are checked against the
    float64 reference run on the window alone, which needs no large offsets."""
    L, D, N = 2 ** 21, 1536, 16
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    u = torch.randn(1, L, D, device=dev, generator=g, dtype=torch.bfloat16)
    delta = (torch.rand(1, L, D, device=dev, generator=g) + 1.0).to(torch.bfloat16)  # softplus(>=1) > 1.3
    A = -(torch.rand(D, N, device=dev, generator=g) + 1.0)
    B = torch.randn(1, L, 1, N, device=dev, generator=g, dtype=torch.bfloat16)
    C = torch.randn(1, L, 1, N, device=dev, generator=g, dtype=torch.bfloat16)
    z = torch.randn(1, L, D, device=dev, generator=g, dtype=torch.bfloat16)
    Dv = torch.randn(D, device=dev, generator=g)
    leaves = [t.requires_grad_() for t in (u, delta, B, C, z)]
    y, final = scan(u, delta, A, B, C, D=Dv, z=z, delta_softplus=True, return_final_state=True)
    gy = torch.randn(1, L, D, device=dev, generator=g, dtype=torch.bfloat16)
    y.backward(gy)
    assert torch.isfinite(y).all()
    W, burn = 256, 64
    cross = (2 ** 31) // D  # the step whose first element sits at offset 2^31
    for s in (0, cross - W // 2, L - W):
        sl = slice(s, s + W)
        win = [t.detach()[:, sl].double().requires_grad_() for t in (u, delta, B, C, z)]
        y_r, f_r = selective_scan_ref(win[0], win[1], A.double(), win[2], win[3], D=Dv.double(), z=win[4],
                                      delta_softplus=True, return_final_state=True)
        y_r.backward(gy[:, sl].double())
        keep = slice(burn, W - burn)
        torch.testing.assert_close(y[:, sl][:, burn:].double(), y_r[:, burn:], rtol=3e-2, atol=5e-2)
        for leaf, w in zip(leaves, win):
            torch.testing.assert_close(leaf.grad[:, sl][:, keep].double(), w.grad[:, keep], rtol=3e-2, atol=5e-2)
        if s == L - W:
            torch.testing.assert_close(final.double(), f_r, rtol=6e-4, atol=2e-3)


@pytest.mark.parametrize("opts", [dict(), dict(use_D=False, use_z=False, use_bias=False, softplus=False, use_h0=False)],
                         ids=["all_options", "no_options"])
def test_gpu_lane_sums_match_reference(opts):
    """The PTX channel sums and row broadcasts (one group, 160 channels: five blocks of 32) against float64."""
    tensors = make_inputs(2, 1500, 160, 16, 1, seed=11, device="cuda")
    if not opts.get("softplus", True):
        tensors[1] = tensors[1].abs()  # a negative step size grows the state past fp32 over 1500 steps
    gy = torch.randn(2, 1500, 160, device="cuda")
    cfg = ScanConfig()
    assert cfg.seq_lanes(16, 160, 1) and cfg.block_lanes(16, 160, 1)
    assert_matches_reference(lambda *a, **k: selective_scan_triton(*a, config=cfg, **k), tensors, TOL[torch.float32],
                             gy, **opts)


@pytest.mark.parametrize("batch,seqlen,use_h0", [(256, 513, True), (128, 511, False), (200, 1000, True)])
def test_gpu_one_pass_forward_matches_reference(batch, seqlen, use_h0):
    """The forward without backward at scoring shapes (one chunk a sequence, final state from the output pass)
    against the float64 reference."""
    from dnamamba_kernels import selective_scan_fwd

    u, delta, A, B, C, D, z, bias, h0 = make_inputs(batch, seqlen, 512, 16, 1, dtype=torch.bfloat16, seed=seqlen,
                                                    device="cuda")
    h0 = h0 if use_h0 else None
    cfg = ScanConfig()
    assert cfg.resolve(batch, seqlen, 512, keep_states=False).chunk >= seqlen  # the one-pass launch
    y, final, _ = selective_scan_fwd(u, delta, A, B.float(), C.float(), D, z, bias, True, h0, config=cfg,
                                     keep_states=False)
    y_r, f_r = selective_scan_ref(*as64([u, delta, A, B, C]), D=D.double(), z=z.double(), delta_bias=bias.double(),
                                  delta_softplus=True, initial_state=None if h0 is None else h0.double(),
                                  return_final_state=True)
    torch.testing.assert_close(y.double(), y_r, **TOL[torch.bfloat16])
    torch.testing.assert_close(final.double(), f_r, **TOL[torch.float32])
