"""Baselines for the E. coli held-out tail, in bits per base, to read the model's val bits/base (`baselines.py`).

    python bench/ecoli_baselines.py data/ecoli_k12_mg1655.fa.gz > bench/results/ecoli_baselines.json

The held-out range is the last 10% of the record, as in `data=ecoli` and `experiment=ecoli_10min`.
The Markov models and the "given the rest" compressors see the other 90%.
"""
import json
import sys

from baselines import acgt_count, compressor_bits, markov_bits
from dnamamba.data.fasta import FastaFile
from dnamamba.data.windows import held_out_start

MARKOV_ORDERS = (2, 4, 6, 8, 10)
MARKOV_ALPHA = 1.0


def main(path: str) -> dict:
    with FastaFile(path) as fa:
        name = fa.names[0]
        length = fa.lengths[name]
        start = held_out_start(length, 0.1)
        rest, tail = fa.fetch(name, 0, start), fa.fetch(name, start, length)
    out = {"record": name, "held_out_start": start, "held_out_bases": acgt_count(tail)}
    out.update(compressor_bits(rest, tail))
    out["markov_alpha"] = MARKOV_ALPHA
    for k in MARKOV_ORDERS:
        out[f"markov order {k}"] = markov_bits(rest, rest, tail, k, MARKOV_ALPHA)
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=2))
