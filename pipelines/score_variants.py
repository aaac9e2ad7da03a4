"""`dnamamba score-variants`: a zero-shot log-likelihood ratio for every ALT allele of a VCF or table.

    dnamamba score-variants model=EXPORT_DIR fasta=REF vcf=IN out=OUT [window=1024 (at least 16)] [rc_average=true]
                            [reduce=sum|mean] [context=window|tile] [regions=...] [shard=i/n]
                            [strict=true] [info_field=DNAMAMBA_LLR]

IN is a VCF/BCF or a .tsv/.csv/.parquet table with chrom, pos, ref, alt columns. OUT is a copy of a
VCF input with the score in INFO (.vcf, .vcf.gz, .bcf) or a table (.tsv, .csv, .parquet) with score
and status columns. Unscorable records are kept without a score and counted by reason, unless
strict=true. See dnamamba/inference/variants.py for how the windows and the score are defined.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnamamba.errors import exit_on_input_error
from dnamamba.inference.runtime import config_from
from dnamamba.inference.variants import ScoreVariantsConfig, score_vcf
from dnamamba.io import refuse_overwriting_inputs

from . import store_packaged_config


def run(cfg: DictConfig | dict) -> dict:
    cfg = config_from(ScoreVariantsConfig, cfg)
    regions = cfg.regions if isinstance(cfg.regions, str) else None  # a .bed file, or a region
    refuse_overwriting_inputs([cfg.out, cfg.out + ".tbi"], [cfg.vcf, cfg.fasta, cfg.model, regions])
    return score_vcf(cfg)


store_packaged_config("score_variants")


@hydra.main(config_path=None, config_name="score_variants", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
