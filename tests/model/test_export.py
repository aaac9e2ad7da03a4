"""The export directory: transformers' layout on disk, version-1 exports still load, and every bad config.json or
weights file is one InputError naming the file and the field."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dnamamba import alphabet
from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.errors import InputError
from dnamamba.model import MambaConfig, load_export, save_export
from dnamamba.model.hf_layout import HF_DEFAULTS, byte_chars, dnamamba_name, hf_name
from export_cases import V1_EXPORT, V1_LOGITS, perturbed_model
from support import LAMBDA


@pytest.fixture(scope="module")
def lambda_tokens() -> torch.Tensor:
    with FastaFile(demo_genome_path()) as fa:
        return alphabet.encode(fa.fetch(LAMBDA, 30000, 30400)).view(2, 200)  # (B, L) real phage DNA


@pytest.fixture
def export(tmp_path) -> str:
    return save_export(perturbed_model(), tmp_path / "export", extra={"trained_on": "lambda_phage.fa.gz"})


def edit_config(export: str, change) -> str:
    path = os.path.join(export, "config.json")
    with open(path) as f:
        meta = json.load(f)
    change(meta)
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


def test_export_is_in_transformers_layout(export):
    assert sorted(os.listdir(export)) == ["config.json", "model.safetensors", "special_tokens_map.json",
                                          "tokenizer.json", "tokenizer_config.json"]
    meta = json.loads(open(os.path.join(export, "config.json")).read())
    assert meta["model_type"] == "mamba" and meta["architectures"] == ["MambaForCausalLM"]
    assert set(HF_DEFAULTS) <= set(meta)
    assert (meta["hidden_size"], meta["num_hidden_layers"], meta["state_size"], meta["intermediate_size"],
            meta["time_step_rank"], meta["vocab_size"]) == (32, 2, 8, 64, 2, 256)
    own = meta["dnamamba"]
    assert own["format"] == "dnamamba-export" and own["version"] == 2 and own["trained_on"] == "lambda_phage.fa.gz"
    assert MambaConfig.from_dict(own["model"]) == MambaConfig(d_model=32, n_layer=2, d_state=8)
    with safe_open(os.path.join(export, "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}
        names = set(f.keys())
    layer = {f"backbone.layers.{i}.{n}" for i in range(2) for n in (
        "norm.weight", "mixer.in_proj.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.x_proj.weight",
        "mixer.dt_proj.weight", "mixer.dt_proj.bias", "mixer.A_log", "mixer.D", "mixer.out_proj.weight")}
    assert names == {"backbone.embeddings.weight", "backbone.norm_f.weight"} | layer


def test_round_trip_gives_identical_logits(export, lambda_tokens):
    model = perturbed_model()
    loaded = load_export(export)
    for (name, p), (name2, q) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name
    torch.testing.assert_close(loaded(lambda_tokens), model(lambda_tokens), rtol=0, atol=0)


def test_parameter_names_map_both_ways():
    for name in perturbed_model().state_dict():
        assert dnamamba_name(hf_name(name)) == name
    assert dnamamba_name("backbone.embedding.weight") == "embedding.weight"  # older transformers spelling
    assert dnamamba_name("lm_head.weight") is None
    with pytest.raises(KeyError):
        hf_name("layers.0.mixer.something_new")


def test_byte_characters_are_distinct_and_printable_ones_stand_for_themselves():
    chars = byte_chars()
    assert len(set(chars)) == 256
    assert all(chars[b] == chr(b) for b in b"ACGTNacgtn!~")
    assert chars[0] == "\u0100" and chars[ord(" ")] == "\u0120"


def test_version_1_export_loads_with_identical_logits(tmp_path):
    """The fixture was written by the version-1 save_export; its logits were computed by the version-1 loader."""
    ref = load_file(V1_LOGITS)
    model = load_export(V1_EXPORT, scan_backend="naive")
    assert model.cfg == MambaConfig(d_model=16, n_layer=2, d_state=4, scan_backend="naive")
    assert torch.equal(model(ref["tokens"]), ref["logits"])
    # Saved again it is in the new layout, with the same weights.
    resaved = load_export(save_export(model, tmp_path / "v2"), scan_backend="naive")
    assert json.loads((tmp_path / "v2" / "config.json").read_text())["model_type"] == "mamba"
    assert torch.equal(resaved(ref["tokens"]), ref["logits"])
    # The chunked CPU scan, which `auto` picks, agrees to rounding.
    torch.testing.assert_close(load_export(V1_EXPORT)(ref["tokens"]), ref["logits"], rtol=1e-5, atol=1e-5)


def assert_one_line(e: pytest.ExceptionInfo, path: str, *words: str) -> None:
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    for w in words:
        assert w in message, message


BAD_CONFIGS = {
    "string_width": (lambda m: m["dnamamba"]["model"].update(d_model="32"), ["dnamamba.model.d_model",
                                                                            "expected an integer", '"32"']),
    "negative_layers": (lambda m: m.update(num_hidden_layers=-2), ["num_hidden_layers", "must be positive"]),
    "negative_layers_ours": (lambda m: m["dnamamba"]["model"].update(n_layer=-2), ["dnamamba.model.n_layer",
                                                                                  "must be positive"]),
    "boolean_width": (lambda m: m.update(hidden_size=True), ["hidden_size", "expected an integer"]),
    "float_state": (lambda m: m.update(state_size=8.5), ["state_size", "expected an integer"]),
    "nan_eps": (lambda m: m.update(layer_norm_epsilon=float("nan")), ["layer_norm_epsilon", "finite number"]),
    "negative_eps": (lambda m: m["dnamamba"]["model"].update(norm_eps=-1e-5), ["norm_eps", "must not be negative"]),
    "bpe_vocab": (lambda m: m.update(vocab_size=50280), ["vocab_size", "must be 256", "50280"]),
    "bad_backend": (lambda m: m["dnamamba"]["model"].update(scan_backend="cuda"), ["scan_backend", '"cuda"']),
    "unknown_field": (lambda m: m["dnamamba"]["model"].update(d_modle=32), ["unknown MambaConfig field", "d_modle"]),
    "disagreement": (lambda m: m["dnamamba"]["model"].update(d_model=64), ["hidden_size (32) disagrees",
                                                                          "dnamamba.model.d_model (64)"]),
    "intermediate_size": (lambda m: m.update(intermediate_size=100), ["intermediate_size", "100", "64"]),
    "use_bias": (lambda m: m.update(use_bias=True), ["use_bias", "biases", "cannot be loaded"]),
    "untied_head": (lambda m: m.update(tie_word_embeddings=False), ["tie_word_embeddings", "LM head"]),
    "activation": (lambda m: m.update(hidden_act="gelu"), ["hidden_act", '"gelu"']),
    "mamba2": (lambda m: m.update(model_type="mamba2"), ["model_type", "'mamba2' is not supported"]),
    "model_not_object": (lambda m: m["dnamamba"].update(model=[32, 2]), ["dnamamba.model", "an array"]),
    "newer_version": (lambda m: m["dnamamba"].update(version=3), ["dnamamba", "version 3 is not known"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_one_line_naming_file_and_field(export, case):
    change, words = BAD_CONFIGS[case]
    path = edit_config(export, change)
    with pytest.raises(InputError) as e:
        load_export(export)
    assert_one_line(e, path, *words)


@pytest.mark.parametrize("text, words", [
    ('{"model_type": "mamba",', ["not valid JSON", "line 1"]),
    ("[1, 2]", ["expected a JSON object", "an array"]),
    ('{"hidden_size": 32}', ["neither a transformers config", "no model_type"]),
    (b"\xff\xfe{}", ["not UTF-8"]),
])
def test_unreadable_config_is_one_line(export, text, words):
    path = os.path.join(export, "config.json")
    with open(path, "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as e:
        load_export(export)
    assert_one_line(e, path, *words)


def test_version_1_config_is_checked_too(tmp_path):
    shutil.copytree(V1_EXPORT, tmp_path / "v1")
    path = edit_config(str(tmp_path / "v1"), lambda m: m["model"].update(d_state=0))
    with pytest.raises(InputError) as e:
        load_export(tmp_path / "v1")
    assert_one_line(e, path, "field model.d_state", "must be positive")


def rewrite_weights(export: str, change) -> str:
    path = os.path.join(export, "model.safetensors")
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("change, words", [
    (lambda t: t.pop("backbone.layers.1.mixer.A_log"), ["missing tensor(s) backbone.layers.1.mixer.A_log"]),
    (lambda t: t.update({"backbone.layers.2.norm.weight": torch.ones(32)}),
     ["unexpected tensor(s) backbone.layers.2.norm.weight"]),
    (lambda t: t.update({"backbone.layers.0.mixer.D": torch.ones(65)}),
     ["backbone.layers.0.mixer.D has shape (65,)", "(64,)"]),
    (lambda t: t.update({"backbone.norm_f.weight": torch.ones(32, dtype=torch.int32)}), ["torch.int32"]),
])
def test_weights_that_do_not_match_the_config(export, change, words):
    path = rewrite_weights(export, change)
    with pytest.raises(InputError) as e:
        load_export(export)
    assert_one_line(e, path, *words)


def test_truncated_weights_are_one_line(export):
    path = os.path.join(export, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(InputError) as e:
        load_export(export)
    assert_one_line(e, path, "not a readable safetensors file")


@contextlib.contextmanager
def as_unprivileged_user():
    """Run the block with the effective uid of `nobody` where tests run as root (root reads any file)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.mark.parametrize("name, words", [("model.safetensors", ["cannot read the weights: Permission denied"]),
                                         ("config.json", ["cannot read the export config: Permission denied"])])
def test_unreadable_file_says_permission_denied(name, words):
    load_export(V1_EXPORT)  # imports done before the uid changes
    # Under a folder that `nobody` may enter (pytest's tmp folders are private to root).
    folder = tempfile.mkdtemp(prefix="dnamamba-perm-")
    try:
        os.chmod(folder, 0o755)
        export = save_export(perturbed_model(), os.path.join(folder, "export"))
        os.chmod(export, 0o755)
        for f in os.listdir(export):
            os.chmod(os.path.join(export, f), 0o644)
        os.chmod(os.path.join(export, name), 0)
        with as_unprivileged_user(), pytest.raises(InputError) as e:
            load_export(export)
        assert_one_line(e, os.path.join(export, name), *words)
        assert "No such file" not in str(e.value)
    finally:
        shutil.rmtree(folder)


def test_tokenizer_with_other_ids_is_refused(export):
    path = os.path.join(export, "tokenizer.json")
    with open(path, "w") as f:
        json.dump({"model": {"type": "WordLevel", "vocab": {"A": 7, "C": 8, "G": 9, "T": 10}}}, f)
    with pytest.raises(InputError) as e:
        load_export(export)
    assert_one_line(e, path, "maps 'A' to id 7", "byte ids")
