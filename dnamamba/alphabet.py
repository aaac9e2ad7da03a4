"""Byte-level DNA alphabet: a base's token id is its byte value (vocabulary 256, id 0 is padding).

Keeping the raw byte keeps soft-masking (lowercase) and IUPAC codes in the data; which of them count
toward the loss is decided here, in one place.
"""
from __future__ import annotations

import torch

VOCAB_SIZE = 256
PAD_ID = 0

IUPAC = "ACGTURYSWKMBDHVN"
# IUPAC complement pairs (https://www.bioinformatics.org/sms/iupac.html); U pairs with A.
_PAIRS = {"A": "T", "T": "A", "U": "A", "C": "G", "G": "C", "R": "Y", "Y": "R", "S": "S", "W": "W",
          "K": "M", "M": "K", "B": "V", "V": "B", "D": "H", "H": "D", "N": "N"}

VALID_BYTES = frozenset(ord(c) for c in IUPAC + IUPAC.lower())
LOSS_BYTES = frozenset(ord(c) for c in "ACGTacgt")


def _complement_table() -> torch.Tensor:
    table = torch.arange(VOCAB_SIZE, dtype=torch.long)  # bytes outside IUPAC map to themselves
    for base, comp in _PAIRS.items():
        table[ord(base)] = ord(comp)
        table[ord(base.lower())] = ord(comp.lower())
    return table


COMPLEMENT = _complement_table()  # (256,) long
_LOSS_LUT = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
_LOSS_LUT[list(LOSS_BYTES)] = True
_UPPER_LUT = torch.arange(VOCAB_SIZE, dtype=torch.long)
_UPPER_LUT[ord("a"):ord("z") + 1] -= 32
_SOFT_LUT = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
_SOFT_LUT[[ord(c) for c in IUPAC.lower()]] = True


def encode(seq: str | bytes | bytearray) -> torch.Tensor:
    """Sequence text to token ids, (L,) long. No validation: readers check bytes at the file."""
    if isinstance(seq, str):
        seq = seq.encode("ascii")
    return torch.frombuffer(bytearray(seq), dtype=torch.uint8).long()


def decode(tokens: torch.Tensor) -> str:
    """Token ids (L,) back to text; padding is dropped."""
    t = tokens.detach().cpu().long()
    return bytes(t[t != PAD_ID].to(torch.uint8).tolist()).decode("ascii")


def complement(tokens: torch.Tensor) -> torch.Tensor:
    """Base-wise IUPAC complement with case kept; padding stays padding. Any shape."""
    return COMPLEMENT.to(tokens.device)[tokens.long()].to(tokens.dtype)


def reverse_complement(tokens: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Reverse complement along the last axis.

    With right-padded batches pass `lengths` (B,): each row's real bases are reversed in place and
    the padding stays at the right, so the result is again a right-padded batch.
    """
    comp = complement(tokens)
    if lengths is None:
        return comp.flip(-1)
    L = tokens.shape[-1]
    pos = torch.arange(L, device=tokens.device)  # (L,)
    src = lengths.to(tokens.device)[:, None] - 1 - pos[None, :]  # (B, L)
    valid = src >= 0
    out = torch.gather(comp, -1, src.clamp(min=0))
    return torch.where(valid, out, torch.full_like(out, PAD_ID))


def loss_mask(tokens: torch.Tensor) -> torch.Tensor:
    """True where the token is A, C, G or T in either case: the positions that count toward the loss."""
    return _LOSS_LUT.to(tokens.device)[tokens.long()]


def soft_masked(tokens: torch.Tensor) -> torch.Tensor:
    """True at lowercase (soft-masked, usually repeat) bases."""
    return _SOFT_LUT.to(tokens.device)[tokens.long()]


def uppercase(tokens: torch.Tensor) -> torch.Tensor:
    """Fold soft-masked bases to uppercase."""
    return _UPPER_LUT.to(tokens.device)[tokens.long()].to(tokens.dtype)


def invalid_bytes(seq: bytes) -> set[int]:
    """Bytes of `seq` that are not IUPAC nucleotide codes (either case)."""
    return set(seq) - VALID_BYTES
