"""Selective-scan kernels for Mamba-1, channel-last, with state passing and packed sequences.

    from dnamamba_kernels import selective_scan, selective_scan_ref, selective_scan_chunked

`selective_scan` runs the Triton kernels on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1
is set (checked at each call); other CPU tensors, and float64, go to `selective_scan_chunked`.
All of them share one signature.
"""
import torch

from .selective_scan import (ScanConfig, ScanSaved, interpreting, selective_scan_bwd, selective_scan_chunked,
                             selective_scan_fwd, selective_scan_ref, selective_scan_triton)


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   initial_state=None, return_final_state=False, cu_seqlens=None):
    """Selective scan: Triton on CUDA (or under TRITON_INTERPRET=1), else the chunked PyTorch scan.

    u, delta, z: (batch, seqlen, dim); A: (dim, dstate); B, C: (batch, seqlen, ngroups, dstate)
    D, delta_bias: (dim,); initial_state: (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens
    Returns y (batch, seqlen, dim) in u's dtype, or (y, final_state (batch|nseq, dim, dstate)).
    """
    use_triton = (u.is_cuda or interpreting()) and u.dtype != torch.float64
    scan = selective_scan_triton if use_triton else selective_scan_chunked
    return scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                initial_state=initial_state, return_final_state=return_final_state, cu_seqlens=cu_seqlens)


__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked", "selective_scan_triton", "ScanConfig",
           "ScanSaved", "selective_scan_fwd", "selective_scan_bwd"]
