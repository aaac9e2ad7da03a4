import pytest
import torch

from dnamamba.data.datamodule import FastaDataModule
from dnamamba.data.seq_len_warmup import SeqLenWarmup
from dnamamba.errors import InputError


def test_length_doubles_in_equal_stages_then_stays_at_the_target():
    w = SeqLenWarmup(start=1024, target=8192, steps=300)
    assert w.stages == 3
    lengths = [w.seq_len(s) for s in range(400)]
    assert lengths[:100] == [1024] * 100
    assert lengths[100:200] == [2048] * 100
    assert lengths[200:300] == [4096] * 100
    assert lengths[300:] == [8192] * 100
    # Steps that do not divide evenly: the stages differ by at most one step, the target comes at `steps`.
    odd = SeqLenWarmup(start=16, target=64, steps=5)
    assert [odd.seq_len(s) for s in range(7)] == [16, 16, 16, 32, 32, 64, 64]


def test_split_batch_keeps_tokens_and_order():
    w = SeqLenWarmup(start=4, target=16, steps=10)
    tokens = torch.arange(3 * 16).reshape(3, 16)  # (B, L)
    batch = {"tokens": tokens, "loss_weight": tokens.float() / 100}
    early = w.split_batch(batch, step=0)
    assert early["tokens"].shape == (12, 4) and early["loss_weight"].shape == (12, 4)
    # Each window becomes its consecutive pieces, windows in order.
    assert torch.equal(early["tokens"][4:8].flatten(), tokens[1])
    assert torch.equal(early["loss_weight"], early["tokens"].float() / 100)
    assert w.split_batch(batch, step=5)["tokens"].shape == (6, 8)
    assert w.split_batch(batch, step=10) is batch


@pytest.mark.parametrize("start, target, steps", [(0, 16, 4), (16, 16, 4), (32, 16, 4), (3, 16, 4), (5, 30, 4),
                                                  (4, 16, 0)])
def test_bad_schedules_are_refused(start, target, steps):
    with pytest.raises(ValueError):
        SeqLenWarmup(start=start, target=target, steps=steps)


def test_data_module_reads_the_warmup_config():
    dm = FastaDataModule(seq_len=256, tokens_per_step=1024, seq_len_warmup={"start": 64, "steps": 20})
    assert dm.warmup == SeqLenWarmup(start=64, target=256, steps=20)
    assert FastaDataModule(seq_len=256, seq_len_warmup={"start": None, "steps": 0}).warmup is None
    assert FastaDataModule(seq_len=256).warmup is None
    with pytest.raises(InputError, match="data.seq_len_warmup.*power of two"):
        FastaDataModule(seq_len=256, seq_len_warmup={"start": 96, "steps": 20})
    with pytest.raises(InputError, match="data.seq_len_warmup.*steps"):
        FastaDataModule(seq_len=256, seq_len_warmup={"start": 64})
