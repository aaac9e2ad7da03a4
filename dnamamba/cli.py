"""The `dnamamba` command: one subcommand per pipeline, every setting a Hydra `key=value` override.

    dnamamba pretrain [key=value ...]
    dnamamba embed model=EXPORT_DIR fasta=PATH out=FILE [key=value ...]
    dnamamba score-variants model=EXPORT_DIR fasta=REF vcf=IN out=OUT [key=value ...]
    dnamamba demo [run_dir=DIR]
"""
from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "pretrain": ("dnamamba.pipelines.pretrain", "train a causal LM on a FASTA and export it"),
    "embed": ("dnamamba.pipelines.embed", "embed FASTA records or BED intervals (.npy / .safetensors)"),
    "score-variants": ("dnamamba.pipelines.score_variants", "zero-shot log-likelihood ratio per VCF variant"),
    "demo": ("dnamamba.pipelines.demo", "pretrain on the bundled lambda phage, then embed and score"),
    "build-variant-benchmark": ("dnamamba.pipelines.build_variant_benchmark",
                                "labelled SNVs (synonymous/missense/nonsense/stop_lost) from a GenBank file"),
    "fit-markov": ("dnamamba.pipelines.fit_markov", "an order-k Markov baseline that score-variants takes as model="),
    "finetune": ("dnamamba.pipelines.finetune", "train a variant or sequence classifier on a pretrained export"),
    "classify-variants": ("dnamamba.pipelines.classify_variants", "class probabilities per VCF variant"),
}
# Each command's config: its name, and the package it is read from (None: Hydra's ConfigStore, where
# embed and score-variants register theirs; see dnamamba/pipelines/__init__.py).
CONFIGS = {"pretrain": ("pretrain", "dnamamba.conf"), "demo": ("demo", "dnamamba.conf"),
           "embed": ("embed", None), "score-variants": ("score_variants", None),
           "build-variant-benchmark": ("build_variant_benchmark", None), "fit-markov": ("fit_markov", None),
           "finetune": ("finetune", "dnamamba.conf"), "classify-variants": ("classify_variants", None)}

USAGE = """usage: dnamamba COMMAND [key=value ...]

Byte-level Mamba language models for long DNA.

commands:
{commands}

Each command is configured by Hydra: settings are key=value overrides of its config
(`dnamamba COMMAND --cfg job` prints the resolved config, `dnamamba COMMAND --help` lists the
config groups and their options).

examples:
  dnamamba pretrain                                   # tiny model on the bundled lambda phage
  dnamamba pretrain data=ecoli data.fasta=ecoli.fa.gz model=small trainer.max_steps=2000 run_dir=runs/ecoli
  dnamamba embed model=runs/ecoli/export fasta=ecoli.fa.gz bed=regions.bed out=emb.npy
  dnamamba score-variants model=runs/ecoli/export fasta=ref.fa vcf=calls.vcf.gz out=scored.vcf.gz
"""


def usage() -> str:
    width = max(len(c) for c in COMMANDS)
    return USAGE.format(commands="\n".join(f"  {c:<{width}}  {h}" for c, (_, h) in COMMANDS.items()))


def leave_a_core_free() -> None:
    """Run torch on all cores but one, unless OMP_NUM_THREADS says otherwise.

    OpenMP threads spin at every barrier, so when one of torch's threads shares a core with another busy
    process every small op waits for it: on 2 cores beside one other busy process, a training step of the
    demo model took 0.5 s with 1 thread and 0.4-5.9 s (erratic) with 2.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))


def override_problem(command: str, overrides: list[str]) -> str | None:
    """Compose the command's config with the overrides; a misspelt key, an unknown group option or a
    malformed override comes back as one line (Hydra itself prints several and a hint about
    HYDRA_FULL_ERROR)."""
    from hydra import compose, initialize, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    name, package = CONFIGS[command]
    context = (initialize(version_base="1.3", config_path=None) if package is None
               else initialize_config_module(config_module=package, version_base="1.3"))
    try:
        with context:
            compose(config_name=name, overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        lines = []
        for line in str(e).splitlines():
            if line.startswith(("Config search path", "See https")):
                break  # what follows is for Hydra developers, not for the user's typo
            if line.strip():
                lines.append(line.strip())
        return " ".join(lines)
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from dnamamba import __version__

        print(f"dnamamba {__version__}")
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"dnamamba: error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    leave_a_core_free()
    module = importlib.import_module(COMMANDS[command][0])
    if not any(arg.startswith("-") for arg in overrides):  # Hydra's own flags (--help, --cfg) pass through
        problem = override_problem(command, overrides)
        if problem is not None:
            print(f"dnamamba: error: {command}: {problem}", file=sys.stderr)
            return 2
    # Hydra reads its overrides from sys.argv; the program name shows in its --help.
    sys.argv = [f"dnamamba {command}", *overrides]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
