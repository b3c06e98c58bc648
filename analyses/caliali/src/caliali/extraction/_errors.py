"""Errors raised by source extraction."""

from caliali.exceptions import InputError

__all__ = ["ExtractionError"]


class ExtractionError(InputError):
    """Source extraction cannot run as asked: bad input or options, or nothing to extract.

    The message names what is wrong and how to fix it (exit code 2 on the command line).
    """
