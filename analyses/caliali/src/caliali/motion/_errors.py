"""Errors raised by downsampling and within-session motion correction."""

from __future__ import annotations

from caliali.exceptions import InputError

__all__ = ["MotionError"]


class MotionError(InputError):
    """Motion-correction inputs are unusable or an estimate failed; the
    message names the argument or the session and says how to fix it."""
