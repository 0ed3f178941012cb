"""`python -m elip_jax.patch_ranking {golden,train-predictor,tune-tokens} ...`: see elip_jax/patch_ranking/cli.py."""
import sys

from elip_jax.patch_ranking.cli import run

if __name__ == "__main__":
    sys.exit(run())
