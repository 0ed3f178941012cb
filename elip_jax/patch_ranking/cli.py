"""The Patch Ranking command: one subcommand per phase of the method (docs/patch_ranking.md).

  golden           greedy golden rankings of a TFDS split's images (elip_jax.patch_ranking.golden_cli)
  train-predictor  the predictor trained on them, CLIP frozen (elip_jax.patch_ranking.train_predictor)
  tune-tokens      learnable visual/text tokens, CLIP and predictor frozen (elip_jax.patch_ranking.tune_tokens)
  benchmark-golden the golden search's key masking against gathering (elip_jax.patch_ranking.golden_benchmark)
  oracle           top-1 with each image's own golden ranking, an upper bound (elip_jax.patch_ranking.oracle)

Each subcommand's module has `main(argv) -> int` and is imported only when asked for, so `--help` and a
mistyped subcommand answer without importing JAX. Bad input: one line `error: ...`, exit code 2.
"""
from __future__ import annotations

import importlib
import sys
from typing import Optional, Sequence

from elip_jax.command_line import UsageError, run_command

PROG = "python -m elip_jax.patch_ranking"
# subcommand -> (module, what it does)
SUBCOMMANDS = {
    "golden": ("elip_jax.patch_ranking.golden_cli", "greedy golden rankings of a dataset split's images"),
    "train-predictor": ("elip_jax.patch_ranking.train_predictor", "train the patch predictor on golden rankings"),
    "tune-tokens": ("elip_jax.patch_ranking.tune_tokens", "few-shot learnable visual and text tokens"),
    "benchmark-golden": ("elip_jax.patch_ranking.golden_benchmark",
                         "golden search: key masking against gathering, measured"),
    "oracle": ("elip_jax.patch_ranking.oracle", "zero-shot top-1 with each image's own golden ranking (upper bound)"),
}


def usage() -> str:
    lines = [f"usage: {PROG} SUBCOMMAND [flags]  ({PROG} SUBCOMMAND --help for its flags)", "", "subcommands:"]
    lines += [f"  {name:16s} {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def subcommand_main(name: str):
    """The `main(argv)` of subcommand `name`, imported now; UsageError when it is unknown or not available."""
    if name not in SUBCOMMANDS:
        raise UsageError(f"unknown subcommand {name!r}: must be one of {', '.join(SUBCOMMANDS)} (see {PROG} --help)")
    module_name = SUBCOMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:  # a missing dependency inside the module is a real failure
            raise
        raise UsageError(f"subcommand {name!r} is not available in this version ({module_name} does not "
                         "exist yet)") from None
    return module.main


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    return subcommand_main(argv[0])(argv[1:])


def run(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(main, argv)
