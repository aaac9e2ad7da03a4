"""`dnamamba classify-variants`: class probabilities for every ALT allele of a VCF, from a classifier export.

    dnamamba classify-variants model=EXPORT fasta=REF vcf=IN out=OUT [strict=true] [info_prefix=DNAMAMBA_P_]

OUT is the input with one INFO field per class (.vcf, .vcf.gz, .bcf) or a table (.tsv, .parquet).
See dnamamba/inference/classify.py.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnamamba.errors import exit_on_input_error
from dnamamba.inference.classify import ClassifyVariantsConfig, classify_vcf
from dnamamba.inference.runtime import config_from

from . import store_packaged_config


def run(cfg: DictConfig | dict) -> dict:
    return classify_vcf(config_from(ClassifyVariantsConfig, cfg))


store_packaged_config("classify_variants")


@hydra.main(config_path=None, config_name="classify_variants", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
