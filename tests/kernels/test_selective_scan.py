"""The Triton selective scan against the float64 reference, run on CPU under TRITON_INTERPRET=1.

Small launch shapes (chunk 16, checkpoints every 4 steps, 8 channels a program) let tiny inputs
cross every boundary the GPU shapes have: chunk edges (15, 16, 17), sub-tile edges, several chunks (33,
70), several channel blocks with an odd dim, and channel blocks that straddle B/C groups. Every test
runs with both forms of the backward walk; it runs 3 persistent programs, so each takes several work items.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import dnamamba_kernels
from dnamamba_kernels import ScanConfig, selective_scan, selective_scan_ref, selective_scan_triton
from dnamamba_kernels.selective_scan import scan as scan_module
from dnamamba_kernels.selective_scan.registry import KERNELS
from dnamamba_kernels.selective_scan.warp import _lane_broadcast_ptx, _lane_sums_ptx

from kernel_inputs import as64, assert_matches_reference, make_inputs, run_scan

# "two_level" replays each sub-tile in pieces of 2 steps; "one_level" keeps the whole sub-tile at once
WALKS = ("two_level", "one_level")
SMALL = {walk: ScanConfig(chunk=16, sub=4, block_d=8, warps=1, carry_block=64, seq_block_d=8, seq_warps=1,
                          seq_programs_per_sm=3, seq_piece=4 if walk == "one_level" else 2)
         for walk in WALKS}
TOL = {torch.float32: dict(rtol=6e-4, atol=2e-3), torch.bfloat16: dict(rtol=3e-2, atol=5e-2)}
OPTS = ("use_D", "use_z", "use_bias", "softplus", "use_h0")


@pytest.fixture(params=WALKS)
def walk(request):
    return request.param


def small_scan(walk):
    def scan(*args, **kw):
        return selective_scan_triton(*args, config=SMALL[walk], **kw)

    return scan


def compare(tensors, dtype, opts, walk, grad_final=True, cu_seqlens=None):
    y_ref, f_ref, g_ref = None, None, None
    # the output gradient reaches the kernels in the output dtype: give the reference the same values
    gy = torch.randn(tensors[0].shape, generator=torch.Generator().manual_seed(1)).to(dtype).float()
    nstate = tensors[8].shape
    gf = torch.randn(nstate, generator=torch.Generator().manual_seed(2)) if grad_final else None
    y, f, g = run_scan(small_scan(walk), tensors, grad_out=gy, grad_final=gf, cu_seqlens=cu_seqlens, **opts)
    y_ref, f_ref, g_ref = run_scan(selective_scan_ref, as64(tensors), grad_out=gy.double(),
                                   grad_final=None if gf is None else gf.double(), cu_seqlens=cu_seqlens, **opts)
    tol = TOL[dtype]
    assert y.dtype == dtype and f.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref.double(), **tol)
    torch.testing.assert_close(f.double(), f_ref, **tol)
    assert g.keys() == g_ref.keys()
    for k in g:
        assert g[k].dtype == tensors[["u", "delta", "A", "B", "C", "D", "z", "delta_bias",
                                      "initial_state"].index(k)].dtype, k
        torch.testing.assert_close(g[k].double(), g_ref[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


CASES = [
    # batch, seqlen, dim, dstate, ngroups, dtype, options off
    (1, 1, 5, 3, 1, torch.float32, ()),
    (2, 7, 5, 4, 1, torch.float32, ("use_D", "use_z", "use_bias", "softplus", "use_h0")),
    (1, 15, 6, 4, 2, torch.float32, ()),
    (2, 16, 5, 3, 1, torch.bfloat16, ()),
    (1, 17, 6, 4, 2, torch.float32, ("use_D", "use_bias")),
    (2, 33, 9, 4, 3, torch.float32, ("use_z", "softplus")),
    (2, 70, 6, 3, 2, torch.bfloat16, ("use_h0",)),
]


@pytest.mark.parametrize("batch,seqlen,dim,dstate,ngroups,dtype,off", CASES)
def test_matches_reference_forward_and_all_gradients(interpret, walk, batch, seqlen, dim, dstate, ngroups, dtype,
                                                     off):
    tensors = make_inputs(batch, seqlen, dim, dstate, ngroups, dtype=dtype, seed=seqlen)
    compare(tensors, dtype, {k: k not in off for k in OPTS}, walk)


def poison_and_record(monkeypatch) -> list[str]:
    """Every buffer the launcher allocates starts as NaN; returns the list the names of launched kernels go to."""
    monkeypatch.setattr(scan_module, "_empty", lambda *s, dtype, device: torch.full(s, float("nan"), dtype=dtype,
                                                                                     device=device))
    monkeypatch.setattr(scan_module, "_empty_like", lambda t: torch.full_like(t, float("nan")))
    launched = []
    get = KERNELS.get
    monkeypatch.setattr(KERNELS, "get", lambda name, device: launched.append(name) or get(name, device))
    return launched


def test_every_output_element_is_written(interpret, walk, monkeypatch):
    """Outputs and scratch start as NaN: any element the kernels skip would surface. Also checks that every
    kernel ran."""
    launched = poison_and_record(monkeypatch)
    tensors = make_inputs(2, 37, 9, 4, 1, seed=5)
    compare(tensors, torch.float32, {k: True for k in OPTS}, walk)
    assert sorted(set(launched)) == sorted(KERNELS.names())
    assert launched.count("_carry_kernel") == 2  # forward, and in reverse for the backward


def test_split_with_state_equals_unsplit(interpret, walk):
    """Scanning [0, 23) then [23, 40) with the carried state gives the unsplit outputs, final state and gradients."""
    batch, seqlen, dim, dstate, cut = 2, 40, 6, 4, 23
    tensors = make_inputs(batch, seqlen, dim, dstate, 2, seed=11)
    gy = torch.randn(batch, seqlen, dim)
    gf = torch.randn(batch, dim, dstate)

    def split_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                   return_final_state=True, cu_seqlens=None):
        kw = dict(D=D, delta_bias=delta_bias, delta_softplus=delta_softplus, return_final_state=True)
        y1, h1 = small_scan(walk)(u[:, :cut], delta[:, :cut], A, B[:, :cut], C[:, :cut], z=z[:, :cut],
                                  initial_state=initial_state, **kw)
        y2, h2 = small_scan(walk)(u[:, cut:], delta[:, cut:], A, B[:, cut:], C[:, cut:], z=z[:, cut:],
                                  initial_state=h1, **kw)
        return torch.cat([y1, y2], dim=1), h2

    y, f, g = run_scan(small_scan(walk), tensors, grad_out=gy, grad_final=gf)
    y_s, f_s, g_s = run_scan(split_scan, tensors, grad_out=gy, grad_final=gf)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_s, y, **tol)
    torch.testing.assert_close(f_s, f, **tol)
    for k in g:
        torch.testing.assert_close(g_s[k], g[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


def test_packed_equals_separate_calls(interpret, walk):
    """cu_seqlens resets the state at each boundary: the same as scanning each sequence alone."""
    cu = torch.tensor([0, 5, 6, 23, 41], dtype=torch.int32)  # a 1-step sequence; boundaries inside chunks
    nseq, seqlen, dim, dstate = 4, 41, 6, 3
    tensors = make_inputs(1, seqlen, dim, dstate, 2, seed=21)
    tensors[8] = torch.randn(nseq, dim, dstate)
    gy = torch.randn(1, seqlen, dim)
    gf = torch.randn(nseq, dim, dstate)

    def separate(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None,
                 return_final_state=True, cu_seqlens=None):
        ys, fs = [], []
        for i in range(nseq):
            s, e = int(cu[i]), int(cu[i + 1])
            y, f = small_scan(walk)(u[:, s:e], delta[:, s:e], A, B[:, s:e], C[:, s:e], D=D, z=z[:, s:e],
                                    delta_bias=delta_bias, delta_softplus=delta_softplus,
                                    initial_state=initial_state[i:i + 1], return_final_state=True)
            ys.append(y)
            fs.append(f)
        return torch.cat(ys, dim=1), torch.cat(fs)

    y, f, g = run_scan(small_scan(walk), tensors, grad_out=gy, grad_final=gf, cu_seqlens=cu)
    y_s, f_s, g_s = run_scan(separate, tensors, grad_out=gy, grad_final=gf)
    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y, y_s, **tol)
    torch.testing.assert_close(f, f_s, **tol)
    for k in g:
        torch.testing.assert_close(g[k], g_s[k], **tol, msg=lambda m, k=k: f"grad {k}: {m}")


def test_packed_matches_reference_without_initial_state_and_with_empty_sequence(interpret, walk):
    cu = torch.tensor([0, 9, 9, 20], dtype=torch.int64)
    tensors = make_inputs(1, 20, 5, 4, 1, seed=31)
    tensors[8] = torch.randn(3, 5, 4)
    compare(tensors, torch.float32, {k: k != "use_h0" for k in OPTS}, walk, cu_seqlens=cu)
    compare(tensors, torch.float32, {k: True for k in OPTS}, walk, cu_seqlens=cu)


def test_no_overflow_for_large_delta_and_long_decay(interpret, walk):
    """delta up to 20 and beyond after softplus (decays of exp(-320) underflow to 0), and long runs of
    decay near 1 (delta tiny): finite, and equal to the reference."""
    tensors = make_inputs(1, 48, 6, 4, 1, seed=41)
    big = torch.linspace(-2.0, 25.0, 48)[None, :, None].expand(1, 48, 6).contiguous()
    tensors[1] = big
    tensors[2] = tensors[2] * 8.0  # A down to about -16
    compare(tensors, torch.float32, {k: True for k in OPTS}, walk)
    tensors[1] = torch.full((1, 48, 6), -12.0)  # softplus(-12) ~ 6e-6: decay ~1 for the whole run
    compare(tensors, torch.float32, {k: True for k in OPTS}, walk)


def test_dispatch(monkeypatch):
    """CPU tensors go to the chunked PyTorch scan unless TRITON_INTERPRET=1; then to the Triton kernels."""
    calls = []
    monkeypatch.setattr(dnamamba_kernels, "selective_scan_chunked", lambda *a, **k: calls.append("chunked"))
    monkeypatch.setattr(dnamamba_kernels, "selective_scan_triton", lambda *a, **k: calls.append("triton"))
    u, delta, A, B, C = make_inputs(1, 4, 2, 2)[:5]
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    selective_scan(u, delta, A, B, C)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    selective_scan(u, delta, A, B, C)
    selective_scan(u.double(), delta.double(), A.double(), B.double(), C.double())
    assert calls == ["chunked", "triton", "chunked"]


def test_seq_with_several_pieces_per_sub_tile(interpret):
    """sub 8 in pieces of 2 (four piece starts kept per sub-tile, as sub 64 in pieces of 8 on the GPU), with
    ragged ends: the last sub-tile of 33 - 32 = 1 step and of 70 - 64 = 6 steps."""
    cfg = dataclasses.replace(SMALL["two_level"], sub=8)
    for seqlen, dtype in ((33, torch.float32), (70, torch.bfloat16)):
        tensors = make_inputs(1, seqlen, 6, 3, 2, dtype=dtype, seed=seqlen)
        gy = torch.randn(1, seqlen, 6).to(dtype).float()
        y, f, g = run_scan(lambda *a, **k: selective_scan_triton(*a, config=cfg, **k), tensors, grad_out=gy)
        y_r, f_r, g_r = run_scan(selective_scan_ref, as64(tensors), grad_out=gy.double())
        torch.testing.assert_close(y.double(), y_r, **TOL[dtype])
        for k in g:
            torch.testing.assert_close(g[k].double(), g_r[k], **TOL[dtype], msg=lambda m, k=k: f"grad {k}: {m}")


def test_config_rejects_bad_launch_shapes():
    with pytest.raises(ValueError, match="seq_piece"):
        ScanConfig(sub=32, seq_piece=64)
    with pytest.raises(ValueError, match="seq_piece"):
        ScanConfig(seq_piece=6)
    with pytest.raises(ValueError, match="sub"):
        ScanConfig(chunk=96, sub=64)
    with pytest.raises(ValueError, match="block_d"):
        ScanConfig(block_d=96)
    with pytest.raises(ValueError, match="carry_stages"):
        ScanConfig(carry_stages=0)
    with pytest.raises(ValueError, match="seq_programs_per_sm"):
        ScanConfig(seq_programs_per_sm=0)
    assert ScanConfig().resolve(1, 2 ** 20, 1024).chunk == 1024
    assert ScanConfig().resolve(8, 4096, 1024).chunk == 128  # about 2048 programs


def run_warp_ptx(ptx, values):
    """Execute the PTX of `_lane_sums` or `_lane_broadcast` for one warp: values (32 lanes, 16) -> outputs
    (32 lanes, 16).

    A small model of the instructions the generated code uses, per lane, with a shuffle reading the
    source lane's register as it stood before the instruction."""
    regs = [{"%laneid": lane, **{f"${16 + j}": float(values[lane][j]) for j in range(16)}} for lane in range(32)]

    def val(r, x):
        if x in r:
            return r[x]
        return int(x, 0)

    for line in ptx.splitlines():
        line = line.strip().rstrip(";")
        if line in ("{", "}") or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [x.strip() for x in args.split(",")]
        if op.startswith("shfl.sync."):
            assert a[3:] == ["31", "0xffffffff"], line  # the whole warp, no segments
            before = [dict(r) for r in regs]
            for lane, r in enumerate(regs):
                src = lane ^ val(r, a[2]) if op == "shfl.sync.bfly.b32" else val(r, a[2])
                assert op in ("shfl.sync.bfly.b32", "shfl.sync.idx.b32"), line
                r[a[0]] = before[src][a[1]]
            continue
        for r in regs:
            if op in ("mov.u32", "mov.b32"):
                r[a[0]] = val(r, a[1])
            elif op == "and.b32":
                r[a[0]] = val(r, a[1]) & val(r, a[2])
            elif op == "setp.ne.u32":
                r[a[0]] = val(r, a[1]) != val(r, a[2])
            elif op == "selp.b32":
                r[a[0]] = val(r, a[1]) if r[a[3]] else val(r, a[2])
            elif op == "add.f32":
                r[a[0]] = val(r, a[1]) + val(r, a[2])
            else:
                raise AssertionError(f"the model does not know {op!r}")
    return torch.tensor([[r[f"${j}"] for j in range(16)] for r in regs], dtype=torch.float64)


