"""`dnamamba demo`: the whole product on the bundled lambda phage genome, in a minute or two on a CPU.

pretrain (tiny model) -> embed four BED windows -> score six variants (SNVs at both contig edges, an
MNV, a deletion, an insertion), then a summary of where everything went.
"""
from __future__ import annotations

import os
from importlib import resources

import hydra
from hydra import compose
from omegaconf import DictConfig

from dnamamba.errors import exit_on_input_error
from dnamamba.reporting import console

from . import embed, pretrain, score_variants


def demo_file(name: str) -> str:
    return str(resources.files("dnamamba.resources") / name)


def run(cfg: DictConfig) -> dict:
    run_dir = os.path.abspath(cfg.run_dir)
    console.rule("1/3 pretrain on lambda phage")
    pre = pretrain.run(compose("pretrain", overrides=[f"run_dir={run_dir}", *cfg.pretrain_overrides]))
    export = pre["export_dir"]
    console.rule("2/3 embed BED windows")
    emb_out = os.path.join(run_dir, "embeddings.npy")
    # embed and score-variants take their settings as plain dicts here: composing them inside this
    # Hydra run would read `model=` as a choice of the pretraining `model/` group.
    emb = embed.run({"model": export, "fasta": demo_file("lambda_phage.fa.gz"),
                     "bed": demo_file("lambda_demo.bed"), "out": emb_out})
    console.rule("3/3 score variants")
    vcf_out = os.path.join(run_dir, "variants.scored.vcf")
    score = score_variants.run({"model": export, "fasta": demo_file("lambda_phage.fa.gz"),
                                "vcf": demo_file("lambda_demo.vcf"), "out": vcf_out})
    console.rule("demo summary")
    for row in pre["val_history"]:
        console.print(f"epoch {row['epoch']:>3}  step {row['step']:>5}  val bits/base {row['val_bits_per_base']:.4f}")
    console.print(f"model export: {export}")
    console.print(f"embeddings:   {emb_out} (+ .tsv)")
    console.print(f"scored VCF:   {vcf_out}")
    return {"pretrain": pre, "embed": emb, "score_variants": score}


@hydra.main(config_path="../conf", config_name="demo", version_base="1.3")
def main(cfg: DictConfig):
    return exit_on_input_error(run, cfg)


if __name__ == "__main__":
    main()
