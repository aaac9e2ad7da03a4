"""Byte-level Mamba-1 language model. Reads top to bottom: norm, mixer, block, model.

The mixer follows Mamba (Gu & Dao, 2023, https://arxiv.org/abs/2312.00752):
in_proj -> depthwise causal conv1d -> x_proj (dt, B, C) -> dt_proj -> selective scan (D skip, z gate)
-> out_proj. Every block can take and return its recurrent state (the last d_conv-1 conv inputs and
the scan state), so a long sequence processed in pieces gives the same result as in one call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import MambaConfig
from .fused import fused_block
from .scan import add_rms_norm, linear_cross_entropy, scan_fn, use_fused


def _fp32_or_wider(t: torch.Tensor) -> torch.Tensor:
    """Scan parameters go in as fp32 (bf16 A overflows exp); float64 stays float64 for exactness checks."""
    return t if t.dtype == torch.float64 else t.float()


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in fp32 at least, under bf16 too
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight).to(x.dtype)


@dataclass
class LayerState:
    conv: torch.Tensor  # (B, d_conv - 1, d_inner): the last conv inputs
    ssm: torch.Tensor  # (B, d_inner, d_state), fp32 (float64 for a float64 model)


class MambaMixer(nn.Module):
    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        d_inner, n, r = cfg.d_inner, cfg.d_state, cfg.dt_rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv_weight = nn.Parameter(torch.empty(d_inner, 1, cfg.d_conv))
        self.conv_bias = nn.Parameter(torch.zeros(d_inner))
        self.x_proj = nn.Linear(d_inner, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        # S4D-real initialisation: A_n = -(n + 1); kept as log so A stays negative under training.
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        cfg = self.cfg
        nn.init.kaiming_uniform_(self.conv_weight, a=math.sqrt(5))
        self.conv_bias.zero_()
        std = cfg.dt_rank ** -0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        # dt bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max], as in Mamba.
        dt = torch.exp(torch.rand(cfg.d_inner) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min))
        dt = dt.clamp(min=cfg.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def zero_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        cfg = self.cfg
        return LayerState(conv=torch.zeros(batch, cfg.d_conv - 1, cfg.d_inner, device=device, dtype=dtype),
                          ssm=torch.zeros(batch, cfg.d_inner, cfg.d_state, device=device, dtype=torch.float32))

    def forward(self, h: torch.Tensor, state: LayerState | None = None, return_state: bool = False):
        cfg = self.cfg
        B, L, _ = h.shape
        x, z = self.in_proj(h).chunk(2, dim=-1)  # (B, L, d_inner) each
        past = state.conv.to(x.dtype) if state is not None else x.new_zeros(B, cfg.d_conv - 1, cfg.d_inner)
        xp = torch.cat([past, x], dim=1)  # (B, d_conv - 1 + L, d_inner): causal left context
        conv = F.conv1d(xp.transpose(1, 2), self.conv_weight.to(x.dtype), self.conv_bias.to(x.dtype),
                        groups=cfg.d_inner)  # (B, d_inner, L)
        u = F.silu(conv).transpose(1, 2)  # (B, L, d_inner)
        dt, Bm, Cm = self.x_proj(u).split([cfg.dt_rank, cfg.d_state, cfg.d_state], dim=-1)
        delta = dt @ self.dt_proj.weight.to(dt.dtype).t()  # (B, L, d_inner); bias goes in as delta_bias
        A = -torch.exp(_fp32_or_wider(self.A_log))  # (d_inner, d_state)
        scan = scan_fn(cfg.scan_backend, h.device, cfg.scan_chunk_size)
        y, ssm = scan(u, delta, A, Bm.unsqueeze(2), Cm.unsqueeze(2), D=_fp32_or_wider(self.D), z=z,
                      delta_bias=_fp32_or_wider(self.dt_proj.bias), delta_softplus=True,
                      initial_state=None if state is None else state.ssm,
                      return_final_state=True)  # y (B, L, d_inner)
        out = self.out_proj(y)  # (B, L, d_model)
        if not return_state:
            return out, None
        return out, LayerState(conv=xp[:, -(cfg.d_conv - 1):].detach() if cfg.d_conv > 1 else xp[:, :0],
                               ssm=ssm)


class MambaBlock(nn.Module):
    """Pre-norm residual block: h + mixer(norm(h))."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MambaMixer(cfg)

    def forward(self, h, state=None, return_state=False):
        out, new_state = self.mixer(self.norm(h), state, return_state)
        return h + out, new_state


