"""`dnamamba embed`: embeddings of FASTA records or BED intervals from an exported model.

    dnamamba embed model=EXPORT_DIR fasta=PATH out=FILE.npy [bed=PATH] [pooling=mean|none]
                   [rc_average=true] [layer=-1 | layers=[0,1,-1]] [table=tsv|parquet]
                   [chunk_size=65536] [batch_size=8]

writes FILE (.npy or .safetensors) and FILE's stem + .tsv (or .parquet) listing the items in row order.
See dnamamba/inference/embed.py for the array layouts.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnamamba.errors import exit_on_input_error
from dnamamba.inference.embed import EmbedConfig, embed_fasta
from dnamamba.inference.runtime import config_from

from . import store_packaged_config


def run(cfg: DictConfig | dict) -> dict:
    return embed_fasta(config_from(EmbedConfig, cfg))


store_packaged_config("embed")


@hydra.main(config_path=None, config_name="embed", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
