"""Baselines for the chr20 quality experiment's validation region, in bits per base (`baselines.py`).

    python bench/chr20_baselines.py data/hs37_chr20.fa.gz > bench/results/chr20_baselines.json

The region is the one `data=chr20` holds out (`data.val_acgt_bases=5000000`): the shortest tail of
chromosome 20 that holds its last 5,000,000 A/C/G/T bases, with the N run that ends the chromosome.
The Markov models and the "given the rest" compressors see everything before it, the training part.
"""
import argparse
import json
import time

from baselines import COMPRESSORS, acgt_count, compressor_bits, markov_bits
from dnamamba.data.fasta import FastaFile
from dnamamba.data.windows import acgt_tail_start


def main(path: str, record: str, val_bases: int, orders: list[int], alpha: float) -> dict:
    start_time = time.time()
    with FastaFile(path) as fa:
        length = fa.length(record)
        start = acgt_tail_start(fa, record, val_bases)
        rest, region = fa.fetch(record, 0, start), fa.fetch(record, start, length)
    out = {"fasta": path, "record": record, "held_out_start": start, "held_out_end": length,
           "held_out_bases": acgt_count(region), "training_bases": acgt_count(rest),
           "markov_alpha": alpha}
    for k in orders:
        out[f"markov order {k}"] = markov_bits(rest, rest, region, k, alpha)
    out.update(compressor_bits(rest, region, tuple(COMPRESSORS)))
    out["wall_time_s"] = round(time.time() - start_time, 1)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fasta")
    parser.add_argument("--record", default="20")
    parser.add_argument("--val-bases", type=int, default=5_000_000, help="A/C/G/T bases held out (default 5000000)")
    parser.add_argument("--orders", default="2,4,6,8,10,11,12", help="Markov orders (default 2,4,6,8,10,11,12)")
    parser.add_argument("--alpha", type=float, default=1.0, help="add-alpha smoothing of the Markov models")
    a = parser.parse_args()
    print(json.dumps(main(a.fasta, a.record, a.val_bases, [int(k) for k in a.orders.split(",")], a.alpha), indent=2))
