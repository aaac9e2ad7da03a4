"""A classifier on a pretrained backbone: pooled embeddings (and, for variants, the zero-shot score)
into a small MLP head; and its export, a model export with the head beside it.

The inputs are tensors only; which positions are pooled and which are scored is decided by the caller
(dnamamba/inference/classify.py builds the batches) and comes in as masks:

    variant: tokens (2B, L) = B REF windows then their B ALT windows; pool (2B, L); scored (2B, L)
             -> head([e_ref, e_alt, e_alt - e_ref, llr]) -> logits (B, C)
    sequence: tokens (B, L); pool (B, L) -> head(e) -> logits (B, C)

`llr` is the zero-shot score of score-variants: the sum of log P(token_i | tokens_<i) over the `scored`
positions of the ALT window minus the same over the REF window, from the same forward pass that gives
the embeddings, so with a fine-tuned backbone it follows the backbone.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..io import atomic_path
from .export import CONFIG, DNAMAMBA_KEY, load_export, save_export
from .mamba import MambaLM

KINDS = ("variant", "sequence")
POOLINGS = ("mean", "site")
HEAD_WEIGHTS = "head.safetensors"


@dataclass
class ClassifierConfig:
    kind: str  # variant | sequence
    classes: list[str] = field(default_factory=list)
    window: int = 256  # variant: bases of context as in score-variants; sequence: informational
    pooling: str = "mean"  # mean: the whole window; site (variant): the allele and `site_span` bases after it
    site_span: int = 3
    hidden: int = 64  # head width; 0 is a linear head
    dropout: float = 0.1
    use_score: bool = True  # variant: the zero-shot log-likelihood ratio is a head input

    def __post_init__(self):
        self.classes = [str(c) for c in self.classes]
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {', '.join(KINDS)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling={self.pooling!r} is not one of {', '.join(POOLINGS)}")


class ClassifierHead(nn.Module):
    def __init__(self, d_in: int, n_classes: int, hidden: int, dropout: float):
        super().__init__()
        if hidden > 0:
            self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(dropout),
                                     nn.Linear(hidden, n_classes))
        else:
            self.net = nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, C)


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """h (B, L, D), mask (B, L) -> (B, D): the mean of h over the masked positions."""
    m = mask.to(h.dtype)[..., None]  # (B, L, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


def scored_log_likelihood(logits: torch.Tensor, tokens: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Sum of log P(tokens_i | tokens_<i) over positions i where scored[:, i]; logits (B, L, V) -> (B,).

    scored[:, 0] is ignored: the first token has no prediction.
    """
    logits = logits[:, :-1]
    logp = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (B, L-1, V)
    target = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, L-1)
    return (target.double() * scored[:, 1:]).sum(-1)


class Classifier(nn.Module):
    """Backbone (a MambaLM) + head; `backbone_trainable=False` runs the backbone without gradients."""

    def __init__(self, backbone: MambaLM, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone
        d = backbone.cfg.d_model
        d_in = d if cfg.kind == "sequence" else 3 * d + int(cfg.use_score)
        self.head = ClassifierHead(d_in, len(cfg.classes), cfg.hidden, cfg.dropout)
        self.backbone_trainable = True

    def _hidden(self, tokens: torch.Tensor, logits: bool):
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.backbone_trainable):
            h = self.backbone.hidden_states(tokens, -1)  # (R, L, D)
            out = F.linear(h, self.backbone.embedding.weight.to(h.dtype)) if logits else None  # tied head
        return h, out

    def variant_logits(self, tokens: torch.Tensor, pool: torch.Tensor, scored: torch.Tensor):
        """tokens, pool, scored (2B, L): REF rows then ALT rows -> (class logits (B, C), llr (B,))."""
        B = tokens.shape[0] // 2
        h, logits = self._hidden(tokens, self.cfg.use_score)
        emb = masked_mean(h, pool).float()  # (2B, D)
        e_ref, e_alt = emb[:B], emb[B:]
        parts = [e_ref, e_alt, e_alt - e_ref]
        llr = torch.zeros(B, dtype=torch.float64, device=tokens.device)
        if self.cfg.use_score:
            ll = scored_log_likelihood(logits, tokens, scored)  # (2B,)
            llr = ll[B:] - ll[:B]
            parts.append(llr.float()[:, None])
        return self.head(torch.cat(parts, dim=-1)), llr

    def sequence_logits(self, tokens: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        """tokens, pool (B, L) -> class logits (B, C)."""
        h, _ = self._hidden(tokens, False)
        return self.head(masked_mean(h, pool).float())


def save_classifier_export(classifier: Classifier, directory: str | os.PathLike, extra: dict | None = None) -> str:
    """A model export of the backbone (embed and score-variants read it as any export) whose config.json
    also holds the classifier's settings (under "dnamamba", "classifier"), with the head's weights in
    head.safetensors."""
    directory = os.fspath(directory)
    save_export(classifier.backbone, directory, extra={"classifier": asdict(classifier.cfg), **(extra or {})})
    head = {k: v.detach().float().cpu().contiguous() for k, v in classifier.head.state_dict().items()}
    with atomic_path(os.path.join(directory, HEAD_WEIGHTS)) as tmp:
        save_file(head, tmp, metadata={"format": "dnamamba-classifier-head"})
    return directory


def load_classifier_export(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    directory = os.fspath(directory)
    backbone = load_export(directory, device)
    cfg_path = os.path.join(directory, CONFIG)
    with open(cfg_path) as f:
        meta = json.load(f).get(DNAMAMBA_KEY, {})  # load_export has checked that the file reads
    if "classifier" not in meta:
        raise InputError(directory, "not a classifier export: config.json has no classifier settings "
                                    "(dnamamba finetune writes one)")
    try:
        cfg = ClassifierConfig(**meta["classifier"])
        model = Classifier(backbone, cfg)
        model.head.load_state_dict(load_file(os.path.join(directory, HEAD_WEIGHTS)))
    except (TypeError, ValueError) as e:
        raise InputError(cfg_path, f"unreadable classifier settings ({e})") from None
    except (SafetensorError, RuntimeError, OSError) as e:
        raise InputError(os.path.join(directory, HEAD_WEIGHTS),
                         f"missing or unreadable head weights ({str(e).splitlines()[0]})") from None
    return model.to(device).eval()
