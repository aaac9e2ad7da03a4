"""Exports in transformers: `MambaForCausalLM.from_pretrained` gives dnamamba's logits on real DNA (fp32, the
PyTorch path on CPU), `AutoTokenizer` gives byte ids, and directories that transformers writes load in dnamamba."""
from __future__ import annotations

import json
import os

import pytest
import torch

from dnamamba import alphabet
from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.errors import InputError
from dnamamba.model import MambaConfig, load_export, save_export
from dnamamba.model.hf_layout import HF_DEFAULTS
from export_cases import V1_EXPORT, perturbed_model
from support import FIXTURES, LAMBDA

transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")
tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is in the test extra")

TIGHT = {"rtol": 1e-5, "atol": 1e-5}  # fp32; measured differences are about 1e-7


@pytest.fixture(scope="module")
def lambda_dna() -> list[str]:
    """Two stretches of the bundled lambda phage genome, 300 bases each, one soft-masked as lowercase."""
    with FastaFile(demo_genome_path()) as fa:
        a, b = fa.fetch(LAMBDA, 5000, 5300).decode(), fa.fetch(LAMBDA, 40000, 40300).decode()
    return [a, b[:150] + b[150:].lower()]


@pytest.fixture(scope="module")
def chr20_with_n() -> str:
    """Human chr20 bases that run into an assembly gap (tests/fixtures/chr20_n_boundary.fa): N then ACGT."""
    with FastaFile(FIXTURES / "chr20_n_boundary.fa") as fa:
        return fa.fetch("20_58000_62000", 1800, 2100).decode()


def hf_model(path) -> "transformers.MambaForCausalLM":
    return transformers.MambaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("which", ["new", "version_1_resaved"])
def test_transformers_logits_equal_dnamamba_on_real_dna(tmp_path, lambda_dna, chr20_with_n, which):
    model = perturbed_model() if which == "new" else load_export(V1_EXPORT)
    export = save_export(model, tmp_path / "export")
    tokens = torch.stack([alphabet.encode(s) for s in [*lambda_dna, chr20_with_n]])  # (3, 300)
    hf = hf_model(export)
    with torch.no_grad():
        out = hf(tokens, output_hidden_states=True)
        ours = model(tokens)
    torch.testing.assert_close(out.logits, ours, **TIGHT)
    # hidden_states: each block's output, then the final normalised output, as dnamamba's layer=0..n-1, -1.
    n = model.cfg.n_layer
    assert len(out.hidden_states) == n + 1
    for i, h in enumerate(out.hidden_states):
        torch.testing.assert_close(h, model.hidden_states(tokens, layer=i if i < n else -1), **TIGHT)
    assert hf.config.dnamamba["model"] == model.cfg.to_dict()  # our own fields travel along


def test_auto_tokenizer_gives_byte_ids(tmp_path, lambda_dna, chr20_with_n):
    export = save_export(perturbed_model(), tmp_path / "export")
    tok = transformers.AutoTokenizer.from_pretrained(export)
    for text in ["ACGTN acgt", *lambda_dna, chr20_with_n, "RYKM-*\n", "ACGT\u00e9"]:
        ids = tok(text)["input_ids"]
        assert ids == list(text.encode()), text  # no BOS or EOS added
        assert tok.decode(ids) == text
    assert tok.pad_token_id == 0
    batch = tok(["ACGT", "ACGTNN"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[65, 67, 71, 84, 0, 0], list(b"ACGTNN")]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    # The tokenizers library reads tokenizer.json the same way, without transformers.
    raw = tokenizers.Tokenizer.from_file(os.path.join(export, "tokenizer.json"))
    assert raw.encode(lambda_dna[1]).ids == list(lambda_dna[1].encode()) and raw.get_vocab_size() == 256


def test_tokenizer_feeds_the_model_as_dnamamba_does(tmp_path, lambda_dna):
    """The README's example: tokenizer then model gives dnamamba's logits on the same bases."""
    model = perturbed_model()
    export = save_export(model, tmp_path / "export")
    tok, hf = transformers.AutoTokenizer.from_pretrained(export), hf_model(export)
    with torch.no_grad():
        logits = hf(**tok(lambda_dna[1], return_tensors="pt")).logits
    torch.testing.assert_close(logits, model(alphabet.encode(lambda_dna[1])[None]), **TIGHT)


def test_config_fields_and_defaults_are_transformers_own(tmp_path):
    """HF_DEFAULTS is the installed transformers' MambaConfig: the same fields with the same defaults."""
    fields = set(transformers.MambaConfig.__annotations__)
    assert set(HF_DEFAULTS) == fields
    default = transformers.MambaConfig()
    for name, value in HF_DEFAULTS.items():
        if name != "time_step_rank":  # "auto" is resolved when the config is built
            assert getattr(default, name) == value, name
    export = save_export(perturbed_model(), tmp_path / "export")
    loaded = transformers.MambaConfig.from_pretrained(export)
    written = json.loads(open(os.path.join(export, "config.json")).read())
    for name in fields:
        assert getattr(loaded, name) == written[name], name
    assert loaded.intermediate_size == written["intermediate_size"] == 64


def save_transformers_model(path, seed: int = 1, dtype=torch.float32, **config) -> "transformers.MambaForCausalLM":
    """A transformers MambaForCausalLM with noise on every parameter, saved by transformers itself."""
    torch.manual_seed(seed)
    cfg = transformers.MambaConfig(vocab_size=256, hidden_size=24, num_hidden_layers=3, state_size=4, **config)
    model = transformers.MambaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.to(dtype).save_pretrained(path)
    return model


@pytest.mark.parametrize("variant", [{}, {"use_conv_bias": False}, {"time_step_rank": 5}, {"dtype": torch.bfloat16}])
def test_plain_transformers_directory_loads(tmp_path, lambda_dna, variant):
    dtype = variant.pop("dtype", torch.float32)
    save_transformers_model(tmp_path / "hf", dtype=dtype, **variant)
    assert "dnamamba" not in json.loads((tmp_path / "hf" / "config.json").read_text())
    model = load_export(tmp_path / "hf")
    expected = MambaConfig(d_model=24, n_layer=3, d_state=4, dt_rank=variant.get("time_step_rank", 2))
    assert model.cfg == expected
    tokens = torch.stack([alphabet.encode(s) for s in lambda_dna])  # (2, 300)
    with torch.no_grad():
        reference = hf_model(tmp_path / "hf")(tokens).logits  # what transformers makes of the same files
    torch.testing.assert_close(model(tokens), reference, **TIGHT)


def test_plain_transformers_directory_that_cannot_be_represented(tmp_path):
    save_transformers_model(tmp_path / "hf", use_bias=True)
    with pytest.raises(InputError, match="config.json: field use_bias: true means in_proj and out_proj biases"):
        load_export(tmp_path / "hf")
