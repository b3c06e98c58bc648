"""Memory budgets: how many frames a stage may hold at once.

The lowest layer of caliali besides its exceptions: readers, writers and every
streaming stage size their chunks here, so it imports nothing of caliali's own
but :mod:`caliali.exceptions`.
"""

from __future__ import annotations

import re

import psutil

from caliali.exceptions import MemoryBudgetError

__all__ = ["batch_frames_for", "parse_memory_budget"]

_UNITS = {
    "": 1,
    "B": 1,
    "K": 1e3,
    "KB": 1e3,
    "M": 1e6,
    "MB": 1e6,
    "G": 1e9,
    "GB": 1e9,
    "T": 1e12,
    "TB": 1e12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_BUDGET = re.compile(r"^\s*(?P<value>\d+(\.\d*)?|\.\d+)\s*(?P<unit>[a-zA-Z]*)\s*$")


def parse_memory_budget(memory_budget: int | float | str | None) -> int:
    """Bytes in a memory budget: a number of bytes, or text like ``"2GB"``, ``"512MiB"``.

    ``None`` or ``"auto"`` means half of the memory available right now.
    """
    if memory_budget is None or (isinstance(memory_budget, str) and memory_budget.strip().lower() == "auto"):
        return int(psutil.virtual_memory().available // 2)
    if isinstance(memory_budget, (int, float)) and not isinstance(memory_budget, bool):
        value = float(memory_budget)
    else:
        match = _BUDGET.match(str(memory_budget))
        unit = match["unit"].upper() if match else None
        if match is None or unit not in _UNITS:
            raise MemoryBudgetError(
                f"memory_budget {memory_budget!r} is not a size; write e.g. 2GB, 512MB, 1.5GiB or a number of bytes"
            )
        value = float(match["value"]) * _UNITS[unit]
    if value <= 0:
        raise MemoryBudgetError(f"memory_budget must be positive, got {memory_budget!r}")
    return int(value)


def batch_frames_for(
    memory_budget: int | float | str | None,
    frame_shape: tuple[int, int],
    *,
    copies: float = 4.0,
    max_frames: int | None = None,
) -> int:
    """Frames per chunk that fit in ``memory_budget``.

    Parameters
    ----------
    memory_budget : int, float or str
        Bytes, or text like ``"2GB"`` (see :func:`parse_memory_budget`).
    frame_shape : (h, w)
        Frame size in pixels.
    copies : float
        How many float32 copies of a chunk the stage holds at once (input,
        output, temporaries); a stage that measured its peak passes it here.
    max_frames : int, optional
        Upper limit (e.g. the file length).

    Returns
    -------
    int
        ``floor(budget / (copies * 4 * h * w))``, at least 1.

    Raises
    ------
    MemoryBudgetError
        When not even one frame fits; the message gives the minimum budget.
    """
    budget = parse_memory_budget(memory_budget)
    per_frame = float(copies) * 4 * int(frame_shape[0]) * int(frame_shape[1])
    frames = int(budget // per_frame)
    if frames < 1:
        raise MemoryBudgetError(
            f"memory_budget of {budget} bytes cannot hold one {frame_shape[0]}x{frame_shape[1]} frame "
            f"({copies:g} float32 copies need {int(per_frame)} bytes); raise memory_budget"
        )
    return min(frames, int(max_frames)) if max_frames else frames
