"""Errors raised by source extraction."""

__all__ = ["ExtractionError"]


class ExtractionError(ValueError):
    """Invalid input to, or an unrecoverable failure of, source extraction.

    The message names what is wrong and how to fix it.
    """
