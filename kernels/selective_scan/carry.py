"""The chunk carry, `_carry_kernel`: a short sequential pass over chunks, s_c = P_c * s_{c-1} + e_c.

Forward: P the chunk decays and e the chunk end states from zero (chunk_end.py), giving every chunk's true
starting state and the final state. Backward, in reverse: P the same decays and e each chunk's local adjoint
(bwd_chunk.py), giving the adjoint at every chunk end.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .registry import KERNELS, present


@KERNELS.kernel(heuristics=dict(HAS_INIT=present("init_ptr")))
def _carry_kernel(P_ptr, e_ptr, init_ptr, out_ptr, last_ptr, nchunks, DN,
                  BLOCK: tl.constexpr, HAS_INIT: tl.constexpr, REVERSE: tl.constexpr, STAGES: tl.constexpr):
    # s_{c} = P_c * s_{c-1} + e_c over chunks (or from the last chunk down with REVERSE);
    # out[c] receives the value entering chunk c, last the value after all chunks.
    pid = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    j = pid * BLOCK + tl.arange(0, BLOCK)
    m = j < DN
    if HAS_INIT:
        s = tl.load(init_ptr + pid_b * DN + j, mask=m, other=0.0)
    else:
        s = tl.full((BLOCK,), 0.0, tl.float32)
    # each step waits on nothing but its own loads: pipelining them (STAGES in flight) is what makes the
    # pass fast, since the chain itself is one FMA a chunk
    for i in tl.range(0, nchunks, num_stages=STAGES):
        if REVERSE:
            c = nchunks - 1 - i
        else:
            c = i
        off = (pid_b * nchunks + c) * DN + j
        tl.store(out_ptr + off, s, mask=m)
        s = tl.load(P_ptr + off, mask=m, other=0.0) * s + tl.load(e_ptr + off, mask=m, other=0.0)
    tl.store(last_ptr + pid_b * DN + j, s, mask=m)


def carry(P, e, init, out, last, reverse, cfg):
    """Launch the carry over (batch, nchunks, N, dim) slabs P and e: out (the same shape) receives the value
    entering each chunk, last (batch, N, dim) the value after all chunks; init (batch, N, dim) or None (zeros)."""
    batch, nchunks = P.shape[:2]
    DN = P[0, 0].numel()
    grid = (triton.cdiv(DN, cfg.carry_block), batch)
    KERNELS.get("_carry_kernel", P.device)[grid](
        P_ptr=P, e_ptr=e, init_ptr=init, out_ptr=out, last_ptr=last, nchunks=nchunks, DN=DN,
        BLOCK=cfg.carry_block, REVERSE=reverse, STAGES=cfg.carry_stages, num_warps=4)
