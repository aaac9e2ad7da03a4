"""Lightning data module: windows over a FASTA (optionally restricted to BED intervals), split into
training and validation, served as batches of `{"tokens": (B, L) long, "loss_weight": (B, L) float32}`.

Validation is either whole records (`val_records`) or the tail of every record (`val_bases` bases, the
shortest tail holding `val_acgt_bases` A/C/G/T bases, or else the fraction `val_fraction`):
training windows lie entirely before the held-out tail, and validation windows tile it with
stride = seq_len, the last one short and padded, so each held-out base is scored exactly once. Only
validation windows with no A/C/G/T base at all are dropped, so validation covers every held-out base that
compressor baselines count.

The batch size is `batch_size` windows, or `tokens_per_step / seq_len` when `tokens_per_step` is set. With
`seq_len_warmup` the training batches are cut into shorter pieces early in training (see seq_len_warmup.py);
validation always runs at `seq_len`.
"""
from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.utils.data import DataLoader, RandomSampler

from dnamamba.data.bed import read_bed
from dnamamba.data.fasta import FastaFile, demo_genome_path
from dnamamba.data.seq_len_warmup import SeqLenWarmup
from dnamamba.data.windows import (SOFT_MASK_MODES, Window, WindowDataset, acgt_tail_start, drop_unscored,
                                   filter_n, merge_regions, record_regions, split_at, split_by_fraction,
                                   split_by_records, tile_all)
from dnamamba.errors import InputError
from dnamamba.settings import SETTINGS