def test_lane_sums_ptx_leaves_each_state_sum_where_the_kernel_reads_it():
    """The reduce-scatter PTX, run lane by lane: lane j (and j + 16) must end with the sum over all 32
    lanes of state bitrev4(j) in every output, which is where `_bwd_seq_kernel` reads it."""
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = run_warp_ptx(_lane_sums_ptx(), x.tolist())
    sums = x.sum(0)  # (16,)
    for lane in range(32):
        j = lane & 15
        state = ((j & 1) << 3) | ((j & 2) << 1) | ((j & 4) >> 1) | ((j & 8) >> 3)
        torch.testing.assert_close(out[lane], sums[state].expand(16), rtol=1e-12, atol=1e-12)


def test_lane_broadcast_ptx_gives_every_lane_the_row():
    """The broadcast PTX reads each lane's first operand (row 0 of the tile) and must hand every lane the
    values of lanes 0-15 in order: the B or C row of the step, as `_bwd_seq_kernel` uses it."""
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    out = run_warp_ptx(_lane_broadcast_ptx(), x.tolist())
    for lane in range(32):
        torch.testing.assert_close(out[lane], x[:16, 0], rtol=0, atol=0)


@pytest.mark.parametrize("dim,ngroups,block_d", [(70, 1, 8), (64, 2, 8), (70, 1, 32), (64, 2, 32)])
def test_seq_lane_sums_matches_reference(interpret, dim, ngroups, block_d):
    """The lane path of the backward walk (32 channels a program, dstate 16: dB/dC by `_lane_sums`, B/C rows by
    `_lane_broadcast`), interpreted with the reference placement of both: a ragged last channel block (70) and
    two groups of 32 channels. With block_d 32 the forward passes and the recompute share B/C rows by
    `_lane_broadcast` too; with 8 they take the plain rows."""
    cfg = dataclasses.replace(SMALL["two_level"], seq_block_d=32, sub=8, block_d=block_d)
    assert cfg.seq_lanes(16, dim, ngroups) and cfg.block_lanes(16, dim, ngroups) == (block_d == 32)
    tensors = make_inputs(1, 37, dim, 16, ngroups, seed=dim)
    gy = torch.randn(1, 37, dim, generator=torch.Generator().manual_seed(3))
    assert_matches_reference(lambda *a, **k: selective_scan_triton(*a, config=cfg, **k), tensors, TOL[torch.float32],
                             gy)


