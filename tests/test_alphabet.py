import gzip

import pytest
import torch
from Bio.Seq import Seq

from dnamamba import alphabet
from dnamamba.alphabet import (PAD_ID, complement, decode, encode, invalid_bytes, loss_mask,
                               reverse_complement, soft_masked, uppercase)
from dnamamba.data.fasta import demo_genome_path


def test_encode_is_byte_values_and_decode_drops_padding():
    t = encode("ACGTNacgtn")
    assert t.dtype == torch.long
    assert t.tolist() == [65, 67, 71, 84, 78, 97, 99, 103, 116, 110]
    assert decode(torch.cat([t, torch.zeros(3, dtype=torch.long)])) == "ACGTNacgtn"
    assert encode(b"AC").tolist() == encode("AC").tolist()


@pytest.mark.parametrize("base,comp", [
    ("A", "T"), ("C", "G"), ("G", "C"), ("T", "A"), ("U", "A"), ("N", "N"),
    ("R", "Y"), ("Y", "R"), ("S", "S"), ("W", "W"), ("K", "M"), ("M", "K"),
    ("B", "V"), ("V", "B"), ("D", "H"), ("H", "D"),
])
def test_complement_iupac_both_cases(base, comp):
    assert decode(complement(encode(base))) == comp
    assert decode(complement(encode(base.lower()))) == comp.lower()


def test_complement_is_an_involution_except_u():
    every = torch.arange(256)
    back = complement(complement(every))
    changed = (back != every).nonzero().flatten().tolist()
    # U -> A -> T: RNA U has no DNA partner that maps back to it.
    assert changed == [ord("U"), ord("u")]


def test_complement_leaves_padding_and_other_bytes_and_keeps_dtype():
    t = torch.tensor([PAD_ID, ord("X"), ord("-"), ord("A")], dtype=torch.int32)
    out = complement(t)
    assert out.dtype == torch.int32
    assert out.tolist() == [PAD_ID, ord("X"), ord("-"), ord("T")]


def test_reverse_complement_iupac_and_case():
    assert decode(reverse_complement(encode("AACGTNRYacgtnk"))) == "mnacgtRYNACGTT"


def test_reverse_complement_matches_biopython_on_lambda():
    with gzip.open(demo_genome_path(), "rt") as f:
        seq = "".join(f.read().splitlines()[1:])
    # Mixed case exercises the case-keeping path on real sequence.
    seq = seq[:20000] + seq[20000:30000].lower() + seq[30000:]
    ours = decode(reverse_complement(encode(seq)))
    assert ours == str(Seq(seq).reverse_complement())
    assert len(ours) == 48502


def test_reverse_complement_of_padded_batch_keeps_padding_right():
    rows = ["ACGTTG", "GGAcn", "T"]
    L = 8
    batch = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        batch[i, :len(r)] = encode(r)
    lengths = torch.tensor([len(r) for r in rows])
    out = reverse_complement(batch, lengths)
    for i, r in enumerate(rows):
        assert decode(out[i]) == str(Seq(r).reverse_complement())
        assert out[i, len(r):].eq(PAD_ID).all()
    assert torch.equal(reverse_complement(out, lengths), batch)


def test_reverse_complement_batch_without_lengths_flips_last_axis():
    batch = torch.stack([encode("ACGG"), encode("TTAN")])  # (2, 4)
    assert [decode(r) for r in reverse_complement(batch)] == ["CCGT", "NTAA"]


def test_loss_mask_counts_only_acgt_either_case():
    t = encode("ACGTacgtNnRyU-")
    assert loss_mask(t).tolist() == [True] * 8 + [False] * 6
    assert not loss_mask(torch.tensor([PAD_ID])).any()


def test_soft_masked_and_uppercase():
    t = encode("ACgtNnry")
    assert soft_masked(t).tolist() == [False, False, True, True, False, True, True, True]
    assert decode(uppercase(t)) == "ACGTNNRY"
    assert uppercase(torch.tensor([PAD_ID])).tolist() == [PAD_ID]


def test_invalid_bytes():
    assert invalid_bytes(b"ACGTNacgtnRYKMSWBDHVU") == set()
    assert invalid_bytes(b"ACGX-1 a") == {ord("X"), ord("-"), ord("1"), ord(" ")}
    assert alphabet.VOCAB_SIZE == 256
