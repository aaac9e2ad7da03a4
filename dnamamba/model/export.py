"""The export directory: weights, config and tokenizer, everything embed and scoring need.

An export is in transformers' Mamba layout (see hf_layout.py), so `MambaForCausalLM.from_pretrained(export)`
and `AutoTokenizer.from_pretrained(export)` load it with no remote code:

    model.safetensors       transformers' parameter names, fp32, the LM head tied to the embeddings
    config.json             transformers' MambaConfig fields, plus "dnamamba": {"format", "version", "model":
                            MambaConfig as a dict, and what the caller adds, such as "trained_on"}
    tokenizer.json, tokenizer_config.json, special_tokens_map.json
                            a tokenizer whose ids are the bytes of the text

`load_export` reads these, plain transformers Mamba directories (no "dnamamba" key: the MambaConfig comes from
transformers' fields) and exports of the first layout (version 1: config.json holds "format", "version" and
the MambaConfig under "model"; the safetensors use MambaLM's own parameter names). Every config field is
checked for type and range before a model is built, so a bad file is one InputError naming the file and field.
"""
from __future__ import annotations

import json
import math
import os
import typing

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_path
from .config import SCAN_BACKENDS, MambaConfig
from .hf_layout import (BYTE_VOCAB, HF_DEFAULTS, HF_LM_HEAD, MODEL_TYPE, SHARED_FIELDS, dnamamba_name, hf_config,
                        hf_name, tokenizer_files)
from .mamba import MambaLM

EXPORT_FORMAT = "dnamamba-export"
EXPORT_VERSION = 2  # 1: MambaLM's parameter names, MambaConfig under "model"; 2: transformers' layout
DNAMAMBA_KEY = "dnamamba"
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TOKENIZER = "tokenizer.json"


