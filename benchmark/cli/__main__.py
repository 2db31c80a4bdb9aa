"""`python -m dermbench.cli`: the same as the `dermbench` command."""

import sys

from dermbench.cli import main

sys.exit(main())
