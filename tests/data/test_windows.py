
import numpy as np
import pytest
import torch
from Bio.Seq import Seq
from torch.utils.data import DataLoader

from dnamamba.alphabet import PAD_ID, decode, reverse_complement
from dnamamba.data.fasta import FastaFile
from dnamamba.data.windows import (Window, WindowDataset, filter_n, held_out_start, merge_regions,
                                   record_regions, split_at, split_by_fraction, split_by_records, tile,
                                   tile_all)

LAMBDA = "gi|9626243|ref|NC_001416.1|"


def spans(windows):
    return [(w.start, w.end) for w in windows]


def test_tile_tails():
    r = Window("r", 10, 35)  # 25 bases
    assert spans(tile(r, 10)) == [(10, 20), (20, 30), (25, 35)]  # right-aligned last window
    assert spans(tile(r, 10, tail="short")) == [(10, 20), (20, 30), (30, 35)]
    assert spans(tile(r, 10, tail="drop")) == [(10, 20), (20, 30)]
    assert spans(tile(r, 10, stride=5)) == [(10, 20), (15, 25), (20, 30), (25, 35)]
    assert spans(tile(Window("r", 0, 20), 10)) == [(0, 10), (10, 20)]  # exact fit: no extra window
    assert spans(tile(Window("r", 0, 7), 10)) == [(0, 7)]
    assert tile(Window("r", 0, 7), 10, tail="drop") == []
    assert tile(Window("r", 5, 5), 10) == []
    assert spans(tile(Window("r", 0, 23), 5, stride=8, tail="short")) == [(0, 5), (8, 13), (16, 21)]


def test_tile_rejects_bad_arguments():
    with pytest.raises(ValueError):
        tile(Window("r", 0, 10), 0)
    with pytest.raises(ValueError):
        tile(Window("r", 0, 10), 4, tail="pad")


def test_merge_regions():
    rs = [Window("b", 50, 60), Window("a", 10, 20), Window("a", 15, 30), Window("a", 30, 40),
          Window("a", 50, 55), Window("b", 0, 5), Window("a", 3, 3)]
    assert merge_regions(rs) == [Window("b", 0, 5), Window("b", 50, 60), Window("a", 10, 40), Window("a", 50, 55)]


def test_fraction_split_never_overlaps_and_covers_each_record():
    lengths = {"a": 10_000, "b": 3_333}
    regions = [Window("a", 0, 10_000), Window("b", 0, 3_333)]
    train_r, val_r = split_by_fraction(regions, lengths, 0.1)
    assert held_out_start(10_000, 0.1) == 9_000 and held_out_start(3_333, 0.1) == 3_000
    train = tile_all(train_r, 512, stride=256)
    val = tile_all(val_r, 512, tail="short")
    for name, n in lengths.items():
        cut = held_out_start(n, 0.1)
        t = [w for w in train if w.name == name]
        v = [w for w in val if w.name == name]
        assert max(w.end for w in t) == cut  # training reaches the held-out start and no further
        assert min(w.start for w in v) == cut
        covered = np.zeros(n - cut, dtype=int)
        for w in v:
            covered[w.start - cut:w.end - cut] += 1
        assert (covered == 1).all()  # every held-out base scored exactly once
    # A region that lies wholly in the tail goes wholly to validation.
    assert split_by_fraction([Window("a", 9_500, 9_600)], lengths, 0.1) == ([], [Window("a", 9_500, 9_600)])


def test_split_at_holds_out_the_last_bases():
    regions = [Window("a", 0, 1000), Window("a", 1500, 2000), Window("b", 100, 400)]
    train, val = split_at(regions, {"a": 2000 - 700, "b": 500 - 300})  # last 700 and 300 bases
    assert train == [Window("a", 0, 1000), Window("b", 100, 200)]
    assert val == [Window("a", 1500, 2000), Window("b", 200, 400)]


def test_record_split():
    regions = [Window("a", 0, 10), Window("b", 0, 10), Window("c", 0, 5)]
    train, val = split_by_records(regions, ["b"])
    assert [w.name for w in train] == ["a", "c"] and [w.name for w in val] == ["b"]


def test_filter_n_on_real_gap_edges(n_fixture):
    f = FastaFile(n_fixture)
    windows = tile_all(record_regions(f), 500, stride=50)
    kept = filter_n(windows, f, max_n_fraction=0.1)
    expect = [w for w in windows
              if f.fetch(w.name, w.start, w.end).count(b"N") <= 0.1 * w.length]
    assert kept == expect
    # Record 1 is N for [0, 2000), record 2 for [2000, 4000): only windows mostly outside the gaps stay.
    assert spans([w for w in kept if w.name == "20_58000_62000"])[0] == (1950, 2450)  # 50 N: exactly 10%
    assert spans([w for w in kept if w.name == "20_29651908_29655908"])[-1] == (1550, 2050)
    assert filter_n(windows, f, 1.0) == windows
    assert all(f.fetch(w.name, w.start, w.end).count(b"N") == 0 for w in filter_n(windows, f, 0.0))