@pytest.mark.parametrize("block_d", [8, 32])
def test_seq_lane_sums_packed_matches_reference(interpret, block_d):
    """The lane path with packed sequences (a 1-step one among them), initial states and a final-state
    gradient, at 32 channels and 16 states, with the forward passes on plain or shared B/C rows."""
    cfg = dataclasses.replace(SMALL["two_level"], seq_block_d=32, sub=8, block_d=block_d)
    cu = torch.tensor([0, 20, 21, 50, 60], dtype=torch.int32)
    tensors = make_inputs(1, 60, 64, 16, 1, seed=7)
    tensors[8] = torch.randn(4, 64, 16, generator=torch.Generator().manual_seed(8))
    gy = torch.randn(1, 60, 64, generator=torch.Generator().manual_seed(9))
    gf = torch.randn(4, 64, 16, generator=torch.Generator().manual_seed(10))
    assert_matches_reference(lambda *a, **k: selective_scan_triton(*a, config=cfg, **k), tensors, TOL[torch.float32],
                             gy, gf, cu_seqlens=cu)


ONE_PASS = dataclasses.replace(SMALL["one_level"], chunk=None, one_pass_programs=1)


@pytest.mark.parametrize("seqlen,dim,ngroups,use_h0", [(1, 5, 1, True), (15, 6, 2, False), (17, 9, 3, True),
                                                      (70, 6, 2, True), (33, 5, 1, False)])