def save_export(model: MambaLM, directory: str | os.PathLike, extra: dict | None = None) -> str:
    """Write weights, tokenizer and config into `directory` (created); each file lands atomically.

    `extra` (such as {"trained_on": path}) is kept in config.json under "dnamamba". config.json is written
    last, so an interrupted save never leaves a directory that passes for an export.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    tensors = {hf_name(k): v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(os.path.join(directory, WEIGHTS)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})  # transformers refuses safetensors without it
    for name, content in tokenizer_files().items():
        _write_json(os.path.join(directory, name), content)
    own = {**(extra or {}), "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": model.cfg.to_dict()}
    _write_json(os.path.join(directory, CONFIG), {**hf_config(model.cfg), DNAMAMBA_KEY: own})
    return directory


def _write_json(path: str, content: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
            f.write("\n")


def load_export(directory: str | os.PathLike, device: str | torch.device = "cpu",
                scan_backend: str | None = None) -> MambaLM:
    """Load an export (or a transformers Mamba directory) into an eval-mode MambaLM.

    A missing, unreadable or inconsistent file, or a model MambaLM cannot represent, raises InputError.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise InputError(directory, "export directory not found")
    cfg_path = os.path.join(directory, CONFIG)
    weights_path = os.path.join(directory, WEIGHTS)
    if not os.path.isfile(cfg_path):
        raise InputError(directory, f"not an export directory: {CONFIG} is missing")
    if not os.path.isfile(weights_path):
        raise InputError(directory, f"not an export directory: {WEIGHTS} is missing (sharded safetensors "
                                    "and pytorch_model.bin are not read)")
    meta = _read_config(cfg_path)
    if "model_type" in meta:
        (cfg, conv_bias), hf_names = _config_from_hf(cfg_path, meta), True
    elif meta.get("format") == EXPORT_FORMAT:
        cfg, hf_names, conv_bias = _config_from_v1(cfg_path, meta), False, True
    else:
        raise InputError(cfg_path, f"neither a transformers config (no model_type) nor a {EXPORT_FORMAT} config")
    _check_tokenizer(os.path.join(directory, TOKENIZER))
    if scan_backend is not None:
        cfg.scan_backend = scan_backend
    # Built on the CPU and filled in place: a model built under the meta device would pull in torch._dynamo
    # for its initialisers, seconds of start-up for every command that loads an export.
    model = MambaLM(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(_state_dict(weights_path, _read_weights(weights_path), expected, hf_names, conv_bias))
    return model.to(device).eval()


def _read_config(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except OSError as e:
        raise InputError(path, f"cannot read the export config: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a JSON config: the file is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(meta, dict):
        raise InputError(path, f"expected a JSON object, got {_json_kind(meta)}")
    return meta


def _config_from_v1(path: str, meta: dict) -> MambaConfig:
    if meta.get("version") != 1:
        raise InputError(path, f"field version: {EXPORT_FORMAT} version {meta.get('version')!r} is not known "
                               f"(this dnamamba reads 1 and {EXPORT_VERSION})")
    return _mamba_config(path, meta.get("model"), "model")


def _config_from_hf(path: str, meta: dict) -> tuple[MambaConfig, bool]:
    """MambaConfig from transformers' fields (checked against the "dnamamba" key when there is one), and whether
    the weights hold conv biases."""
    if meta["model_type"] != MODEL_TYPE:
        raise InputError(path, f"field model_type: {meta['model_type']!r} is not supported; dnamamba reads "
                               f"Mamba-1 models (model_type {MODEL_TYPE!r})")
    hints = typing.get_type_hints(MambaConfig)
    derived = {}
    for hf, ours in SHARED_FIELDS:
        value = meta.get(hf, HF_DEFAULTS[hf])
        if hf == "time_step_rank" and value == "auto":
            value = math.ceil(derived["d_model"] / 16)  # transformers' "auto", as MambaConfig's dt_rank=None
        _check_value(path, hf, value, hints[ours], ours)
        derived[ours] = value
    for hf, required, why in (
        ("use_bias", False, "in_proj and out_proj biases, which dnamamba's mixer does not have"),
        ("tie_word_embeddings", True, "an LM head of its own, where dnamamba ties the head to the embeddings"),
        ("hidden_act", "silu", "an activation other than silu"),
    ):
        value = meta.get(hf, HF_DEFAULTS[hf])
        _check_value(path, hf, value, type(required))
        if value != required:
            raise InputError(path, f"field {hf}: {json.dumps(value)} means {why}; such a model cannot be loaded")
    conv_bias = meta.get("use_conv_bias", HF_DEFAULTS["use_conv_bias"])
    _check_value(path, "use_conv_bias", conv_bias, bool)
    if "intermediate_size" in meta and meta["intermediate_size"] != derived["expand"] * derived["d_model"]:
        raise InputError(path, f"field intermediate_size: {json.dumps(meta['intermediate_size'])} is not expand "
                               f"x hidden_size = {derived['expand'] * derived['d_model']}")
    if DNAMAMBA_KEY not in meta:
        return _build(path, derived, ""), conv_bias
    own = meta[DNAMAMBA_KEY]
    if not isinstance(own, dict):
        raise InputError(path, f"field {DNAMAMBA_KEY}: expected a JSON object, got {_json_kind(own)}")
    if own.get("format") != EXPORT_FORMAT or own.get("version") != EXPORT_VERSION:
        raise InputError(path, f"field {DNAMAMBA_KEY}: format {own.get('format')!r} version {own.get('version')!r}"
                               f" is not known (this dnamamba writes {EXPORT_FORMAT!r} version {EXPORT_VERSION})")
    cfg = _mamba_config(path, own.get("model"), f"{DNAMAMBA_KEY}.model")
    for hf, ours in SHARED_FIELDS:
        if getattr(cfg, ours) != derived[ours]:
            raise InputError(path, f"field {hf} ({json.dumps(derived[ours])}) disagrees with "
                                   f"{DNAMAMBA_KEY}.model.{ours} ({json.dumps(getattr(cfg, ours))})")
    return cfg, conv_bias


def _mamba_config(path: str, data, where: str) -> MambaConfig:
    """Our MambaConfig from the JSON object at `where` in config.json, each field checked."""
    if not isinstance(data, dict):
        raise InputError(path, f"field {where}: expected a JSON object of MambaConfig fields, got {_json_kind(data)}")
    hints = typing.get_type_hints(MambaConfig)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise InputError(path, f"field {where}: unknown MambaConfig field(s) {', '.join(unknown)}")
    for name, value in data.items():
        _check_value(path, f"{where}.{name}", value, hints[name], name)
    return _build(path, data, where)


def _build(path: str, fields: dict, where: str) -> MambaConfig:
    try:
        return MambaConfig(**fields)
    except (TypeError, ValueError) as e:
        raise InputError(path, f"field {where or 'model'}: {e}") from None


# Ranges of MambaConfig fields; the types come from its annotations.
_POSITIVE = {"d_model", "n_layer", "d_state", "d_conv", "expand", "dt_rank", "scan_chunk_size",
             "dt_min", "dt_max", "dt_init_floor"}
_NON_NEGATIVE = {"norm_eps"}


def _check_value(path: str, field: str, value, hint, rule: str | None = None) -> None:
    """Raise InputError unless `value` is of type `hint` (int, float, bool, str, or a union) and within the range
    of MambaConfig field `rule`."""
    allowed = typing.get_args(hint) or (hint,)
    if not any(_is_a(value, t) for t in allowed):
        wanted = " or ".join(_TYPE_WORDS[t] for t in allowed)
        raise InputError(path, f"field {field}: expected {wanted}, got {json.dumps(value)} ({_json_kind(value)})")
    if value is None or rule is None:
        return
    if rule in _POSITIVE and not value > 0:
        raise InputError(path, f"field {field}: must be positive, got {json.dumps(value)}")
    if rule in _NON_NEGATIVE and not value >= 0:
        raise InputError(path, f"field {field}: must not be negative, got {json.dumps(value)}")
    if rule == "vocab_size" and value != BYTE_VOCAB:
        raise InputError(path, f"field {field}: must be {BYTE_VOCAB} (dnamamba's tokens are bytes), "
                               f"got {json.dumps(value)}")
    if rule == "scan_backend" and value not in SCAN_BACKENDS:
        raise InputError(path, f"field {field}: {json.dumps(value)} is not one of {', '.join(SCAN_BACKENDS)}")


def _is_a(value, t) -> bool:
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:  # JSON writes 1.0 as 1 after some tools; NaN and Infinity are not numbers here
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if t is type(None):
        return value is None
    return isinstance(value, t)


_TYPE_WORDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
               type(None): "null"}


def _json_kind(value) -> str:
    for t, word in ((bool, "a boolean"), (str, "a string"), (int, "an integer"), (float, "a number"),
                    (dict, "an object"), (list, "an array"), (type(None), "null")):
        if isinstance(value, t):
            return word
    return type(value).__name__


def _check_tokenizer(path: str) -> None:
    """A tokenizer.json that gives bases ids other than their bytes (a k-mer or character tokenizer) means the
    model was trained on other ids; dnamamba feeds bytes, so it refuses such a model."""
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f).get("model", {}).get("vocab")
    except (OSError, ValueError, AttributeError):
        return  # no tokenizer or not one we can read: dnamamba does not use it
    if not isinstance(vocab, dict):
        return
    for base in "ACGTNacgtn":
        if base in vocab and vocab[base] != ord(base):
            raise InputError(path, f"the tokenizer maps {base!r} to id {vocab[base]}, not to its byte "
                                   f"{ord(base)}; dnamamba reads DNA as byte ids")


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    try:
        # safetensors reports every failure to open as "No such file or directory"; open() says what it was.
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InputError(path, f"cannot read the weights: {e.strerror or e}") from None
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(path, f"not a readable safetensors file ({str(e).splitlines()[0]})") from None


def _state_dict(path: str, tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], hf_names: bool,
                conv_bias: bool) -> dict[str, torch.Tensor]:
    """MambaLM's state dict from the file's tensors, after checking names, shapes and dtypes against `expected`
    (the shapes of a MambaLM of the export's config).

    Problems are reported with the file's own names.
    """
    spelt = hf_name if hf_names else (lambda name: name)
    state, unexpected = {}, []
    for key, tensor in tensors.items():
        if hf_names and key == HF_LM_HEAD:
            continue  # tied: transformers too takes the head from the embeddings
        ours = dnamamba_name(key) if hf_names else key
        if ours not in expected or (not conv_bias and ours.endswith("mixer.conv_bias")):
            unexpected.append(key)
            continue
        if not tensor.is_floating_point():
            raise InputError(path, f"tensor {key} is {tensor.dtype}, not floating point")
        if tuple(tensor.shape) != expected[ours]:
            raise InputError(path, f"tensor {key} has shape {tuple(tensor.shape)} where {CONFIG} gives "
                                   f"{expected[ours]}")
        state[ours] = tensor.float()
    if not conv_bias:  # use_conv_bias false: a conv without bias, which is a zero bias
        for name, shape in expected.items():
            if name.endswith("mixer.conv_bias"):
                state[name] = torch.zeros(shape)
    missing = [spelt(k) for k in expected if k not in state]
    if missing or unexpected:
        parts = [f"{label} tensor(s) {_some(names)}" for label, names in (("missing", missing),
                                                                          ("unexpected", unexpected)) if names]
        raise InputError(path, f"weights do not match {CONFIG}: {'; '.join(parts)}")
    return state


def _some(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
