"""Causal depthwise conv1d, channel-last, with SiLU, conv states and packed sequences (mamba's causal_conv1d).

    from dnamamba_kernels.conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_fwd, causal_conv1d_bwd

`causal_conv1d` runs the Triton kernels on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 is set
(checked at each call); other CPU tensors and float64 go to `causal_conv1d_ref`. Both share one signature.
`causal_conv1d_fwd` / `causal_conv1d_bwd` are the launches without autograd, for fused layers that save x
and recompute the conv in their own backward.
"""
from .causal_conv1d import Conv1dConfig, causal_conv1d, causal_conv1d_bwd, causal_conv1d_fwd, sequence_index
from .naive import causal_conv1d_ref

__all__ = ["causal_conv1d", "causal_conv1d_ref", "causal_conv1d_fwd", "causal_conv1d_bwd", "Conv1dConfig",
           "sequence_index"]
