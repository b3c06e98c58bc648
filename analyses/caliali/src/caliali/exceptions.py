"""Errors raised by caliali, in words a scientist can act on.

Every error derives from :class:`CalialiError` and carries the exit code the
command line uses; ``caliali.cli`` renders them in one place, never as a
traceback. Library errors (OpenCV, tifffile, h5py, zarr, pynwb) are translated
at the boundary with ``raise ... from``.

Tree::

    CalialiError
    ├── InputError             bad user input: files, options, manifests (exit 2)
    │   ├── VideoReadError     corrupt, truncated or empty video file
    │   ├── UnsupportedFormatError
    │   └── ManifestError      experiment manifest or folder cannot be used
    ├── MemoryBudgetError      the memory budget cannot hold one frame's work
    ├── StoreError             an intermediate store is unusable
    └── ScoreError             result / ground truth cannot be compared
"""

from __future__ import annotations

__all__ = [
    "CalialiError",
    "InputError",
    "VideoReadError",
    "UnsupportedFormatError",
    "ManifestError",
    "MemoryBudgetError",
    "StoreError",
    "ScoreError",
]


class CalialiError(Exception):
    """Root of every error raised by caliali."""

    exit_code = 1


class InputError(CalialiError, ValueError):
    """An input (file, option, manifest) cannot be used as given."""

    exit_code = 2


class VideoReadError(InputError):
    """A video file is corrupt, truncated, empty or otherwise unreadable."""


class UnsupportedFormatError(InputError):
    """A file's format is not one caliali reads."""


class ManifestError(InputError):
    """An experiment manifest or folder does not describe usable sessions."""


class MemoryBudgetError(InputError):
    """The memory budget is too small (or malformed) for the work asked."""


class StoreError(CalialiError):
    """An intermediate zarr store cannot be created, opened or resumed."""


class ScoreError(InputError):
    """A result and a ground truth cannot be compared."""
