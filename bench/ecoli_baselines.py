"""Compression baselines for the E. coli held-out tail, in bits per base, to read the model's val bits/base.

    python bench/ecoli_baselines.py data/ecoli_k12_mg1655.fa.gz

The held-out range is the last 10% of the record, as in `experiment=ecoli_10min`. "alone" compresses the
tail by itself; "given the rest" is size(rest + tail) - size(rest), the compressor's cost of the tail once
it has seen the training part (what the model also had).
"""
import bz2
import gzip
import json
import lzma
import sys

from dnamamba.data.fasta import FastaFile
from dnamamba.data.windows import held_out_start

COMPRESSORS = {"gzip -9": lambda b: gzip.compress(b, 9), "bzip2 -9": lambda b: bz2.compress(b, 9),
               "xz -9e": lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)}


def main(path: str) -> dict:
    with FastaFile(path) as fa:
        name = fa.names[0]
        length = fa.lengths[name]
        start = held_out_start(length, 0.1)
        rest, tail = fa.fetch(name, 0, start).upper(), fa.fetch(name, start, length).upper()
    n = sum(tail.count(c) for c in b"ACGT")
    out = {"record": name, "held_out_start": start, "held_out_bases": n}
    for label, fn in COMPRESSORS.items():
        out[f"{label} alone"] = len(fn(tail)) * 8 / n
        out[f"{label} given the rest"] = (len(fn(rest + tail)) - len(fn(rest))) * 8 / n
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=2))
