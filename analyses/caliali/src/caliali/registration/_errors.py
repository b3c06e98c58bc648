"""Errors raised by inter-session alignment."""

from __future__ import annotations

from caliali.exceptions import InputError

__all__ = ["AlignmentError"]


class AlignmentError(InputError):
    """Alignment inputs are unusable or an estimate failed; the message says
    which session or argument and how to fix it."""
