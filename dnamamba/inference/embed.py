"""Embeddings of FASTA records or BED intervals from any layer of an exported model.

A sequence longer than `chunk_size` is read in chunks with the model's recurrent state carried from
one chunk to the next, so the result is the same as one pass over the whole sequence (up to float
rounding) while memory stays bounded by the chunk.

Outputs, chosen by the extension of `out`:
- pooling=mean: one (d_model,) vector per item. `.npy`: a float32 array (n_items, d_model);
  `.safetensors`: the same array as tensor "embeddings".
- pooling=none: one (length, d_model) matrix per item. `.npy`: a float32 array
  (n_items, max_length, d_model), zero-padded after each item's length; `.safetensors`: one tensor per
  item, keyed by its row number ("0", "1", ...).
- layers=[...] reads several layers in the same pass and puts a layer axis after the item axis, in the
  order given: (n_items, n_layers, d_model) with pooling=mean, (n_items, n_layers, max_length, d_model)
  and per item (n_layers, length, d_model) with pooling=none.
Beside `out`, `<out stem>.tsv` (or `.parquet` with table=parquet) lists the items in row order: name,
contig, start (0-based), end, length. With pooling=none, `length` is the number of valid rows of the
item's matrix.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save_file

from .. import alphabet
from ..data.bed import read_bed
from ..data.fasta import FastaFile
from ..errors import InputError
from ..io import atomic_path, check_writable, refuse_overwriting_inputs
from ..model import LayerState, MambaLM, load_export
from .runtime import SETTINGS, autocast, check_choice, note, progress_bar, resolve_device, write_errors

POOLINGS = ("mean", "none")
SOFT_MASK_MODES = ("keep", "upper")
OUTPUT_EXTENSIONS = (".npy", ".safetensors")
TABLE_FORMATS = ("tsv", "parquet")
TABLE_COLUMNS = ("name", "contig", "start", "end", "length")
_COMPLEMENT_U8 = alphabet.COMPLEMENT.numpy().astype(np.uint8)  # (256,) byte -> complement byte


@dataclass
class EmbedConfig:
    """`dnamamba embed` settings; conf/embed.yaml fills in the same keys."""

    model: str = "???"  # export directory (config.json + model.safetensors)
    fasta: str = "???"
    out: str = "???"  # .npy or .safetensors; the item table goes to <out stem>.tsv (or .parquet)
    bed: Optional[str] = None  # one item per interval; without it, one item per FASTA record
    records: Optional[List[str]] = None  # without bed: only these records, in this order
    pooling: str = "mean"  # mean | none (per position)
    rc_average: bool = False  # average with the reverse complement's embedding (re-aligned per position)
    layer: int = -1  # -1: after the final norm; 0..n_layer-1: output of that block
    layers: Optional[List[int]] = None  # several layers in one pass, e.g. [0,1,-1]: adds a layer axis
    soft_mask: str = "keep"  # keep the FASTA's case, or upper: fold soft-masked bases to uppercase
    batch_size: int = 8  # sequences per forward pass
    chunk_size: int = 65536  # longer sequences are read in chunks of this many bases, state carried
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 (autocast)
    table: str = "tsv"  # tsv | parquet: the format of the item table
    cache_dir: Optional[str] = None  # decompressed FASTA and indexes; default $DNAMAMBA_CACHE
    progress: bool = True

    def validate(self) -> None:
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("soft_mask", self.soft_mask, SOFT_MASK_MODES)
        check_choice("table", self.table, TABLE_FORMATS)
        if self.layers is not None:
            if self.layer != -1:
                raise InputError(SETTINGS, "give either layer= or layers=, not both")
            if not self.layers or len(set(self.layers)) != len(self.layers):
                raise InputError(SETTINGS, f"layers={self.layers} must list one or more layers, each once")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise InputError(SETTINGS, "batch_size and chunk_size must be at least 1")
        if self.bed is not None and self.records is not None:
            raise InputError(self.bed, "give either bed= or records=, not both")
        output_extension(self.out)


def output_extension(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_EXTENSIONS or not os.path.splitext(os.path.basename(path))[0]:
        raise InputError(path, f"output must end in {' or '.join(OUTPUT_EXTENSIONS)}")
    return ext


def table_path(out: str, table: str = "tsv") -> str:
    """The item table written beside `out`: same folder and stem, extension .tsv or .parquet."""
    return os.path.splitext(out)[0] + "." + table


@dataclass(frozen=True)
class Item:
    """One embedded sequence: bases [start, end) of FASTA record `contig`."""

    name: str
    contig: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


def _trim_state(state: list[LayerState], rows: int) -> list[LayerState]:
    return [LayerState(conv=s.conv[:rows], ssm=s.ssm[:rows]) for s in state]


@torch.no_grad()
def embed_tokens(model: MambaLM, sequences: Sequence[torch.Tensor], layer: int | Sequence[int] = -1,
                 pooling: str = "mean", rc_average: bool = False, chunk_size: int = 65536,
                 device: torch.device | str | None = None, precision: str = "fp32",
                 on_progress=None) -> list[np.ndarray]:
    """Embed one batch of token sequences (each (L_i,) long).

    Token ids are bytes, so sequences may come as uint8 or long tensors.
    Returns per sequence a float32 (d_model,) array (pooling=mean) or (L_i, d_model) (pooling=none);
    with a list of layers, all read in the same pass, (n_layers, d_model) or (n_layers, L_i, d_model).
    Sequences are right-padded into one batch and read `chunk_size` positions at a time with the
    per-layer state carried over; rows whose sequence has ended are dropped from later chunks.
    """
    check_choice("pooling", pooling, POOLINGS)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    # Tokens wait on the host as bytes (one byte a base, a whole chromosome included); each chunk becomes
    # long ids only on the device.
    rows = []
    for seq in sequences:
        if len(seq) == 0:
            raise ValueError("cannot embed an empty sequence")
        rows.append(seq.cpu().to(torch.uint8))
        if rc_average:
            rows.append(torch.from_numpy(_COMPLEMENT_U8[rows[-1].numpy()][::-1].copy()))
    lengths = torch.tensor([len(r) for r in rows])  # (R,)
    order = torch.argsort(lengths, descending=True, stable=True)  # longest first: active rows are a prefix
    lengths_sorted = lengths[order]
    L = int(lengths_sorted[0])
    tokens = torch.zeros(len(rows), L, dtype=torch.uint8)  # (R, L), PAD_ID on the right
    for i, r in enumerate(order.tolist()):
        tokens[i, :len(rows[r])] = rows[r]
    d = model.cfg.d_model
    layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
    K = len(layers)
    if pooling == "mean":
        sums = torch.zeros(len(rows), K, d, dtype=torch.float64, device=device)  # (R, K, d)
    else:
        full = torch.zeros(len(rows), K, L, d, dtype=torch.float32)  # (R, K, L, d) on the host
    state = None
    for c0 in range(0, L, chunk_size):
        active = int((lengths_sorted > c0).sum())
        chunk = tokens[:active, c0:c0 + chunk_size].to(device).long()  # (A, l)
        if state is not None and active < state[0].ssm.shape[0]:
            state = _trim_state(state, active)
        with autocast(device, precision):
            hs, state = model.hidden_states(chunk, layers, state=state, return_state=True)  # K x (A, l, d)
        h = torch.stack(hs, dim=1)  # (A, K, l, d)
        pos = c0 + torch.arange(chunk.shape[1], device=device)  # (l,)
        valid = pos[None, :] < lengths_sorted[:active, None].to(device)  # (A, l)
        if pooling == "mean":
            sums[:active] += (h.double() * valid[:, None, :, None]).sum(2)
        else:
            full[:active, :, c0:c0 + chunk.shape[1]] = h.float().cpu()
        if on_progress is not None:
            on_progress(int(valid.sum()))
    per_row: list[np.ndarray] = [None] * len(rows)  # type: ignore[list-item]
    for i, r in enumerate(order.tolist()):
        n = int(lengths_sorted[i])
        if pooling == "mean":
            per_row[r] = (sums[i] / n).float().cpu().numpy()  # (K, d)
        else:
            per_row[r] = full[i, :, :n].numpy()  # (K, n, d)
    if rc_average:
        # Position j of the reverse complement is position L-1-j of the forward strand.
        per_row = [(fwd + (rc if pooling == "mean" else rc[:, ::-1])) / 2
                   for fwd, rc in zip(per_row[0::2], per_row[1::2])]
    return per_row if isinstance(layer, (list, tuple)) else [row[0] for row in per_row]


def _items(cfg: EmbedConfig, fasta: FastaFile) -> list[Item]:
    if cfg.bed is not None:
        return [Item(iv.name or f"{iv.chrom}:{iv.start}-{iv.end}", iv.chrom, iv.start, iv.end)
                for iv in read_bed(cfg.bed, fasta)]
    names = list(cfg.records) if cfg.records is not None else fasta.names
    if not names:
        raise InputError(fasta.path, "records=[] selects nothing to embed")
    items = [Item(name, name, 0, fasta.length(name)) for name in names]
    for item in items:
        if item.length == 0:
            raise InputError(fasta.path, "record has no bases to embed", record=item.name)
    return items


def _check_layers(model: MambaLM, cfg: EmbedConfig) -> None:
    n = model.cfg.n_layer
    for layer in cfg.layers if cfg.layers is not None else [cfg.layer]:
        if not -n - 1 <= layer <= n:
            key = "layers" if cfg.layers is not None else "layer"
            raise InputError(SETTINGS, f"{key}: layer={layer} is out of range for a {n}-layer model "
                                       f"(-1 is the final output; 0..{n - 1} are block outputs)")


def embed_fasta(cfg: EmbedConfig) -> dict:
    """Embed the items of `cfg` and write `cfg.out` plus its item table; returns a summary dict."""
    t0 = time.time()
    cfg.validate()
    ext = output_extension(cfg.out)
    table = table_path(cfg.out, cfg.table)
    for path in (cfg.out, table):
        check_writable(path)
    refuse_overwriting_inputs([cfg.out, table], [cfg.fasta, cfg.bed, cfg.model])
    device = resolve_device(cfg.device)
    model = load_export(cfg.model, device)
    _check_layers(model, cfg)
    layer = cfg.layers if cfg.layers is not None else cfg.layer
    with FastaFile(cfg.fasta, cache_dir=cfg.cache_dir) as fasta:
        items = _items(cfg, fasta)
        d = model.cfg.d_model
        n_tokens = sum(it.length for it in items) * (2 if cfg.rc_average else 1)
        order = sorted(range(len(items)), key=lambda k: -items[k].length)  # similar lengths share a batch
        layer_axis = () if cfg.layers is None else (len(cfg.layers),)
        with write_errors(cfg.out), atomic_path(cfg.out) as tmp, atomic_path(table) as tmp_table:
            _write_table(tmp_table, items, cfg.table)
            if cfg.pooling == "mean":
                result = np.zeros((len(items), *layer_axis, d), dtype=np.float32)  # (n_items, [K,] d)
            elif ext == ".npy":
                # Written in place so the padded array never has to fit in memory at once.
                longest = max(it.length for it in items)
                result = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                   shape=(len(items), *layer_axis, longest, d))
            else:
                result = {}
            with progress_bar(cfg.progress, "bases") as progress:
                task = progress.add_task("embedding", total=n_tokens)
                for b in range(0, len(order), cfg.batch_size):
                    idx = order[b:b + cfg.batch_size]
                    seqs = []
                    for k in idx:
                        it = items[k]
                        seq = fasta.fetch(it.contig, it.start, it.end)
                        seq = seq.upper() if cfg.soft_mask == "upper" else seq
                        seqs.append(torch.frombuffer(bytearray(seq), dtype=torch.uint8))
                    embs = embed_tokens(model, seqs, layer, cfg.pooling, cfg.rc_average, cfg.chunk_size,
                                        device, cfg.precision,
                                        on_progress=lambda n: progress.advance(task, n))
                    for k, emb in zip(idx, embs):
                        if isinstance(result, dict):
                            result[str(k)] = torch.from_numpy(np.ascontiguousarray(emb))
                        elif cfg.pooling == "mean":
                            result[k] = emb
                        else:
                            result[k, ..., :emb.shape[-2], :] = emb  # the item's positions; padding stays 0
            _write_array(tmp, ext, result, cfg)
            del result  # closes the memory map before the file is renamed into place
    kind = ("interval" if cfg.bed else "record") + ("" if len(items) == 1 else "s")
    note(f"embedded {len(items)} {kind} ({n_tokens:,} bases"
         f"{' over both strands' if cfg.rc_average else ''}) -> {cfg.out} and {table}")
    return {"items": len(items), "d_model": d, "bases": n_tokens, "out": cfg.out, "table": table,
            "wall_time_s": round(time.time() - t0, 3)}


def _write_table(path: str, items: Sequence[Item], table: str) -> None:
    if table == "parquet":
        types = (pa.string(), pa.string(), pa.int64(), pa.int64(), pa.int64())
        columns = {col: pa.array([getattr(it, col) for it in items], kind) for col, kind in zip(TABLE_COLUMNS, types)}
        pq.write_table(pa.table(columns), path)
        return
    with open(path, "w") as f:
        f.write("\t".join(TABLE_COLUMNS) + "\n")
        for it in items:
            f.write(f"{it.name}\t{it.contig}\t{it.start}\t{it.end}\t{it.length}\n")


def _write_array(tmp: str, ext: str, result, cfg: EmbedConfig) -> None:
    meta = {"format": "dnamamba-embeddings", "model": os.path.abspath(cfg.model), "pooling": cfg.pooling,
            "rc_average": str(cfg.rc_average).lower(), "soft_mask": cfg.soft_mask}
    if cfg.layers is None:
        meta["layer"] = str(cfg.layer)
    else:
        meta["layers"] = ",".join(map(str, cfg.layers))
    if isinstance(result, np.memmap):
        result.flush()
    elif ext == ".npy":
        np.save(tmp, result)
    elif isinstance(result, dict):
        save_file(result, tmp, metadata=meta)
    else:
        save_file({"embeddings": torch.from_numpy(result)}, tmp, metadata=meta)