@dataclass
class DataConfig:
    """Settings of `FastaDataModule`; conf/data/*.yaml fill these in.

    fasta: FASTA path (plain, gzip or bgzip); None is the packaged lambda phage genome.
    records: record names to use (None: all). bed: BED file; when given, only its intervals are tiled.
    seq_len: window length in bases. stride: step between training windows (None: seq_len).
    val_records: records held out whole for validation. val_bases: when val_records is None, the number
        of bases held out at the end of each record. val_acgt_bases: instead of val_bases, hold out the
        shortest tail of each record that holds this many A/C/G/T (non-N) bases; N runs inside it (a
        chromosome's final telomere gap) come with it. val_fraction: when none of these is set, the
        fraction of each record held out at its end.
    max_n_fraction: training windows with a larger fraction of non-ACGT bases are skipped (validation
        windows only when they have no A/C/G/T base).
    rc_prob: probability of reverse-complementing a training window.
    soft_mask / soft_mask_weight: "keep", "upper" or "weight" (see WindowDataset).
    batch_size: windows per training batch. tokens_per_step: when set, the batch is tokens_per_step /
        seq_len windows instead (seq_len must divide it); with DDP and gradient accumulation, tokens per
        optimizer step = tokens_per_step x trainer.accumulate_grad_batches x number of devices.
    val_batch_size: windows per validation batch (None: the training batch size).
    seq_len_warmup: {"start": L0, "steps": S} trains at L0, 2 L0, ... up to seq_len over the first S
        optimizer steps, with the same tokens per batch (see seq_len_warmup.py); start None: no warmup.
    baselines: bits/base of reference methods (compressors, Markov models) on this config's validation
        region, drawn as horizontal lines in run_dir/curves.png. They describe the default file and split.
    """

    fasta: str | None = None
    records: list[str] | None = None
    bed: str | None = None
    seq_len: int = 512
    stride: int | None = None
    val_records: list[str] | None = None
    val_fraction: float = 0.1
    val_bases: int | None = None
    val_acgt_bases: int | None = None
    max_n_fraction: float = 0.5
    rc_prob: float = 0.0
    soft_mask: str = "keep"
    soft_mask_weight: float = 1.0
    batch_size: int = 8
    tokens_per_step: int | None = None
    val_batch_size: int | None = None
    seq_len_warmup: dict | None = None
    num_workers: int = 0
    cache_dir: str | None = None
    seed: int = 0
    baselines: dict[str, float] | None = None

    @property
    def train_batch_size(self) -> int:
        """Windows of seq_len bases per training batch."""
        return self.tokens_per_step // self.seq_len if self.tokens_per_step is not None else self.batch_size

    def warmup(self) -> SeqLenWarmup | None:
        start = (self.seq_len_warmup or {}).get("start")
        if start is None:
            return None
        return SeqLenWarmup(start=int(start), target=self.seq_len, steps=int(self.seq_len_warmup.get("steps") or 0))

    def validate(self) -> None:
        """ValueError("key=value: why") for values that cannot work."""
        def bad(key: str, why: str):
            return ValueError(f"{key}={getattr(self, key)!r}: {why}")

        if self.seq_len < 1:
            raise bad("seq_len", "must be a positive number of bases")
        if self.stride is not None and self.stride < 1:
            raise bad("stride", "must be positive (or null for seq_len)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise bad("val_fraction", "must be in [0, 1)")
        if self.val_bases is not None and self.val_bases < 1:
            raise bad("val_bases", "must be a positive number of bases (or null to use val_fraction)")
        if self.val_acgt_bases is not None and self.val_acgt_bases < 1:
            raise bad("val_acgt_bases", "must be a positive number of bases (or null)")
        if self.val_acgt_bases is not None and self.val_bases is not None:
            raise bad("val_acgt_bases", f"and data.val_bases={self.val_bases} both set the held-out tail; set one")
        if not 0.0 <= self.max_n_fraction <= 1.0:
            raise bad("max_n_fraction", "must be in [0, 1]")
        if not 0.0 <= self.rc_prob <= 1.0:
            raise bad("rc_prob", "must be in [0, 1]")
        if self.soft_mask not in SOFT_MASK_MODES:
            raise bad("soft_mask", f"must be one of {', '.join(SOFT_MASK_MODES)}")
        if self.soft_mask_weight < 0:
            raise bad("soft_mask_weight", "must be >= 0")
        if self.batch_size < 1:
            raise bad("batch_size", "must be positive")
        if self.tokens_per_step is not None:
            if self.tokens_per_step < self.seq_len:
                raise bad("tokens_per_step", f"is smaller than one window (data.seq_len={self.seq_len})")
            if self.tokens_per_step % self.seq_len:
                raise bad("tokens_per_step", f"is not a multiple of data.seq_len={self.seq_len}, so the batch "
                                             f"size (tokens_per_step / seq_len) is not a whole number")
        try:
            self.warmup()
        except (ValueError, TypeError, AttributeError) as e:
            raise bad("seq_len_warmup", f"{e} (data.seq_len={self.seq_len}); give start and steps, "
                                        f"e.g. data.seq_len_warmup.start=1024 data.seq_len_warmup.steps=500") from None
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise bad("val_batch_size", "must be positive (or null for batch_size)")
        if self.num_workers < 0:
            raise bad("num_workers", "must be >= 0")


class EpochShuffle(RandomSampler):
    """A random order of the windows that depends only on data.seed and the epoch. Lightning calls
    set_epoch at the start of every epoch, a resumed run's included, so a run resumed at epoch e does not
    repeat the first epoch's order (a fresh generator would, and a run stopped and resumed within every
    epoch would then train on the same first windows again and again). Under DDP Lightning puts its
    DistributedSampler, which also seeds by epoch, in its place."""

    def __init__(self, dataset, seed: int):
        super().__init__(dataset, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed + epoch)


@rank_zero_only
def _announce(line: str) -> None:
    print(line, file=sys.stderr)


def record_names(value) -> list[str] | None:
    # Hydra reads `data.records=[20]` as the integer 20 and a single name as a bare string.
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return [str(value)]
    return [str(v) for v in value]


class FastaDataModule(pl.LightningDataModule):
    """Training and validation windows over one FASTA; see `DataConfig` for the arguments."""

    def __init__(self, fasta: str | None = None, records: Sequence[str] | None = None,
                 bed: str | None = None, seq_len: int = 512, stride: int | None = None,
                 val_records: Sequence[str] | None = None, val_fraction: float = 0.1,
                 val_bases: int | None = None, val_acgt_bases: int | None = None, max_n_fraction: float = 0.5,
                 rc_prob: float = 0.0, soft_mask: str = "keep", soft_mask_weight: float = 1.0,
                 batch_size: int = 8, tokens_per_step: int | None = None, val_batch_size: int | None = None,
                 seq_len_warmup: Mapping | None = None, num_workers: int = 0, cache_dir: str | None = None,
                 seed: int = 0, baselines: Mapping[str, float] | None = None):
        super().__init__()
        self.config = DataConfig(
            fasta=None if fasta is None else os.fspath(fasta), records=record_names(records),
            bed=None if bed is None else os.fspath(bed), seq_len=int(seq_len),
            stride=None if stride is None else int(stride), val_records=record_names(val_records),
            val_fraction=float(val_fraction), val_bases=None if val_bases is None else int(val_bases),
            val_acgt_bases=None if val_acgt_bases is None else int(val_acgt_bases),
            max_n_fraction=float(max_n_fraction),
            rc_prob=float(rc_prob), soft_mask=str(soft_mask), soft_mask_weight=float(soft_mask_weight),
            batch_size=int(batch_size), tokens_per_step=None if tokens_per_step is None else int(tokens_per_step),
            val_batch_size=None if val_batch_size is None else int(val_batch_size),
            # Hydra hands mappings over as DictConfig; the hyperparameters saved in checkpoints are plain values.
            seq_len_warmup=None if seq_len_warmup is None else dict(seq_len_warmup),
            num_workers=int(num_workers), cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            seed=int(seed),
            baselines=None if baselines is None else {str(k): float(v) for k, v in baselines.items()})
        try:
            self.config.validate()
        except ValueError as e:
            raise InputError(SETTINGS, f"data.{e}") from None
        self.warmup = self.config.warmup()
        self.save_hyperparameters(asdict(self.config))
        self.fasta_path = self.config.fasta if self.config.fasta is not None else demo_genome_path()
        self.summary = ""
        self.train_windows: list[Window] | None = None
        self.val_windows: list[Window] | None = None
        self.train_dataset: WindowDataset | None = None
        self.val_dataset: WindowDataset | None = None

    def prepare_data(self) -> None:
        # Runs once per node before setup(): a plain-gzip FASTA is decompressed and indexed here,
        # so DDP ranks find it in the cache instead of all doing it at once.
        FastaFile(self.fasta_path, self.config.cache_dir).close()

    def setup(self, stage: str | None = None) -> None:
        if self.train_windows is not None:
            return
        cfg = self.config
        fasta = FastaFile(self.fasta_path, cfg.cache_dir)
        for name in (cfg.records or []) + (cfg.val_records or []):
            fasta.length(name)  # an unknown name is an InputError listing the records there are

        train_names = [n for n in (cfg.records or fasta.names) if n not in set(cfg.val_records or [])]
        val_names = list(cfg.val_records or [])
        if cfg.bed is not None:
            chosen = set(train_names + val_names)
            intervals = read_bed(cfg.bed, fasta)
            regions = merge_regions(Window(iv.chrom, iv.start, iv.end) for iv in intervals
                                    if iv.chrom in chosen)
            if not regions:
                raise InputError(cfg.bed, f"no interval lies on the chosen records ({', '.join(sorted(chosen))})")
        else:
            regions = record_regions(fasta, train_names + val_names)

        if cfg.val_records:
            train_regions, val_regions = split_by_records(regions, cfg.val_records)
        elif cfg.val_bases is not None or cfg.val_acgt_bases is not None or cfg.val_fraction > 0:
            if cfg.val_bases is not None:
                setting = f"data.val_bases={cfg.val_bases}"
                cuts = {name: max(0, n - cfg.val_bases) for name, n in fasta.lengths.items()}
                train_regions, val_regions = split_at(regions, cuts)
            elif cfg.val_acgt_bases is not None:
                setting = f"data.val_acgt_bases={cfg.val_acgt_bases}"
                cuts = {r.name: acgt_tail_start(fasta, r.name, cfg.val_acgt_bases) for r in regions}
                train_regions, val_regions = split_at(regions, cuts)
            else:
                setting = f"data.val_fraction={cfg.val_fraction}"
                train_regions, val_regions = split_by_fraction(regions, fasta.lengths, cfg.val_fraction)
            longest = max((r.length for r in val_regions), default=0)
            if cfg.bed is None and longest < cfg.seq_len:
                raise InputError(self.fasta_path, f"the held-out tail ({setting}) is at most {longest} bases, "
                                                  f"shorter than one window (data.seq_len={cfg.seq_len}); hold out "
                                                  f"more, lower seq_len or set data.val_records")
        else:
            train_regions, val_regions = regions, []

        train = tile_all(train_regions, cfg.seq_len, cfg.stride, tail="align")
        val = tile_all(val_regions, cfg.seq_len, cfg.seq_len, tail="short")
        self.train_windows = filter_n(train, fasta, cfg.max_n_fraction)
        self.val_windows = drop_unscored(val, fasta)
        if not self.train_windows:
            raise InputError(self.fasta_path, f"no training windows: {len(train)} windows of {cfg.seq_len} "
                                              f"bases before the N filter, {len(self.train_windows)} after "
                                              f"(data.max_n_fraction={cfg.max_n_fraction})")
        if val_regions and not self.val_windows:
            raise InputError(self.fasta_path, f"no validation windows: none of the {len(val)} held-out windows "
                                              f"holds an A/C/G/T base")

        self.summary = (f"{len(self.train_windows)} training windows of {cfg.seq_len} bases "
                        f"({len(train) - len(self.train_windows)} skipped for more than "
                        f"{cfg.max_n_fraction:.0%} N), {len(self.val_windows)} validation windows "
                        f"({len(val) - len(self.val_windows)} skipped) from {self.fasta_path}; batches of "
                        f"{cfg.train_batch_size} x {cfg.seq_len} bases")
        if self.warmup is not None:
            self.summary += (f", {self.warmup.start} bases long at first, doubling to {cfg.seq_len} by step "
                             f"{self.warmup.steps}")
        _announce(f"dnamamba: data: {self.summary}")

        common = dict(soft_mask=cfg.soft_mask, soft_mask_weight=cfg.soft_mask_weight, seed=cfg.seed,
                      seq_len=cfg.seq_len)
        self.train_dataset = WindowDataset(fasta, self.train_windows, rc_prob=cfg.rc_prob, **common)
        self.val_dataset = WindowDataset(fasta, self.val_windows, rc_prob=0.0, **common)
        fasta.close()

    def _loader(self, dataset: WindowDataset, batch_size: int, shuffle: bool) -> DataLoader:
        workers = self.config.num_workers
        return DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0,
                          sampler=EpochShuffle(dataset, self.config.seed) if shuffle else None,
                          # Each worker's seed follows data.seed, not global state.
                          generator=torch.Generator().manual_seed(self.config.seed))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.config.train_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.config.val_batch_size or self.config.train_batch_size,
                            shuffle=False)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        # Sequence-length warmup cuts training batches only; the step count comes from the trainer, so it
        # is right after a resume and the same for every batch that one optimizer step accumulates.
        if self.warmup is None or self.trainer is None or not self.trainer.training:
            return batch
        return self.warmup.split_batch(batch, self.trainer.global_step)
