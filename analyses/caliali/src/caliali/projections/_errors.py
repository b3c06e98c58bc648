"""Errors raised while computing per-session projections."""

from __future__ import annotations

from caliali.exceptions import InputError

__all__ = ["ProjectionError"]


class ProjectionError(InputError):
    """Projection inputs are unusable; the message names the argument or the
    session and says how to fix it."""
