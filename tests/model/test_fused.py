"""The fused path (model/fused.py over the Triton kernels) against the reference modules of mamba.py.

On CPU the fused path runs the real Triton kernels under TRITON_INTERPRET=1, in fp32, against the reference
model in float64; on the GPU (marked) it runs in bf16 at L = 2^20 against the reference in fp32.
"""
from __future__ import annotations

import copy

import pytest
import torch

from dnamamba import alphabet
from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.model import MambaConfig, MambaLM


@pytest.fixture(autouse=True)
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture(scope="module")
def lambda_tokens():
    with FastaFile(demo_genome_path()) as fa:
        return alphabet.encode(fa.fetch(fa.names[0], 5000, 5000 + 2 * 97))  # (194,) real phage DNA


def pair(**kw):
    """(fused fp32 model, the same weights on the reference path in float64)."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layer=2, d_state=16, fused=True, **kw)
    fused = MambaLM(cfg)
    with torch.no_grad():  # nonzero D and conv bias, so every term of the block counts
        for layer in fused.layers:
            layer.mixer.conv_bias.uniform_(-0.5, 0.5)
            layer.mixer.D.uniform_(0.5, 1.5)
            layer.norm.weight.uniform_(0.5, 1.5)
        fused.norm_f.weight.uniform_(0.5, 1.5)
    ref = copy.deepcopy(fused).double()
    ref.cfg = copy.deepcopy(cfg)
    ref.cfg.fused = False
    ref.cfg.scan_backend = "naive"
    return fused, ref


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def test_outputs_and_every_gradient_match_the_reference(lambda_tokens):
    fused, ref = pair()
    x = lambda_tokens.view(2, 97)  # odd length: crosses scan chunks and conv blocks
    nll_f = fused.next_token_nll(x)
    nll_r = ref.next_token_nll(x)
    assert rel(nll_f, nll_r) < 1e-5
    nll_f.sum().backward()
    nll_r.sum().backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in fused.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert rel(p.grad, ref_grads[name].grad) < 1e-4, name


def test_hidden_states_of_every_layer_match(lambda_tokens):
    fused, ref = pair()
    x = lambda_tokens[:60].view(1, 60)
    for layer in (0, 1, -1):
        assert rel(fused.hidden_states(x, layer), ref.hidden_states(x, layer)) < 1e-5, layer
    assert rel(fused(x), ref(x)) < 1e-5


def test_several_layers_in_one_pass_with_carried_state_match(lambda_tokens):
    fused, ref = pair()
    x = lambda_tokens[:60].view(1, 60)
    layers = [1, -1, 0]
    state_f = state_r = None
    for piece in (x[:, :23], x[:, 23:]):  # two pieces, the state carried: the embed path
        hs_f, state_f = fused.hidden_states(piece, layers, state=state_f, return_state=True)
        hs_r, state_r = ref.hidden_states(piece, layers, state=state_r, return_state=True)
        assert len(hs_f) == len(layers)
        for layer, h_f, h_r in zip(layers, hs_f, hs_r):
            assert rel(h_f, h_r) < 1e-5, layer
    for layer, h_f in zip(layers, hs_f):
        assert rel(h_f, fused.hidden_states(x, layer)[:, 23:]) < 1e-5, layer


def test_checkpointed_fused_blocks_give_the_same_gradients(lambda_tokens):
    x = lambda_tokens[:80].view(2, 40)
    grads = []
    for ckpt in (False, True):
        fused, _ = pair(checkpoint_blocks=ckpt)
        fused.train()
        fused.next_token_nll(x).sum().backward()
        grads.append({n: p.grad for n, p in fused.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_streaming_in_pieces_equals_one_call(lambda_tokens):
    fused, _ = pair()
    x = lambda_tokens.view(2, 97)
    full = fused(x)
    pieces, state = [], None
    for s, e in [(0, 2), (2, 3), (3, 40), (40, 97)]:  # pieces shorter than the conv width, and across chunks
        logits, state = fused(x[:, s:e], state=state, return_state=True)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-5, atol=1e-5)


def test_inference_in_one_scan_pass_matches_the_reference_and_streams(lambda_tokens, monkeypatch):
    """Under no_grad the scan keeps no states; with one_pass_programs=1 each piece is one scan pass from the
    carried state. Logits and the carried states match the float64 reference, piece by piece."""
    import dataclasses

    from dnamamba.model import fused as fused_module

    monkeypatch.setattr(fused_module, "SCAN_CONFIG", dataclasses.replace(fused_module.SCAN_CONFIG, one_pass_programs=1))
    fused, ref = pair()
    x = lambda_tokens.view(2, 97)
    state_f = state_r = None
    with torch.no_grad():
        for s, e in [(0, 2), (2, 40), (40, 97)]:
            logits_f, state_f = fused(x[:, s:e], state=state_f, return_state=True)
            logits_r, state_r = ref(x[:, s:e], state=state_r, return_state=True)
            assert rel(logits_f, logits_r) < 1e-5
            for a, b in zip(state_f, state_r):
                assert rel(a.ssm, b.ssm) < 1e-5 and rel(a.conv, b.conv) < 1e-5


def test_packed_sequences_equal_separate_calls(lambda_tokens):
    fused, _ = pair()
    lengths = [30, 2, 61]  # one shorter than the conv width
    seqs = torch.split(lambda_tokens[:sum(lengths)], lengths)
    cu = torch.tensor([0, 30, 32, 93])
    packed = fused.hidden_states(torch.cat(seqs)[None], cu_seqlens=cu)  # (1, 93, d_model)
    separate = torch.cat([fused.hidden_states(s[None]) for s in seqs], 1)
    torch.testing.assert_close(packed, separate, rtol=1e-5, atol=1e-5)


def test_packed_sequences_need_the_fused_path(lambda_tokens):
    _, ref = pair()
    with pytest.raises(ValueError, match="fused"):
        ref.hidden_states(lambda_tokens[:10][None], cu_seqlens=torch.tensor([0, 4, 10]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_bf16_at_one_million_tokens_matches_the_reference(monkeypatch):
    """The 8 x 256 model at B=1, L=2^20 under bf16 autocast against the reference modules in fp32."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=256, n_layer=8, fused=True)
    fused = MambaLM(cfg).cuda()
    ref = copy.deepcopy(fused)
    ref.cfg = copy.deepcopy(cfg)
    ref.cfg.fused = False
    ref.cfg.checkpoint_blocks = True  # the fp32 reference's activations would not fit beside the fused model's
    x = torch.randint(1, 256, (1, 2**20), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        nll_f = fused.next_token_nll(x)
    nll_f.mean().backward()
    nll_r = ref.next_token_nll(x)  # fp32 throughout
    nll_r.mean().backward()
    assert rel(nll_f, nll_r) < 2e-2
    ref_grads = dict(ref.named_parameters())
    for name, p in fused.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        assert rel(p.grad, ref_grads[name].grad) < 5e-2, name
