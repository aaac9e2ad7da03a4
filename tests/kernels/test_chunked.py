"""The chunked PyTorch scan (the CPU path) against the float64 reference: outputs, final state, all
gradients, split-with-state and packed sequences."""
from __future__ import annotations

import pytest
import torch

from dnamamba_kernels import selective_scan_chunked, selective_scan_ref

from kernel_inputs import as64, make_inputs, run_scan

OPTS = ("use_D", "use_z", "use_bias", "softplus", "use_h0")


def chunked8(*args, **kw):
    return selective_scan_chunked(*args, chunk_size=8, **kw)


@pytest.mark.parametrize("seqlen,dim,ngroups,off", [(1, 5, 1, ()), (7, 6, 2, ("use_z", "use_h0")),
                                                      (8, 5, 1, ("softplus",)), (9, 6, 3, ("use_D", "use_bias")),
                                                      (33, 4, 2, ())])
def test_chunked_matches_reference_in_float64(seqlen, dim, ngroups, off):
    tensors = as64(make_inputs(2, seqlen, dim, 3, ngroups, seed=seqlen))
    opts = {k: k not in off for k in OPTS}
    gy = torch.randn(2, seqlen, dim, dtype=torch.float64)
    gf = torch.randn(2, dim, 3, dtype=torch.float64)
    y, f, g = run_scan(chunked8, tensors, grad_out=gy, grad_final=gf, **opts)
    y_r, f_r, g_r = run_scan(selective_scan_ref, tensors, grad_out=gy, grad_final=gf, **opts)
    torch.testing.assert_close(y, y_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f, f_r, rtol=1e-10, atol=1e-10)
    assert g.keys() == g_r.keys()
    for k in g:
        torch.testing.assert_close(g[k], g_r[k], rtol=1e-9, atol=1e-9, msg=lambda m, k=k: f"grad {k}: {m}")


def test_chunked_bf16_within_mamba_tolerance():
    tensors = make_inputs(1, 20, 6, 4, 1, dtype=torch.bfloat16, seed=3)
    gy = torch.randn(1, 20, 6)
    y, f, g = run_scan(chunked8, tensors, grad_out=gy)
    y_r, f_r, g_r = run_scan(selective_scan_ref, as64(tensors), grad_out=gy.double())
    torch.testing.assert_close(y.double(), y_r, rtol=3e-2, atol=5e-2)
    for k in g:
        torch.testing.assert_close(g[k].double(), g_r[k], rtol=3e-2, atol=5e-2)


def test_chunked_split_with_state_and_packed():
    tensors = as64(make_inputs(1, 30, 4, 3, 1, seed=9))
    u, delta, A, B, C, D, z, bias, h0 = tensors
    kw = dict(D=D, z=None, delta_bias=bias, delta_softplus=True, return_final_state=True)
    y, f = chunked8(u, delta, A, B, C, initial_state=h0, **kw)
    y1, f1 = chunked8(u[:, :13], delta[:, :13], A, B[:, :13], C[:, :13], initial_state=h0, **kw)
    y2, f2 = chunked8(u[:, 13:], delta[:, 13:], A, B[:, 13:], C[:, 13:], initial_state=f1, **kw)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(f2, f)
    cu = torch.tensor([0, 13, 30])
    h0s = torch.randn(2, 4, 3, dtype=torch.float64)
    yp, fp = chunked8(u, delta, A, B, C, initial_state=h0s, cu_seqlens=cu, **kw)
    yr, fr = selective_scan_ref(u, delta, A, B, C, initial_state=h0s, cu_seqlens=cu, **kw)
    torch.testing.assert_close(yp, yr)
    torch.testing.assert_close(fp, fr)
