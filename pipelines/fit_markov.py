"""`dnamamba fit-markov`: an order-k Markov model of a FASTA, for score-variants' model=.

    dnamamba fit-markov fasta=TRAIN.fa out=DIR [k=6] [alpha=1.0] [both_strands=true]

See dnamamba/inference/markov.py.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnamamba.errors import exit_on_input_error
from dnamamba.inference.markov import FitMarkovConfig, fit_markov
from dnamamba.inference.runtime import config_from

from . import store_packaged_config


def run(cfg: DictConfig | dict) -> dict:
    return fit_markov(config_from(FitMarkovConfig, cfg))


store_packaged_config("fit_markov")


@hydra.main(config_path=None, config_name="fit_markov", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
