"""`dnamamba score-variants`: a zero-shot log-likelihood ratio for every ALT allele of a VCF.

    dnamamba score-variants model=EXPORT_DIR fasta=REF vcf=IN out=OUT [window=1024] [rc_average=true]
                            [strict=true] [info_field=DNAMAMBA_LLR]

OUT is a copy of IN with the score in INFO (.vcf, .vcf.gz, .bcf) or a table (.tsv). Unscorable
records are kept without a score and counted by reason, unless strict=true. See
dnamamba/inference/variants.py for how the windows and the score are defined.
"""
from __future__ import annotations

import importlib.resources

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from dnamamba.errors import exit_on_input_error
from dnamamba.inference.runtime import config_from
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf


def run(cfg: DictConfig | dict) -> dict:
    return score_vcf(config_from(ScoreVariantsConfig, cfg))


# conf/ also holds pretraining's `model/` config group, and Hydra reads `model=...` as a choice in that
# group whenever the group is on the search path. Here `model` is the export directory, so
# conf/score_variants.yaml is registered in Hydra's ConfigStore and the search path leaves conf/ out.
_YAML = importlib.resources.files("dnamamba.conf").joinpath("score_variants.yaml").read_text()
ConfigStore.instance().store(name="score_variants", node=OmegaConf.create(_YAML))


@hydra.main(config_path=None, config_name="score_variants", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
