import sys

from elip_jax.convert.cli import main

sys.exit(main())
