"""The Triton selective scan: forward and backward from the passes, the autograd Function and the public function.

    delta = softplus(delta + delta_bias);  h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t
    y_t = C_t . h_t + D u_t;  out = y * silu(z)

Forward, three launches, chunk-parallel over time: `chunk_end` (each chunk's end state from zero, and its decay),
`carry` (each chunk's true starting state), `chunk_out` (the outputs). That is two exponentials per (t, d, n): the
floor docs/architecture.md names for this route. Backward, four launches, nothing of shape (batch, seqlen, dim, dstate):
`bwd_chunk` (checkpoints every `sub` steps, and each chunk's local adjoint), `carry` in reverse (the adjoint at
each chunk end), `bwd_seq` (every gradient, walking time backwards), then sums of the per-chunk partials.

Packed sequences (`cu_seqlens`) use a per-step sequence index: at a sequence start the state is replaced by that
sequence's initial state (or zeros), read only there, and a chunk containing a start passes no state across it.
All offsets that scale with seqlen are int64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

from .bwd_chunk import bwd_chunk
from .bwd_seq import bwd_seq, seq_programs
from .carry import carry
from .chunk_end import chunk_end
from .chunk_out import chunk_out
from .config import ScanConfig
from .naive import compute_dtype


def _empty(*shape, dtype, device):
    # every output and scratch buffer of the kernels comes from here (the tests fill them with NaN instead)
    return torch.empty(*shape, dtype=dtype, device=device)


def _empty_like(t):
    return torch.empty_like(t)


def _states_nd(x):
    """A (batch|nseq, D, N) state tensor of the contract as the (batch|nseq, N, D) the kernels use (or None).

    Every state tile in the kernels is (N, D) with channels contiguous, like the chunk slabs, so that the
    compiler gives all of them one layout; a (D, N) tile beside them pulls some of them to another
    layout, which `_lane_sums` cannot take (see `ScanConfig.seq_lanes`)."""
    return None if x is None else x.transpose(1, 2).contiguous()


def _seq_index(cu_seqlens, seqlen, device):
    """(seqlen,) int32: which packed sequence each step belongs to."""
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    steps = torch.arange(seqlen, device=device)
    return (torch.searchsorted(cu[1:], steps, right=True)).to(torch.int32)


def scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, seq_idx, nseq, cfg: ScanConfig,
             keep_states: bool = True):
    """Launch the forward. Returns out (batch, L, dim) in u's dtype, final state (batch|nseq, dim, N) fp32,
    and the chunk-start states (batch, nchunks, N, dim) fp32 with the chunk decays, kept for backward (None
    without keep_states when each sequence is one chunk)."""
    batch, L, dim = u.shape
    N = B.shape[3]
    packed = seq_idx is not None
    softplus = bool(delta_softplus)
    nchunks = triton.cdiv(L, cfg.chunk)
    dev = u.device
    At = A.t().contiguous()  # (N, dim): the kernels read A along channels, like every other operand
    h0_nd = _states_nd(h0)
    if nchunks == 1 and not packed and not keep_states:
        # The output pass alone: its one chunk starts from the initial state and it writes the final state.
        hstart = h0_nd.unsqueeze(1) if h0_nd is not None else torch.zeros(batch, 1, N, dim, dtype=torch.float32,
                                                                          device=dev)
        out = _empty_like(u)
        last = _empty(batch, N, dim, dtype=torch.float32, device=dev)
        chunk_out(u, delta, At, B, C, D, z, delta_bias, None, None, hstart, out, last, softplus, cfg)
        return out, last.transpose(1, 2).contiguous(), None, None
    # packed: the kernels start each sequence from its initial state; else the carry starts from it
    h0_packed = h0_nd if packed else None
    hend = _empty(batch, nchunks, N, dim, dtype=torch.float32, device=dev)
    P = _empty_like(hend)
    chunk_end(u, delta, At, B, delta_bias, seq_idx, h0_packed, hend, P, softplus, cfg)
    hstart = _empty_like(P)
    last = _empty(batch, N, dim, dtype=torch.float32, device=dev)
    carry(P, hend, None if packed else h0_nd, hstart, last, False, cfg)
    out = _empty_like(u)
    # packed: the output kernel writes each sequence's final state at its last step
    final_nd = torch.zeros(nseq, N, dim, dtype=torch.float32, device=dev) if packed else last
    chunk_out(u, delta, At, B, C, D, z, delta_bias, seq_idx, h0_packed, hstart, out, final_nd if packed else None,
              softplus, cfg)
    return out, final_nd.transpose(1, 2).contiguous(), hstart, P


def scan_bwd(gout, gfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0, seq_idx, hstart, P,
             cfg: ScanConfig):
    """Launch the backward. Returns gradients for u, delta, A, B, C, D, z, delta_bias, h0 (None where absent)."""
    batch, L, dim = u.shape
    N = B.shape[3]
    NP = triton.next_power_of_2(N)
    packed = seq_idx is not None
    softplus = bool(delta_softplus)
    nchunks = hstart.shape[1]
    nsub = triton.cdiv(L, cfg.sub)
    dev = u.device
    At = A.t().contiguous()  # (N, dim)
    gout = gout.contiguous()
    h0_nd = _states_nd(h0) if packed else None  # without packing the kernels never read the initial state
    gfin_nd = _states_nd(gfinal)
    gfin_packed = gfin_nd if packed else None  # without packing the reverse carry starts from it
    hsub = _empty(batch, nsub, N, dim, dtype=torch.float32, device=dev)
    local = _empty_like(hstart)
    bwd_chunk(u, delta, At, B, C, z, delta_bias, gout, seq_idx, h0_nd, gfin_packed, hstart, hsub, local, softplus,
              cfg)
    nu = _empty_like(P)  # nu[c]: the adjoint at chunk c's end
    gh_first = _empty(batch, N, dim, dtype=torch.float32, device=dev)
    carry(P, local, None if packed else gfin_nd, nu, gh_first, True, cfg)
    gu = _empty_like(u)
    gdt = _empty_like(delta)
    gz = _empty_like(z) if z is not None else None
    gB = torch.zeros(B.shape, dtype=torch.float32, device=dev)
    gC = torch.zeros(C.shape, dtype=torch.float32, device=dev)
    gA = torch.zeros(batch, nchunks, N, dim, dtype=torch.float32, device=dev)
    gD = _empty(batch, nchunks, dim, dtype=torch.float32, device=dev) if D is not None else None
    gbias = _empty(batch, nchunks, dim, dtype=torch.float32, device=dev) if delta_bias is not None else None
    # packed: the kernels add each sequence's initial-state gradient at its first step
    gh0_nd = torch.zeros(h0.shape[0], N, dim, dtype=torch.float32, device=dev) if packed and h0 is not None else None
    nprog = seq_programs(batch, nchunks, dim, dev, cfg)
    scratch = _empty(nprog, cfg.seq_piece + cfg.sub // cfg.seq_piece, NP, cfg.seq_block_d, dtype=torch.float32,
                     device=dev)
    bwd_seq(u, delta, At, B, C, D, z, delta_bias, gout, seq_idx, h0_nd, gfin_packed, hsub, nu, scratch,
            gu, gdt, gz, gB, gC, gA, gD, gbias, gh0_nd, softplus, cfg)
    gA = gA.sum((0, 1)).t()
    gD = gD.sum((0, 1)) if gD is not None else None
    gbias = gbias.sum((0, 1)) if gbias is not None else None
    gh0 = None if h0 is None else (gh0_nd if packed else gh_first).transpose(1, 2).contiguous()
    return gu, gdt, gA, gB.to(B.dtype), gC.to(C.dtype), gD, gz, gbias, gh0


@dataclass
class ScanSaved:
    """What the backward needs beyond the inputs: the chunk-start states and decays of the forward (small:
    (batch, nchunks, N, dim) fp32 each), the packed-sequence index and the resolved launch shapes. A forward
    called with keep_states=False keeps no states (None) and has no backward."""

    hstart: torch.Tensor | None
    P: torch.Tensor | None
    seq_idx: torch.Tensor | None
    cfg: ScanConfig


def selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state=None, cu_seqlens=None,
                       config: ScanConfig | None = None, keep_states: bool = True):
    """The forward without autograd, for callers that keep their own saved tensors (the fused mixer).

    Inputs as `selective_scan_triton` takes them, already prepared: u, delta, z contiguous (batch, seqlen, dim);
    A (dim, dstate), D, delta_bias (dim,) fp32; B, C (batch, seqlen, ngroups, dstate) fp32 contiguous;
    initial_state (batch|nseq, dim, dstate) fp32. Returns y (batch, seqlen, dim), the final state
    (batch|nseq, dim, dstate) fp32, and the `ScanSaved` that `selective_scan_bwd` takes with the same inputs.
    keep_states=False says no backward follows: the launch may then read each sequence as one chunk
    (`ScanConfig.resolve`), and the ScanSaved is not valid for `selective_scan_bwd`.
    """
    batch, seqlen, dim = u.shape
    cfg = (config or ScanConfig()).resolve(batch, seqlen, dim, keep_states)
    seq_idx, nseq = None, batch
    if cu_seqlens is not None:
        nseq = cu_seqlens.numel() - 1
        seq_idx = _seq_index(cu_seqlens, seqlen, u.device)
    y, final, hstart, P = scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, seq_idx,
                                   nseq, cfg, keep_states)
    return y, final, ScanSaved(hstart, P, seq_idx, cfg)


def selective_scan_bwd(gy, gfinal, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state,
                       saved: ScanSaved):
    """Gradients (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state) for the inputs of
    `selective_scan_fwd`, None where an input is absent; gy (batch, seqlen, dim), gfinal None or fp32."""
    if saved.hstart is None:
        raise ValueError("selective_scan_bwd needs the states of a forward run with keep_states=True")
    return scan_bwd(gy, None if gfinal is None else gfinal.float().contiguous(), u, delta, A, B, C, D, z,
                    delta_bias, delta_softplus, initial_state, saved.seq_idx, saved.hstart, saved.P, saved.cfg)


class SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus, cu_seqlens, cfg):
        out, final, saved = selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0,
                                               cu_seqlens, cfg)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, h0)
        ctx.delta_softplus = delta_softplus
        ctx.scan_saved = saved
        return out, final

    @staticmethod
    def backward(ctx, gout, gfinal):
        u, delta, A, B, C, D, z, delta_bias, h0 = ctx.saved_tensors
        if gout is None:
            gout = torch.zeros_like(u)
        grads = selective_scan_bwd(gout, gfinal, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, h0,
                                   ctx.scan_saved)
        gu, gdt, gA, gB, gC, gD, gz, gbias, gh0 = grads
        return gu, gdt, gA, gB, gC, gD, gz, gbias, gh0, None, None, None


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          initial_state=None, return_final_state=False, cu_seqlens=None, *,
                          config: ScanConfig | None = None):
    """Selective scan in Triton. Same contract as `selective_scan_ref`; computes in fp32 whatever the input dtype.

    u, delta, z: (batch, seqlen, dim); A: (dim, dstate) fp32; B, C: (batch, seqlen, ngroups, dstate)
    D, delta_bias: (dim,) fp32; initial_state: (batch, dim, dstate), or (nseq, dim, dstate) with cu_seqlens
    cu_seqlens: (nseq+1,) int offsets of sequences packed in batch 1; the state resets at each boundary.
    Returns y (batch, seqlen, dim) in u's dtype, or (y, final_state (batch|nseq, dim, dstate) fp32).
    """
    cfg = (config or ScanConfig()).resolve(u.shape[0], u.shape[1], u.shape[2])
    if compute_dtype(u) == torch.float64:
        raise TypeError("the Triton scan computes in float32; use selective_scan_ref for float64")
    batch, seqlen, dim = u.shape
    if B.dim() == 3:
        B = B.unsqueeze(2)
    if C.dim() == 3:
        C = C.unsqueeze(2)
    if dim % B.shape[2]:
        raise ValueError(f"dim {dim} is not divisible by ngroups {B.shape[2]}")
    if cu_seqlens is not None and batch != 1:
        raise ValueError("cu_seqlens needs batch size 1 (sequences packed along seqlen)")
    nseq = batch if cu_seqlens is None else cu_seqlens.numel() - 1
    if seqlen == 0:
        y = u.new_zeros(u.shape)
        fin = (torch.zeros(nseq, dim, A.shape[1], dtype=torch.float32, device=u.device)
               if initial_state is None else initial_state.float())
        return (y, fin) if return_final_state else y

    def prep(t, dtype=None):
        if t is None:
            return None
        return (t if dtype is None else t.to(dtype)).contiguous()

    h0 = prep(initial_state, torch.float32)
    # B and C go in as fp32: every thread reads all dstate values of both at every step, and unpacking
    # 16-bit values costs one or two instructions each, a fifth of the output pass's loop. The copies
    # are (batch, seqlen, ngroups, dstate), small beside the (batch, seqlen, dim) tensors.
    y, final = SelectiveScanFn.apply(prep(u), prep(delta), prep(A, torch.float32), prep(B, torch.float32),
                                     prep(C, torch.float32),
                                     prep(D, torch.float32), prep(z), prep(delta_bias, torch.float32), h0,
                                     bool(delta_softplus), cu_seqlens, cfg)
    if cu_seqlens is not None and initial_state is not None:
        # an empty packed sequence never reaches a start step: its final state is its initial state
        cu = cu_seqlens.to(u.device)
        final = torch.where((cu[1:] == cu[:-1])[:, None, None], initial_state.float(), final)
    return (y, final) if return_final_state else y
