"""Inputs and a run-and-backward helper shared by the kernel tests."""
from __future__ import annotations

import torch

from dnamamba_kernels import selective_scan_ref


def make_inputs(batch, seqlen, dim, dstate, ngroups=1, dtype=torch.float32, seed=0, delta_scale=0.5,
                device="cpu"):
    """Fresh random inputs in the contract's layout: u, delta, A, B, C, D, z, delta_bias, initial_state."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    u = rand(batch, seqlen, dim).to(dtype)
    delta = rand(batch, seqlen, dim, scale=delta_scale).to(dtype)
    A = -(torch.rand(dim, dstate, generator=g) * 2 + 0.1).to(device)
    B = rand(batch, seqlen, ngroups, dstate).to(dtype)
    C = rand(batch, seqlen, ngroups, dstate).to(dtype)
    D = rand(dim)
    z = rand(batch, seqlen, dim).to(dtype)
    bias = rand(dim, scale=0.3)
    h0 = rand(batch, dim, dstate)
    return [u, delta, A, B, C, D, z, bias, h0]


def run_scan(scan, tensors, *, use_D=True, use_z=True, use_bias=True, softplus=True, use_h0=True,
             grad_out=None, grad_final=None, cu_seqlens=None, **kw):
    """Run one scan with fresh leaves; returns (y, final, grads by name) after backward of a random loss."""
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state"]
    use = dict(D=use_D, z=use_z, delta_bias=use_bias, initial_state=use_h0)
    leaves = {k: (t.detach().clone().requires_grad_(True) if use.get(k, True) else None)
              for k, t in zip(names, tensors)}
    y, final = scan(leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"], D=leaves["D"],
                    z=leaves["z"], delta_bias=leaves["delta_bias"], delta_softplus=softplus,
                    initial_state=leaves["initial_state"], return_final_state=True, cu_seqlens=cu_seqlens, **kw)
    loss = (y.float() * grad_out.to(y.device)).sum()
    if grad_final is not None:
        loss = loss + (final.float() * grad_final.to(final.device)).sum()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y, final, grads


def as64(tensors):
    return [t.double() for t in tensors]


def assert_matches_reference(scan, tensors, tol, grad_out, grad_final=None, **kw):
    """Run `scan` and the float64 reference on the same inputs and output gradients: the output, the final
    state and every gradient must agree within `tol` (assert_close keyword arguments)."""
    y, f, g = run_scan(scan, tensors, grad_out=grad_out, grad_final=grad_final, **kw)
    y_r, f_r, g_r = run_scan(selective_scan_ref, as64(tensors), grad_out=grad_out.double(),
                             grad_final=None if grad_final is None else grad_final.double(), **kw)
    torch.testing.assert_close(y.double(), y_r, **tol)
    torch.testing.assert_close(f.double(), f_r, **tol)
    assert g.keys() == g_r.keys()
    for k in g:
        torch.testing.assert_close(g[k].double(), g_r[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")