def test_dataset_tokens_and_loss_weight_on_real_n(n_fixture):
    f = FastaFile(n_fixture)
    name = "20_58000_62000"
    ds = WindowDataset(f, [Window(name, 1900, 2100)])
    item = ds[0]
    assert item["tokens"].dtype == torch.long and item["tokens"].shape == (200,)
    assert item["loss_weight"].dtype == torch.float32
    assert decode(item["tokens"]) == f.fetch(name, 1900, 2100).decode()
    assert item["loss_weight"][:100].eq(0).all() and item["loss_weight"][100:].eq(1).all()


def test_short_windows_are_padded_with_zero_weight(lambda_fa, lambda_seq):
    ds = WindowDataset(str(lambda_fa), [Window(LAMBDA, 0, 64), Window(LAMBDA, 48490, 48502)], seq_len=64)
    item = ds[1]
    assert item["tokens"].shape == (64,)
    assert decode(item["tokens"]) == lambda_seq[48490:].decode()
    assert item["tokens"][12:].eq(PAD_ID).all()
    assert item["loss_weight"][:12].eq(1).all() and item["loss_weight"][12:].eq(0).all()
    with pytest.raises(ValueError):
        WindowDataset(str(lambda_fa), [Window(LAMBDA, 0, 100)], seq_len=64)


@pytest.fixture
def soft_masked_fa(make_fasta, lambda_seq):
    # Real lambda sequence with a lowercase (soft-masked) stretch and an n run in it.
    seq = lambda_seq[:300].decode()
    seq = seq[:100] + seq[100:150].lower() + "nnnnn" + seq[155:200].lower() + seq[200:]
    return make_fasta({"lam": seq}), seq


@pytest.mark.parametrize("mode", ["keep", "upper", "weight"])
def test_soft_mask_modes(soft_masked_fa, mode):
    path, seq = soft_masked_fa
    ds = WindowDataset(str(path), [Window("lam", 0, 300)], soft_mask=mode, soft_mask_weight=0.25)
    item = ds[0]
    text = decode(item["tokens"])
    assert text == (seq if mode == "keep" else seq.upper())
    w = item["loss_weight"]
    soft = 0.25 if mode == "weight" else 1.0
    assert w[:100].eq(1).all() and w[200:].eq(1).all()
    assert w[100:150].eq(soft).all() and w[155:200].eq(soft).all()
    assert w[150:155].eq(0).all()  # n is excluded from the loss in every mode


def test_reverse_complement_augmentation(soft_masked_fa):
    path, seq = soft_masked_fa
    windows = [Window("lam", i * 30, i * 30 + 60) for i in range(8)]
    plain = WindowDataset(str(path), windows, soft_mask="weight", soft_mask_weight=0.5)
    flipped = WindowDataset(str(path), windows, soft_mask="weight", soft_mask_weight=0.5, rc_prob=1.0)
    for i, w in enumerate(windows):
        a, b = plain[i], flipped[i]
        assert decode(b["tokens"]) == str(Seq(seq[w.start:w.end].upper()).reverse_complement())
        assert torch.equal(b["tokens"], reverse_complement(a["tokens"]))
        assert torch.equal(b["loss_weight"], a["loss_weight"].flip(0))

    half = WindowDataset(str(path), windows * 25, rc_prob=0.5, seed=3)
    first = [decode(half[i]["tokens"]) for i in range(len(half))]
    n_rc = sum(t != seq[w.start:w.end] for t, w in zip(first, windows * 25))
    assert 60 < n_rc < 140  # about half of 200
    again = WindowDataset(str(path), windows * 25, rc_prob=0.5, seed=3)
    assert [decode(again[i]["tokens"]) for i in range(len(again))] == first  # same seed, same draws


def test_dataset_in_dataloader_workers(lambda_fa, lambda_seq):
    windows = tile(Window(LAMBDA, 0, 48502), 1000, tail="align")
    ds = WindowDataset(str(lambda_fa), windows)
    seen = []
    for batch in DataLoader(ds, batch_size=8, num_workers=2):
        assert batch["tokens"].shape[1:] == (1000,) and batch["loss_weight"].shape[1:] == (1000,)
        seen.extend(decode(t) for t in batch["tokens"])
    assert seen == [lambda_seq[w.start:w.end].decode() for w in windows]


def test_dataset_with_spawned_workers(lambda_fa, lambda_seq):
    # DDP on CPU spawns processes: the dataset and its FastaFile must pickle and reopen there.
    windows = [Window(LAMBDA, i * 500, i * 500 + 500) for i in range(6)]
    ds = WindowDataset(str(lambda_fa), windows)
    loader = DataLoader(ds, batch_size=3, num_workers=2, multiprocessing_context="spawn")
    seen = [decode(t) for batch in loader for t in batch["tokens"]]
    assert seen == [lambda_seq[w.start:w.end].decode() for w in windows]


def test_short_window_reverse_complement_keeps_padding_right(lambda_fa, lambda_seq):
    ds = WindowDataset(str(lambda_fa), [Window(LAMBDA, 48480, 48502)], seq_len=32, rc_prob=1.0)
    item = ds[0]
    assert decode(item["tokens"]) == str(Seq(lambda_seq[48480:].decode()).reverse_complement())
    assert item["tokens"][22:].eq(PAD_ID).all() and item["loss_weight"][22:].eq(0).all()
    assert item["loss_weight"][:22].eq(1).all()
