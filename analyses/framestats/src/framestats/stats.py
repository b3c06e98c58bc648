"""Per-frame statistics of an image stack."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["STATS", "frame_stats", "iter_stacks"]

STATS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mean": lambda f: f.mean(axis=(1, 2)),
    "std": lambda f: f.std(axis=(1, 2)),
    "min": lambda f: f.min(axis=(1, 2)),
    "max": lambda f: f.max(axis=(1, 2)),
}


def iter_stacks(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, stack)`` for a ``.npy`` file or every ``.npy`` in a folder.

    Stacks are memory-mapped float arrays shaped (t, h, w); a 2-D image is one frame.
    """
    files = sorted(path.glob("*.npy")) if path.is_dir() else [path]
    if not files:
        raise ValueError(f"{path} holds no .npy files")
    for file in files:
        if file.stat().st_size == 0:  # np.load would raise a bare EOFError
            raise ValueError(f"input {file.name} is empty (0 bytes); upload it again")
        try:
            stack = np.load(file, mmap_mode="r")
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{file} is not a readable .npy image stack: {exc}") from None
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3:
            raise ValueError(f"{file} has shape {stack.shape}; expected (frames, height, width)")
        yield file.name, stack


def frame_stats(stack: np.ndarray, *, stats: Iterable[str], batch_frames: int = 64) -> Iterator[np.ndarray]:
    """Yield, per batch of frames, an array (batch, n_stats) of the requested statistics.

    Examples
    --------
    >>> stack = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    >>> np.concatenate(list(frame_stats(stack, stats=["mean", "max"])))
    array([[1.5, 3. ],
           [5.5, 7. ]])
    """
    names = list(stats)
    for start in range(0, stack.shape[0], batch_frames):
        frames = np.asarray(stack[start : start + batch_frames], dtype=np.float64)
        yield np.stack([STATS[name](frames) for name in names], axis=1)
