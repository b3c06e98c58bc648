"""``python -m ncaas`` is the ``ncaas`` command."""

from .cli import main

main()
