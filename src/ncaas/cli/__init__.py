"""The ``ncaas`` command line.

Its commands (:mod:`.app`), where they act (:mod:`.backend`), what they show (:mod:`.display`).
"""

from .app import app, main

__all__ = ["app", "main"]
