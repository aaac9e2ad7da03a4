"""transformers' Mamba layout: config.json fields, parameter names and a byte-level tokenizer.

A directory in this layout loads with `MambaForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`
and no remote code. Field names and defaults follow `MambaConfig` of transformers 5.24
(transformers/models/mamba/configuration_mamba.py), parameter names its `MambaForCausalLM`; transformers itself
is needed neither to write nor to read them.
"""
from __future__ import annotations

import re

from .config import MambaConfig

MODEL_TYPE = "mamba"
ARCHITECTURE = "MambaForCausalLM"
BYTE_VOCAB = 256  # one token per byte value

# transformers' MambaConfig fields and their defaults. A plain transformers config.json may leave any of them
# out, and transformers then takes these values, so reading one does the same.
HF_DEFAULTS = {
    "vocab_size": 50280,
    "hidden_size": 768,
    "state_size": 16,
    "num_hidden_layers": 32,
    "layer_norm_epsilon": 1e-5,
    "pad_token_id": 0,
    "bos_token_id": 0,
    "eos_token_id": 0,
    "expand": 2,
    "conv_kernel": 4,
    "use_bias": False,
    "use_conv_bias": True,
    "hidden_act": "silu",
    "initializer_range": 0.1,
    "residual_in_fp32": True,
    "time_step_rank": "auto",
    "time_step_scale": 1.0,
    "time_step_min": 0.001,
    "time_step_max": 0.1,
    "time_step_init_scheme": "random",
    "time_step_floor": 1e-4,
    "rescale_prenorm_residual": False,
    "use_cache": True,
    "use_mambapy": False,
    "use_associative_scan": True,
    "tie_word_embeddings": True,
}

# (transformers field, MambaConfig field) for the fields both configs have; hidden_size comes first because
# time_step_rank "auto" is computed from it.
SHARED_FIELDS = (
    ("hidden_size", "d_model"),
    ("num_hidden_layers", "n_layer"),
    ("state_size", "d_state"),
    ("conv_kernel", "d_conv"),
    ("expand", "expand"),
    ("time_step_rank", "dt_rank"),
    ("vocab_size", "vocab_size"),
    ("layer_norm_epsilon", "norm_eps"),
    ("time_step_min", "dt_min"),
    ("time_step_max", "dt_max"),
    ("time_step_floor", "dt_init_floor"),
)


def hf_config(cfg: MambaConfig) -> dict:
    """config.json fields for `cfg` in transformers' layout: every MambaConfig field, ours where they overlap."""
    fields = {**HF_DEFAULTS, **{hf: getattr(cfg, ours) for hf, ours in SHARED_FIELDS}}
    # rescale_prenorm_residual stays false although MambaLM's init does rescale out_proj: transformers 5.24 applies
    # the option in from_pretrained too, after loading, and so divides the trained out_proj by sqrt(n_layer).
    return {"architectures": [ARCHITECTURE], "model_type": MODEL_TYPE, **fields,
            "intermediate_size": cfg.d_inner, "dtype": "float32"}


# Parameter names: MambaLM's on the left, MambaForCausalLM's on the right. The LM head is tied to the
# embeddings in both, so neither stores it.
_TOP_NAMES = {"embedding.weight": "backbone.embeddings.weight", "norm_f.weight": "backbone.norm_f.weight"}
_LAYER_NAMES = {
    "norm.weight": "norm.weight",
    "mixer.in_proj.weight": "mixer.in_proj.weight",
    "mixer.conv_weight": "mixer.conv1d.weight",  # (d_inner, 1, d_conv) in both
    "mixer.conv_bias": "mixer.conv1d.bias",
    "mixer.x_proj.weight": "mixer.x_proj.weight",
    "mixer.dt_proj.weight": "mixer.dt_proj.weight",
    "mixer.dt_proj.bias": "mixer.dt_proj.bias",
    "mixer.A_log": "mixer.A_log",
    "mixer.D": "mixer.D",
    "mixer.out_proj.weight": "mixer.out_proj.weight",
}
_FROM_HF_TOP = {v: k for k, v in _TOP_NAMES.items()}
# Older transformers checkpoints spell it "embedding"; MambaModel's load hook renames it the same way.
_FROM_HF_TOP["backbone.embedding.weight"] = "embedding.weight"
_FROM_HF_LAYER = {v: k for k, v in _LAYER_NAMES.items()}
HF_LM_HEAD = "lm_head.weight"


def hf_name(name: str) -> str:
    """transformers' name for the MambaLM parameter `name`; KeyError for a name the layout has no place for."""
    if name in _TOP_NAMES:
        return _TOP_NAMES[name]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", name)
    if m is None or m.group(2) not in _LAYER_NAMES:
        raise KeyError(f"no transformers name for parameter {name!r}")
    return f"backbone.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"


def dnamamba_name(name: str) -> str | None:
    """MambaLM's name for the transformers tensor `name`, or None when MambaLM has no such parameter."""
    if name in _FROM_HF_TOP:
        return _FROM_HF_TOP[name]
    m = re.fullmatch(r"backbone\.layers\.(\d+)\.(.+)", name)
    if m is None or m.group(2) not in _FROM_HF_LAYER:
        return None
    return f"layers.{m.group(1)}.{_FROM_HF_LAYER[m.group(2)]}"


def byte_chars() -> list[str]:
    """The character that stands for each byte in byte-level tokenizers (entry b is byte b's).

    GPT-2's bytes_to_unicode (openai/gpt-2, src/encoder.py), which the `tokenizers` ByteLevel pre-tokenizer
    uses: printable Latin-1 bytes stand for themselves, the other 68 for code points from 256 on in byte order.
    """
    printable = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}  # "!".."~", "¡".."¬", "®".."ÿ"
    chars, extra = {}, 0
    for b in range(BYTE_VOCAB):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(BYTE_VOCAB + extra)
            extra += 1
    return [chars[b] for b in range(BYTE_VOCAB)]


def tokenizer_files() -> dict[str, dict]:
    """tokenizer.json (the `tokenizers` format), tokenizer_config.json and special_tokens_map.json for a tokenizer
    whose ids are the UTF-8 bytes of the text: "ACGTN acgt" -> [65, 67, 71, 84, 78, 32, 97, 99, 103, 116].

    The text goes to bytes (ByteLevel pre-tokenizer without its regex split or prefix space), and a BPE model
    with the 256 byte characters and no merges gives one token per byte. Nothing is added around the ids.
    Byte 0 is the padding token.
    """
    chars = byte_chars()
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": {c: i for i, c in enumerate(chars)}, "merges": [],
        },
    }
    special = {"pad_token": chars[0]}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special, "clean_up_tokenization_spaces": False}
    return {"tokenizer.json": tokenizer, "tokenizer_config.json": config, "special_tokens_map.json": special}
