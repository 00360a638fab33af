"""`python -m vit_jax.analysis`: see `vit_jax.analysis.run`."""

import sys

from vit_jax.analysis.run import main

sys.exit(main())