class MambaLM(nn.Module):
    """Causal LM over byte tokens with a tied head.

    `hidden_states(tokens, layer)` gives any layer's output, `forward` gives next-token logits; both
    accept a list of per-layer states and can return the updated list, for exact streaming.
    """

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(MambaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self):
        nn.init.normal_(self.embedding.weight, std=0.02)
        for layer in self.layers:
            # GPT-2 style: shrink residual-branch outputs by sqrt(n_layer) so the stream stays O(1).
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(self.cfg.n_layer)

    def zero_state(self, batch: int, device=None, dtype=torch.float32) -> list[LayerState]:
        device = device or self.embedding.weight.device
        return [layer.mixer.zero_state(batch, device, dtype) for layer in self.layers]

    def _layer_index(self, layer: int) -> int:
        """-1 (or n_layer) means the final normalised output; 0..n_layer-1 are block outputs."""
        n = self.cfg.n_layer
        if layer == -1 or layer == n:
            return n
        if -n - 1 <= layer < n:
            return layer % (n + 1)
        raise ValueError(f"layer must be in [-{n + 1}, {n}], got {layer}")

    def hidden_states(self, tokens: torch.Tensor, layer: int | Sequence[int] = -1,
                      state: list[LayerState] | None = None, return_state: bool = False,
                      cu_seqlens: torch.Tensor | None = None):
        """tokens (B, L) long -> hidden (B, L, d_model) after block `layer` (-1: after the final norm).

        With a list of layers, one pass gives a list of hiddens in that order; the states cover the blocks
        run, up to the deepest layer asked for. cu_seqlens (nseq+1,): sequences packed along L in batch 1,
        each starting from its own state (the fused path only); `state` then holds one entry per sequence.
        """
        many = isinstance(layer, (list, tuple))
        stops = [self._layer_index(x) for x in (layer if many else [layer])]
        if use_fused(self.cfg.fused, tokens.device):
            kept, new_states = self._fused_hidden_states(tokens, stops, state, return_state, cu_seqlens)
        elif cu_seqlens is not None:
            raise ValueError("packed sequences (cu_seqlens) need the fused path (model.fused=true)")
        else:
            kept, new_states = self._reference_hidden_states(tokens, stops, state, return_state)
        out = [kept[i] for i in stops] if many else kept[stops[0]]
        return (out, new_states) if return_state else out

    def _reference_hidden_states(self, tokens, stops, state, return_state):
        """The blocks as modules: {layer index: hidden (B, L, d_model)} for each of `stops`, and the states."""
        last = max(stops)
        h = self.embedding(tokens)  # (B, L, d_model)
        kept = {}
        new_states = []
        for i, block in enumerate(self.layers[:min(last + 1, self.cfg.n_layer)]):
            s = None if state is None else state[i]
            if self._checkpointing(return_state, s):
                h, ns = checkpoint(block, h, None, False, use_reentrant=False)
            else:
                h, ns = block(h, s, return_state)
            new_states.append(ns)
            if i in stops:
                kept[i] = h
        if last == self.cfg.n_layer:
            kept[last] = self.norm_f(h)
        return kept, new_states

    def _checkpointing(self, return_state: bool, state) -> bool:
        return self.cfg.checkpoint_blocks and self.training and not return_state and state is None

    def _fused_hidden_states(self, tokens, stops, state, return_state, cu_seqlens):
        """_reference_hidden_states on the fused path: the residual stream stays fp32 and each block's add +
        norm is fused into the next block (model/fused.py)."""
        last = max(stops)
        residual = self.embedding(tokens)  # (B, L, d_model), fp32 like the parameters
        x = None  # the previous block's mixer output, added to the residual inside the next block
        kept = {}
        new_states = []
        for i, block in enumerate(self.layers[:min(last + 1, self.cfg.n_layer)]):
            s = None if state is None else state[i]
            if self._checkpointing(return_state, s):
                # The checkpoint keeps the block's inputs: one fp32 stream after the add costs 4 bytes a value
                # against 6 for the fp32 residual and the bf16 mixer output apart.
                residual = residual if x is None else residual + x
                x, residual, ns = checkpoint(fused_block, block, residual, None, None, False, cu_seqlens,
                                             use_reentrant=False)
            else:
                x, residual, ns = fused_block(block, residual, x, s, return_state, cu_seqlens)
            new_states.append(None if ns is None else LayerState(conv=ns[0], ssm=ns[1]))
            if i in stops:
                kept[i] = residual if x is None else residual + x  # the block's output, as the reference returns it
        if last == self.cfg.n_layer:
            kept[last], _ = add_rms_norm(x, residual, self.norm_f.weight, self.norm_f.eps)  # (B, L, d_model)
        return kept, new_states

    def advance(self, tokens: torch.Tensor, state: list[LayerState] | None = None) -> list[LayerState]:
        """The state after reading tokens (B, L), without the final norm or the head: all a prefix that scores
        nothing is needed for."""
        return self.hidden_states(tokens, self.cfg.n_layer - 1, state=state, return_state=True)[1]

    def forward(self, tokens: torch.Tensor, state: list[LayerState] | None = None, return_state: bool = False):
        """tokens (B, L) long -> logits (B, L, vocab) for the next token at each position."""
        out = self.hidden_states(tokens, -1, state, return_state)
        h, new_states = out if return_state else (out, None)
        logits = F.linear(h, self.embedding.weight.to(h.dtype))  # (B, L, vocab), tied head
        return (logits, new_states) if return_state else logits

    def next_token_nll(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> (B, L-1) fp32: -log p(tokens[:, t+1] | tokens[:, :t+1]), in nats.

        On the fused path the tied head and the cross-entropy run in chunks of rows, so the (B, L, vocab)
        fp32 logits never exist; elsewhere it is the plain cross-entropy of `forward`'s logits.
        """
        if not use_fused(self.cfg.fused, tokens.device):
            logits = self(tokens)
            return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), tokens[:, 1:], reduction="none")
        h = self.hidden_states(tokens)  # (B, L, d_model)
        # Every row is scored against the next token (the last row against padding and dropped), so the
        # hidden rows go in as one contiguous view instead of a copy of h[:, :-1].
        targets = F.pad(tokens[:, 1:], (0, 1))  # (B, L)
        nll = linear_cross_entropy(h.flatten(0, 1), self.embedding.weight, targets.flatten())
        return nll.view_as(tokens)[:, :-1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
