"""The `dnamamba` command: one subcommand per pipeline, every setting a Hydra `key=value` override.

    dnamamba pretrain [key=value ...]
    dnamamba embed model=EXPORT_DIR fasta=PATH out=FILE [key=value ...]
    dnamamba score-variants model=EXPORT_DIR fasta=REF vcf=IN out=OUT [key=value ...]
    dnamamba demo [run_dir=DIR]
"""
from __future__ import annotations

import importlib
import os
import re
import sys

from dnamamba.errors import InputError
from dnamamba.signals import Interrupted, raise_on_stop_signals

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
config groups and their options). Errors are one line with exit status 2; Ctrl-C and SIGTERM stop
with one line and status 130 or 143 (pretrain first saves checkpoints/last.ckpt to resume from).

examples:
  dnamamba pretrain                                   # tiny model on the bundled lambda phage
  dnamamba pretrain data=ecoli data.fasta=ecoli.fa.gz model=small trainer.max_steps=2000 run_dir=runs/ecoli
  dnamamba embed model=runs/ecoli/export fasta=ecoli.fa.gz bed=regions.bed out=emb.npy
  dnamamba embed model=runs/ecoli/export fasta=ecoli.fa.gz bed=regions.bed out=emb.npy layers=[0,1,-1] table=parquet
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


def compose_command(command: str, overrides: list[str]):
    """The command's config composed with the overrides, as Hydra will run it.

    A misspelt key, an unknown group option or a malformed override is an InputError of one line
    (Hydra itself prints several, a hint about HYDRA_FULL_ERROR, and for a misspelt key a `+key` hint
    that only leads into the next error).
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _compose(command, overrides)
    except (HydraException, OmegaConfBaseException) as e:
        lines = []
        for line in str(e).splitlines():
            if line.startswith(("Config search path", "See https", "To append to your config")):
                break  # what follows is for Hydra developers, or the `+key` hint
            if line.strip():
                lines.append(line.strip())
        problem = " ".join(lines)
        missing = re.match(r"Could not override '([^']+)'", problem)
        if missing:
            key = missing.group(1)
            problem = f"Could not override '{key}': no such setting{_closest_key(command, overrides, key)}"
        raise InputError(command, problem) from None


def _compose(command: str, overrides: list[str]):
    from hydra import compose, initialize, initialize_config_module

    name, package = CONFIGS[command]
    context = (initialize(version_base="1.3", config_path=None) if package is None
               else initialize_config_module(config_module=package, version_base="1.3"))
    with context:
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


def _closest_key(command: str, overrides: list[str], key: str) -> str:
    """' (did you mean KEY?)' for the setting closest to `key`, among those of the config composed
    with the other overrides (they may choose groups with other keys)."""
    from omegaconf import OmegaConf

    from dnamamba.settings import did_you_mean

    others = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != key]
    try:
        cfg = _compose(command, others)
    except Exception:  # another mistake among the overrides: suggest from the defaults
        cfg = _compose(command, [])
    tree = OmegaConf.to_container(cfg, resolve=False)
    tree.pop("hydra", None)
    return did_you_mean(key, _dotted_keys(tree))


def _dotted_keys(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        yield f"{prefix}{k}"
        if isinstance(v, dict):
            yield from _dotted_keys(v, f"{prefix}{k}.")


def main(argv: list[str] | None = None) -> int:
    """Run a command; every failure the user can fix is one line on stderr, and a stop signal (Ctrl-C,
    SIGTERM) is one line too, with exit status 128 + the signal number."""
    raise_on_stop_signals()
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except Interrupted as e:
        print(f"dnamamba: interrupted by {e.name}{e.note}", file=sys.stderr)
        return e.exit_status
    except InputError as e:
        print(f"dnamamba: error: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
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
        cfg = compose_command(command, overrides)
        # Checked before Hydra starts the run: it creates the run folder, .hydra/ and a log file first.
        check = getattr(module, "check", None)
        if check is not None:
            check(cfg)
    # Hydra reads its overrides from sys.argv; the program name shows in its --help.
    sys.argv = [f"dnamamba {command}", *overrides]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
