"""Launch shapes of the scan kernels, and the layout decisions that follow from them and the input shapes."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import triton

# Register caps of `_bwd_chunk_kernel`: 168 lets three 4-warp programs share an SM instead of two; with B and C
# loaded one value a lane (`block_lanes`) the kernel needs fewer registers and 128 fits four
BWD_CHUNK_MAXNREG = 168
BWD_CHUNK_MAXNREG_LANES = 128


def block_in_one_group(D: int, G: int, block_d: int) -> bool:
    """Whether every block of `block_d` channels reads a single B/C group (of D / G channels)."""
    return G == 1 or (D // G) % block_d == 0


@dataclass(frozen=True)
class ScanConfig:
    """Launch shapes. The defaults are the fastest of the variants timed on the H200 at L=2^20
    (bench/results/scan_h200.md, kernels/NOTES.md).

    chunk: steps per forward program (None: chosen per call, see `resolve`).
    sub: steps between the backward's state checkpoints (divides chunk); 64 keeps them to 1 GB at
    L=2^20, D=1024, N=16 (32 costs 1.06 GB more at the same speed).
    block_d / warps: channels and warps per program of the forward passes and the backward recompute
    (block_d = 32 * warps keeps each channel's states in one thread and lets B/C rows be shared by shuffles).
    carry_block / carry_stages: elements per program of the chunk carry, and the loads it keeps in flight
    (Triton's loop pipelining; 1 turns it off).
    seq_block_d / seq_warps: channels and warps per program of the backward walk (`_bwd_seq_kernel`); 32 channels
    in one warp keep its channel sums inside the warp, where the warp-level PTX applies (`seq_lanes`).
    seq_programs_per_sm: persistent walk programs launched per SM (one "SM" when interpreting on CPU).
    one_pass_programs: a forward that keeps nothing for a backward runs as one chunk per sequence (the output
    pass alone, one exponential per (t, d, n) instead of two) once batch x channel blocks gives this many
    programs; below it the sequence is cut into chunks as for training, so that enough programs run.
    seq_piece: steps whose states a walk program keeps at once (divides sub; below sub it replays each sub-tile
    once more to find the piece starts), so each program's scratch slot is
    (seq_piece + sub / seq_piece) x dstate x seq_block_d fp32."""

    chunk: int | None = None
    sub: int = 64
    block_d: int = 128
    warps: int = 4
    carry_block: int = 512
    carry_stages: int = 8
    seq_block_d: int = 32
    seq_warps: int = 1
    seq_programs_per_sm: int = 8
    seq_piece: int = 8
    one_pass_programs: int = 512

    def __post_init__(self):
        if self.chunk is not None and self.chunk % self.sub:
            raise ValueError(f"chunk {self.chunk} must be a multiple of sub {self.sub}")
        for name in ("sub", "block_d", "carry_block", "seq_block_d", "seq_piece"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two, got {v}")
        if self.seq_piece > self.sub:
            raise ValueError(f"seq_piece {self.seq_piece} must divide sub {self.sub}")
        for name in ("warps", "seq_warps", "seq_programs_per_sm", "carry_stages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    def resolve(self, batch: int, seqlen: int, dim: int, keep_states: bool = True) -> "ScanConfig":
        """A copy with `chunk` fixed. Auto: the largest power of two up to 1024 that still gives about
        2048 forward programs, so short sequences fill the GPU too (each program walks its chunk in
        sequence, so fewer, longer chunks leave SMs idle). Without `keep_states` (a forward with no backward)
        and with at least `one_pass_programs` programs, one chunk covers the whole sequence."""
        if self.chunk is not None:
            return self
        per_chunk = batch * triton.cdiv(dim, self.block_d)  # programs per chunk index
        if not keep_states and per_chunk >= self.one_pass_programs:
            return dataclasses.replace(self, chunk=max(self.sub, triton.next_power_of_2(max(seqlen, 1))))
        want = triton.cdiv(2048, per_chunk)  # chunks per sequence
        chunk = 1024
        while chunk > self.sub and chunk * want > seqlen:
            chunk //= 2
        return dataclasses.replace(self, chunk=chunk)

    def seq_lanes(self, N: int, D: int, G: int) -> bool:
        """Whether the backward walk's tiles have the layout the PTX of `_lane_sums` and `_lane_broadcast` needs,
        each lane holding one channel's 16 states in order: 16 states, 32 channels in one warp, and each channel
        block inside one group. Then the walk sums dB and dC with `_lane_sums` and shares B/C rows with
        `_lane_broadcast`; elsewhere it takes the plain sums and rows. Every state tile the kernels touch is
        (N, D) for this layout (`scan._states_nd`). tests/kernels/test_lane_sums_layout.py checks the layout in
        the compiler's output."""
        return N == 16 and self.seq_block_d == 32 and self.seq_warps == 1 and block_in_one_group(D, G, 32)

    def block_lanes(self, N: int, D: int, G: int) -> bool:
        """Whether the forward passes and `_bwd_chunk_kernel` share B/C rows with `_lane_broadcast`: 16 states, 32
        channels a warp (block_d = 32 x warps) and each channel block inside one group."""
        return N == 16 and self.block_d == 32 * self.warps and block_in_one_group(D, G, self.block_d)

    def bwd_chunk_maxnreg(self, N: int, D: int, G: int) -> int:
        """The register cap `_bwd_chunk_kernel` launches with."""
        return BWD_CHUNK_MAXNREG_LANES if self.block_lanes(N, D, G) else BWD_CHUNK_MAXNREG