def test_forward_without_backward_reads_each_sequence_in_one_pass(interpret, monkeypatch, seqlen, dim, ngroups,
                                                                  use_h0):
    """keep_states=False: the output pass alone, from the initial state, writing the final state; outputs and
    buffers start as NaN, and the result equals the float64 reference at lengths across chunk sizes."""
    launched = poison_and_record(monkeypatch)
    u, delta, A, B, C, D, z, bias, h0 = make_inputs(2, seqlen, dim, 4, ngroups, seed=seqlen)
    h0 = h0 if use_h0 else None
    y, final, saved = scan_module.selective_scan_fwd(u, delta, A, B, C, D, z, bias, True, h0, config=ONE_PASS,
                                                     keep_states=False)
    assert launched == ["_chunk_out_kernel"] and saved.hstart is None
    y_ref, f_ref = selective_scan_ref(*as64([u, delta, A, B, C]), D=D.double(), z=z.double(), delta_bias=bias.double(),
                                      delta_softplus=True, initial_state=None if h0 is None else h0.double(),
                                      return_final_state=True)
    torch.testing.assert_close(y.double(), y_ref, **TOL[torch.float32])
    torch.testing.assert_close(final.double(), f_ref, **TOL[torch.float32])
    with pytest.raises(ValueError, match="keep_states=True"):
        scan_module.selective_scan_bwd(torch.ones_like(y), None, u, delta, A, B, C, D, z, bias, True, h0, saved)


def test_one_pass_needs_enough_programs():
    """One chunk a sequence only without a backward and with at least one_pass_programs programs; otherwise the
    chunk length of training, so a short batch still spreads over the GPU."""
    cfg = ScanConfig(one_pass_programs=512)
    assert cfg.resolve(256, 513, 512, keep_states=False).chunk == 1024  # 256 x 4 channel blocks
    assert cfg.resolve(256, 513, 512).chunk == 256
    assert cfg.resolve(1, 513, 512, keep_states=False).chunk == cfg.resolve(1, 513, 512).chunk == 64
