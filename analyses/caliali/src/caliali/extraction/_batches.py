"""Temporal batches sized by a memory budget, never straddling a session boundary."""

from __future__ import annotations

import math
import re
from typing import NamedTuple

import numpy as np

from ._errors import ExtractionError

__all__ = ["Batch", "parse_memory_budget", "plan_batches", "check_session_bounds"]

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1e3,
    "KB": 1e3,
    "KIB": 2**10,
    "M": 1e6,
    "MB": 1e6,
    "MIB": 2**20,
    "G": 1e9,
    "GB": 1e9,
    "GIB": 2**30,
    "T": 1e12,
    "TB": 1e12,
    "TIB": 2**40,
}

# Frame-sized float32 buffers alive at once in an iteration pass: the batch,
# the model A C, the residual, the ring regressors (n_sectors at 1/bg_ssub^2),
# the background, and slack for temporaries.
BATCH_COPIES = 6
MIN_BATCH_FRAMES = 100


class Batch(NamedTuple):
    """Frames ``[start, stop)`` of session ``session``."""

    start: int
    stop: int
    session: int


def parse_memory_budget(memory_budget: int | float | str) -> int:
    """Bytes from an int or a string such as ``"2GB"``, ``"512MiB"``."""
    if isinstance(memory_budget, (int, float)) and not isinstance(memory_budget, bool):
        value = float(memory_budget)
    else:
        match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(memory_budget))
        unit = match.group(2).upper() if match else None
        if match is None or unit not in _UNITS:
            raise ExtractionError(
                f"memory_budget {memory_budget!r} is not understood; give bytes or a size like '2GB' or '512MiB'"
            )
        value = float(match.group(1)) * _UNITS[unit]
    if value <= 0:
        raise ExtractionError(f"memory_budget must be positive, got {memory_budget!r}")
    return int(value)


def check_session_bounds(session_bounds, n_frames: int) -> np.ndarray:
    """Validate ``session_bounds`` (n_sessions + 1 increasing frame indices from 0 to n_frames)."""
    if session_bounds is None:
        return np.array([0, n_frames], dtype=np.int64)
    bounds = np.asarray(session_bounds, dtype=np.int64).ravel()
    if bounds.size < 2 or bounds[0] != 0 or bounds[-1] != n_frames or np.any(np.diff(bounds) <= 0):
        raise ExtractionError(
            f"session_bounds must increase strictly from 0 to the number of frames ({n_frames}), "
            f"one more entry than sessions; got {bounds.tolist()}"
        )
    return bounds


def plan_batches(
    session_bounds: np.ndarray,
    frame_shape: tuple[int, int],
    *,
    batch_frames: int | None = None,
    memory_budget: int | str | None = None,
    copies: int = BATCH_COPIES,
) -> list[Batch]:
    """Split every session into near-equal batches of at most ``batch_frames`` frames.

    Without ``batch_frames``, it is the number of float32 frames of
    ``frame_shape`` of which ``copies`` fit in ``memory_budget``.
    """
    if batch_frames is None:
        if memory_budget is None:
            raise ExtractionError("give batch_frames or memory_budget to size the temporal batches")
        frame_bytes = 4 * frame_shape[0] * frame_shape[1]
        batch_frames = max(MIN_BATCH_FRAMES, parse_memory_budget(memory_budget) // (copies * frame_bytes))
    batch_frames = int(batch_frames)
    if batch_frames < 1:
        raise ExtractionError(f"batch_frames must be a positive integer, got {batch_frames}")
    batches = []
    for session, (s0, s1) in enumerate(zip(session_bounds[:-1], session_bounds[1:])):
        n = math.ceil((s1 - s0) / batch_frames)
        edges = np.linspace(s0, s1, n + 1).round().astype(np.int64)
        batches += [Batch(int(a), int(b), session) for a, b in zip(edges[:-1], edges[1:])]
    return batches
