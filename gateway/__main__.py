"""`python -m gateway` is the `citadel` command."""

import sys

from .cli import main

sys.exit(main())
