"""`dnamamba embed`: embeddings of FASTA records or BED intervals from an exported model.

    dnamamba embed model=EXPORT_DIR fasta=PATH out=FILE.npy [bed=PATH] [pooling=mean|none]
                   [rc_average=true] [layer=-1] [chunk_size=65536] [batch_size=8]

writes FILE (.npy or .safetensors) and FILE's stem + .tsv listing the items in row order. See
dnamamba/inference/embed.py for the array layouts.
"""
from __future__ import annotations

import importlib.resources

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dnamamba.errors import exit_on_input_error
from dnamamba.inference.embed import EmbedConfig, embed_fasta
from dnamamba.inference.runtime import config_from


def run(cfg: DictConfig | dict) -> dict:
    return embed_fasta(config_from(EmbedConfig, cfg))


# conf/ also holds pretraining's `model/` config group, and Hydra reads `model=...` as a choice in that
# group whenever the group is on the search path. Here `model` is the export directory, so
# conf/embed.yaml is registered in Hydra's ConfigStore and the search path leaves conf/ out.
_YAML = importlib.resources.files("dnamamba.conf").joinpath("embed.yaml").read_text()
ConfigStore.instance().store(name="embed", node=OmegaConf.create(_YAML))


@hydra.main(config_path=None, config_name="embed", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
