"""``python -m framestats INPUT --config CONFIG --out OUTPUT``."""

import sys

from .cli import main

sys.exit(main())
