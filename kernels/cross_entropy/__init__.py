"""Linear + cross-entropy over the tied byte head, chunked over rows, with its full-logits reference.

    from dnamamba_kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_ref
    nll = linear_cross_entropy(hidden, weight, targets, chunk_size=None)  # (N,) fp32, unreduced
"""
from .linear_cross_entropy import default_chunk_size, linear_cross_entropy
from .naive import linear_cross_entropy_ref

__all__ = ["linear_cross_entropy", "linear_cross_entropy_ref", "default_chunk_size"]
