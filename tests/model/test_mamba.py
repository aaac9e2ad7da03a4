import json

import pytest
import torch

from dnamamba import alphabet
from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.errors import InputError
from dnamamba.model import MambaConfig, MambaLM, load_export, save_export


@pytest.fixture(scope="module")
def lambda_tokens():
    with FastaFile(demo_genome_path()) as fa:
        name = fa.names[0]
        return alphabet.encode(fa.fetch(name, 1000, 1000 + 2 * 301))  # (602,) real phage DNA


def tiny(**kw):
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=24, n_layer=2, d_state=4, **kw)
    return MambaLM(cfg).double().eval()


def test_streaming_in_pieces_equals_one_call(lambda_tokens):
    model = tiny()
    x = lambda_tokens.view(2, 301)  # (B, L)
    full = model(x)
    pieces, state = [], None
    for s, e in [(0, 1), (1, 40), (40, 41), (41, 200), (200, 301)]:  # cuts through scan chunks of 32
        logits, state = model(x[:, s:e], state=state, return_state=True)
        pieces.append(logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend", ["torch", "naive"])
def test_backends_agree_with_each_other(lambda_tokens, backend):
    model = tiny()
    x = lambda_tokens[:150].view(2, 75)
    ref = model(x)
    model.cfg.scan_backend = backend
    torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-10)


def test_gradients_match_between_chunked_and_naive_scan(lambda_tokens):
    x = lambda_tokens[:100].view(2, 50)
    grads = {}
    for backend in ("torch", "naive"):
        model = tiny(scan_backend=backend)
        model.train()
        model(x).logsumexp(-1).sum().backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters()}
    for name, g in grads["naive"].items():
        torch.testing.assert_close(grads["torch"][name], g, rtol=1e-9, atol=1e-11, msg=name)


def test_hidden_states_of_every_layer(lambda_tokens):
    model = tiny()
    x = lambda_tokens[:64].view(1, 64)
    last_block = model.hidden_states(x, layer=1)
    final = model.hidden_states(x, layer=-1)
    assert last_block.shape == final.shape == (1, 64, 24)
    torch.testing.assert_close(model.norm_f(last_block), final)
    torch.testing.assert_close(model.hidden_states(x, layer=-3), model.hidden_states(x, layer=0))
    with pytest.raises(ValueError):
        model.hidden_states(x, layer=5)


def test_checkpointed_blocks_give_the_same_gradients(lambda_tokens):
    x = lambda_tokens[:128].view(2, 64)
    out = []
    for ckpt in (False, True):
        model = tiny(checkpoint_blocks=ckpt)
        model.train()
        model(x).logsumexp(-1).sum().backward()
        out.append(model.layers[0].mixer.in_proj.weight.grad)
    torch.testing.assert_close(out[0], out[1])


def test_export_round_trip(tmp_path, lambda_tokens):
    model = tiny().float()
    save_export(model, tmp_path / "export", extra={"note": "x"})
    meta = json.loads((tmp_path / "export" / "config.json").read_text())
    assert meta["dnamamba"]["model"]["d_model"] == 24 and meta["dnamamba"]["note"] == "x"
    loaded = load_export(tmp_path / "export")
    x = lambda_tokens[:50].view(1, 50)
    torch.testing.assert_close(loaded(x), model(x))


def test_export_without_config_is_a_clear_error(tmp_path):
    save_export(tiny().float(), tmp_path / "export")
    (tmp_path / "export" / "config.json").unlink()
    with pytest.raises(InputError, match="config.json is missing") as e:
        load_export(tmp_path / "export")
    assert str(tmp_path / "export") in str(e.value)
