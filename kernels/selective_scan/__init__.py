"""Selective scan for Mamba-1, channel-last, with state passing and packed sequences.

    naive.py       the reference: a plain loop over time, any dtype including float64
    chunked.py     the chunked PyTorch scan (CPU path), exact and memory-linear
    scan.py        the Triton scan: forward and backward from the passes, autograd Function, public function
    chunk_end.py   forward pass 1: each chunk's end state from zero, and its decay
    carry.py       the carry across chunks (forward, and in reverse for the backward)
    chunk_out.py   forward pass 3: the outputs from each chunk's true start
    bwd_chunk.py   backward recompute: checkpoints and each chunk's local adjoint
    bwd_seq.py     backward walk: every gradient, walking time backwards inside each thread
    warp.py        warp-level PTX (lane sums, lane broadcast) and the references the interpreter runs
    activations.py softplus and sigmoid
    tiles.py       helpers and heuristics shared by the kernels that hold a state tile
    config.py      ScanConfig (launch shapes) and the layout decisions
    registry.py    each kernel and helper in its compiled and interpreted form
"""
from .chunked import selective_scan_chunked
from .config import ScanConfig
from .naive import selective_scan_ref
from .registry import interpreting
from .scan import ScanSaved, selective_scan_bwd, selective_scan_fwd, selective_scan_triton

__all__ = ["selective_scan_ref", "selective_scan_chunked", "selective_scan_triton", "ScanConfig", "ScanSaved",
           "selective_scan_fwd", "selective_scan_bwd", "interpreting"]
