from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dnamamba.alphabet import decode
from dnamamba.data.datamodule import DataConfig, FastaDataModule
from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.data.windows import acgt_tail_start, held_out_start
from dnamamba.errors import InputError

CONF = Path(__file__).resolve().parents[2] / "conf" / "data"
LAMBDA = "gi|9626243|ref|NC_001416.1|"


def load(name, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    return instantiate(cfg, **overrides)


def test_config_keys_match_the_schema():
    fields = set(DataConfig.__dataclass_fields__)
    for name in ("lambda", "ecoli", "chr20"):
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert cfg._target_ == "dnamamba.data.datamodule.FastaDataModule"
        assert set(cfg) - {"_target_"} == fields, name


def test_lambda_default_split_batches_and_coverage():
    dm = load("lambda")
    assert dm.fasta_path == demo_genome_path()
    dm.prepare_data()
    dm.setup("fit")
    cut = held_out_start(48502, 0.1)
    assert cut == 43652
    assert all(w.end <= cut for w in dm.train_windows)
    assert max(w.end for w in dm.train_windows) == cut
    assert all(w.length == 512 for w in dm.train_windows)
    covered = np.zeros(48502 - cut, dtype=int)
    for w in dm.val_windows:
        assert w.start >= cut
        covered[w.start - cut:w.end - cut] += 1
    assert (covered == 1).all()

    batch = next(iter(dm.train_dataloader()))
    assert batch["tokens"].shape == (8, 512) and batch["tokens"].dtype == torch.long
    assert batch["loss_weight"].shape == (8, 512) and batch["loss_weight"].dtype == torch.float32
    val = list(dm.val_dataloader())
    assert sum(len(b["tokens"]) for b in val) == len(dm.val_windows)
    with FastaFile(demo_genome_path()) as f:
        # Validation is deterministic and in window order; the last window is short and padded.
        assert decode(val[0]["tokens"][0]) == f.fetch(LAMBDA, cut, cut + 512).decode()
        last = dm.val_windows[-1]
        assert decode(val[-1]["tokens"][-1]) == f.fetch(LAMBDA, last.start, last.end).decode()
        assert val[-1]["loss_weight"][-1, last.length:].eq(0).all()


def test_train_order_follows_seed():
    def first_batch(seed):
        dm = FastaDataModule(seq_len=256, seed=seed)
        dm.setup()
        return next(iter(dm.train_dataloader()))["tokens"]

    assert torch.equal(first_batch(1), first_batch(1))
    assert not torch.equal(first_batch(1), first_batch(2))


def test_dataloader_with_two_workers_yields_all_windows():
    dm = FastaDataModule(seq_len=1024, stride=512, num_workers=2, rc_prob=0.0, batch_size=16)
    dm.setup()
    got = sorted(decode(t) for b in dm.train_dataloader() for t in b["tokens"])
    with FastaFile(demo_genome_path()) as f:
        expect = sorted(f.fetch(w.name, w.start, w.end).decode() for w in dm.train_windows)
    assert got == expect


def test_val_records_and_record_choice(n_fixture):
    dm = FastaDataModule(fasta=str(n_fixture), seq_len=500, stride=250, val_records=["20_29651908_29655908"],
                         max_n_fraction=0.2)
    dm.setup()
    assert {w.name for w in dm.train_windows} == {"20_58000_62000"}
    assert {w.name for w in dm.val_windows} == {"20_29651908_29655908"}
    with FastaFile(n_fixture) as f:
        for w in dm.train_windows + dm.val_windows:
            assert f.fetch(w.name, w.start, w.end).count(b"N") <= 0.2 * w.length

    only = FastaDataModule(fasta=str(n_fixture), records="20_58000_62000", seq_len=500, val_fraction=0.5,
                           max_n_fraction=1.0)
    only.setup()
    assert {w.name for w in only.train_windows + only.val_windows} == {"20_58000_62000"}


def test_bed_restricts_windows(tmp_path):
    bed = tmp_path / "regions.bed"
    bed.write_text(f"{LAMBDA}\t1000\t3000\tgeneA\n{LAMBDA}\t2500\t5000\n"
                   f"{LAMBDA}\t43000\t44500\n{LAMBDA}\t45000\t48000\n")
    dm = FastaDataModule(bed=str(bed), seq_len=256, val_fraction=0.1)
    dm.setup()
    cut = held_out_start(48502, 0.1)
    inside = lambda w, a, b: a <= w.start and w.end <= b  # noqa: E731
    assert all(inside(w, 1000, 5000) or inside(w, 43000, cut) for w in dm.train_windows)
    assert all(inside(w, cut, 44500) or inside(w, 45000, 48000) for w in dm.val_windows)
    assert max(w.end for w in dm.train_windows) == cut
    assert min(w.start for w in dm.val_windows) == cut
    # Overlapping intervals are merged: no base of 1000..5000 is in two windows at stride = seq_len.
    early = [w for w in dm.train_windows if w.end <= 5000]
    assert sum(w.length for w in early) == 4000 + 256 - 4000 % 256


def test_errors_are_input_errors_naming_the_problem(tmp_path, n_fixture):
    with pytest.raises(InputError, match="shorter than one window"):
        FastaDataModule(seq_len=8192).setup()
    with pytest.raises(InputError) as e:
        FastaDataModule(fasta=str(n_fixture), records=["20_58000_62000"], seq_len=500, val_fraction=0.5,
                        max_n_fraction=0.0).setup()
    assert "no training windows" in str(e.value) and str(n_fixture) in str(e.value)
    with pytest.raises(InputError, match="no validation windows"):
        FastaDataModule(fasta=str(n_fixture), records=["20_29651908_29655908"], seq_len=500,
                        val_fraction=0.4, max_n_fraction=0.0).setup()
    with pytest.raises(InputError, match="record chr1"):
        FastaDataModule(val_records=["chr1"]).setup()
    with pytest.raises(InputError, match="data.val_fraction"):
        FastaDataModule(val_fraction=1.0)
    with pytest.raises(InputError, match="data.soft_mask"):
        FastaDataModule(soft_mask="lower")
    with pytest.raises(InputError, match="not found"):
        FastaDataModule(fasta=str(tmp_path / "absent.fa")).prepare_data()
    bed = tmp_path / "past.bed"
    bed.write_text(f"{LAMBDA}\t48000\t48600\n")
    with pytest.raises(InputError) as e:
        FastaDataModule(bed=str(bed)).setup()
    assert str(bed) in str(e.value) and f"record {LAMBDA}" in str(e.value) and "past the end" in str(e.value)


def test_ecoli_config(monkeypatch, shared):
    path = shared("ecoli_k12_mg1655.fa.gz")
    monkeypatch.setenv("DNAMAMBA_DATA_DIR", str(path.parent))
    dm = load("ecoli", num_workers=0)
    assert dm.fasta_path == str(path)
    dm.prepare_data()
    dm.setup()
    cut = held_out_start(4_639_675, 0.1)
    assert all(w.end <= cut for w in dm.train_windows)
    assert all(w.start >= cut for w in dm.val_windows)
    assert len(dm.train_windows) == -(-cut // 1024)


def test_chr20_config_skips_n_windows(monkeypatch, shared):
    path = shared("hs37_chr20.fa.gz")
    monkeypatch.setenv("DNAMAMBA_DATA_DIR", str(path.parent))
    dm = load("chr20", num_workers=0)
    dm.setup()
    with FastaFile(path) as f:
        cut = acgt_tail_start(f, "20", 5_000_000)
    assert max(w.end for w in dm.train_windows) <= cut
    assert min(w.start for w in dm.val_windows) == cut
    with FastaFile(path) as f:
        # The first 60 kb of chr20 are N: no training window may start there.
        assert dm.train_windows[0].start >= 60000 - 4096 * 0.1
        n = f.n_count("20", [w.start for w in dm.train_windows], [w.end for w in dm.train_windows])
        assert (n <= 0.1 * 4096).all()
        # The training range holds 3.36 Mb of N (the telomere and three gaps): those windows are dropped.
        assert abs(len(dm.train_windows) - (cut - 3_360_000) / 4096) < 5


def test_numeric_record_names_from_hydra_and_no_validation(make_fasta, lambda_seq, capsys):
    # `data.records=[20]` reaches the module as the integer 20; record names are strings.
    seq = lambda_seq.decode()
    path = make_fasta({"20": seq[:6000], "21": seq[6000:9000] + "N" * 1000})
    dm = FastaDataModule(fasta=str(path), records=[20], val_records=21, seq_len=500)
    dm.setup()
    assert {w.name for w in dm.train_windows} == {"20"} and {w.name for w in dm.val_windows} == {"21"}
    assert "12 training windows" in dm.summary and "6 validation windows (2 skipped)" in dm.summary
    assert dm.summary in capsys.readouterr().err

    none = FastaDataModule(fasta=str(path), records=["20"], val_fraction=0.0, seq_len=500)
    none.setup()
    assert none.val_windows == [] and list(none.val_dataloader()) == []
    assert max(w.end for w in none.train_windows) == 6000


def test_val_bases_holds_out_a_fixed_tail():
    dm = load("lambda", val_bases=3000, seq_len=256)
    dm.setup("fit")
    cut = 48502 - 3000
    assert max(w.end for w in dm.train_windows) == cut  # training stops exactly where the tail starts
    assert min(w.start for w in dm.val_windows) == cut
    assert sum(w.length for w in dm.val_windows) == 3000  # every held-out base once
    with pytest.raises(InputError, match="val_bases=100"):
        load("lambda", val_bases=100, seq_len=256).setup("fit")
    with pytest.raises(InputError, match="val_bases"):
        FastaDataModule(val_bases=0)


def acgt(seq: bytes) -> int:
    return sum(seq.upper().count(c) for c in b"ACGT")


def test_val_acgt_bases_holds_out_the_last_non_n_bases(n_fixture):
    # 20_58000_62000 is 2,000 N then 2,000 bases; 20_29651908_29655908 is 2,000 bases then 2,000 N, so its
    # held-out tail must reach back past the N run to find 500 bases.
    dm = FastaDataModule(fasta=str(n_fixture), seq_len=256, val_acgt_bases=500, max_n_fraction=1.0)
    dm.setup()
    with FastaFile(n_fixture) as f:
        for name, cut in (("20_58000_62000", 3500), ("20_29651908_29655908", 1500)):
            train = [w for w in dm.train_windows if w.name == name]
            val = [w for w in dm.val_windows if w.name == name]
            assert max(w.end for w in train) == cut and min(w.start for w in val) == cut
            assert acgt(f.fetch(name, cut, 4000)) == 500 and acgt(f.fetch(name, cut, cut + 1)) == 1
            # Every held-out A/C/G/T base is in exactly one validation window; all-N windows are dropped.
            assert sum(acgt(f.fetch(w.name, w.start, w.end)) for w in val) == 500
            assert all(acgt(f.fetch(w.name, w.start, w.end)) > 0 for w in val)
    assert len([w for w in dm.val_windows if w.name == "20_29651908_29655908"]) == 2  # [1500, 2012) as 2 x 256
    with pytest.raises(InputError, match="val_acgt_bases.*val_bases"):
        FastaDataModule(val_bases=100, val_acgt_bases=100)
    with pytest.raises(InputError, match="data.val_acgt_bases=0"):
        FastaDataModule(val_acgt_bases=0)


def test_chr20_validation_is_the_last_5_mb_of_bases_at_2_20(monkeypatch, shared):
    """The chr20_1m experiment's split: windows of 2^20 cover all 5,000,000 held-out A/C/G/T bases."""
    path = shared("hs37_chr20.fa.gz")
    monkeypatch.setenv("DNAMAMBA_DATA_DIR", str(path.parent))
    dm = load("chr20", num_workers=0, seq_len=2 ** 20, tokens_per_step=2 ** 20)
    dm.setup()
    with FastaFile(path) as f:
        end = f.length("20")
        cut = min(w.start for w in dm.val_windows)
        assert acgt(f.fetch("20", cut, end)) == 5_000_000 and acgt(f.fetch("20", cut, cut + 1)) == 1
        assert sum(acgt(f.fetch("20", w.start, w.end)) for w in dm.val_windows) == 5_000_000
    assert max(w.end for w in dm.val_windows) == end and len(dm.val_windows) == -(-(end - cut) // 2 ** 20)
    assert max(w.end for w in dm.train_windows) == cut
    assert dm.config.train_batch_size == 1


def test_tokens_per_step_sets_the_batch_size():
    dm = FastaDataModule(seq_len=128, tokens_per_step=1024, batch_size=3)
    dm.setup()
    assert next(iter(dm.train_dataloader()))["tokens"].shape == (8, 128)
    assert next(iter(dm.val_dataloader()))["tokens"].shape == (8, 128)
    dm = FastaDataModule(seq_len=128, tokens_per_step=1024, val_batch_size=2)
    dm.setup()
    assert next(iter(dm.val_dataloader()))["tokens"].shape == (2, 128)
    assert FastaDataModule(seq_len=4096, tokens_per_step=4096).config.train_batch_size == 1
    with pytest.raises(InputError, match="data.tokens_per_step=1000.*not a multiple of data.seq_len=128"):
        FastaDataModule(seq_len=128, tokens_per_step=1000)
    with pytest.raises(InputError, match="data.tokens_per_step=64.*smaller than one window"):
        FastaDataModule(seq_len=128, tokens_per_step=64)


def test_shuffle_order_follows_seed_and_epoch():
    from dnamamba.data.datamodule import EpochShuffle

    def order(seed, epoch):
        sampler = EpochShuffle(range(50), seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert sorted(order(0, 3)) == list(range(50))
    assert order(0, 3) == order(0, 3)  # what a resumed run at epoch 3 sees
    assert order(0, 0) != order(0, 1) and order(0, 1) != order(1, 1)
