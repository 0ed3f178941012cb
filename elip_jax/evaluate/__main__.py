"""`python -m elip_jax.evaluate ...`: see elip_jax/evaluate/cli.py."""
import sys

from elip_jax.evaluate.cli import run

if __name__ == "__main__":
    sys.exit(run())
