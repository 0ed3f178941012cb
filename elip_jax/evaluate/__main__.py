"""`python -m elip_jax.evaluate ...`: see elip_jax/evaluate/cli.py."""
from elip_jax.evaluate.cli import main

if __name__ == "__main__":
    main()
