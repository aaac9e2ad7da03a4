"""`dnamamba build-variant-benchmark`: labelled SNVs in the CDS features of a GenBank file, split by record.

    dnamamba build-variant-benchmark [gbk=FILE.gbk] out=DIR [positions_per_cds=10] [seed=0] [strict=true]

See dnamamba/data/variant_benchmark.py for the files written and how labels are defined.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from dnamamba.data.variant_benchmark import BuildVariantBenchmarkConfig, build_variant_benchmark
from dnamamba.errors import exit_on_input_error
from dnamamba.inference.runtime import config_from

from . import store_packaged_config


def run(cfg: DictConfig | dict) -> dict:
    return build_variant_benchmark(config_from(BuildVariantBenchmarkConfig, cfg))


store_packaged_config("build_variant_benchmark")


@hydra.main(config_path=None, config_name="build_variant_benchmark", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
