"""The reader contract every format implements: chunked float32 grey frames."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from caliali.exceptions import InputError, VideoReadError

__all__ = ["VideoReader", "to_grey_float32"]

# ITU-R BT.601 luma weights, the ones OpenCV's RGB2GRAY uses.
_LUMA_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_grey_float32(block: np.ndarray, *, channel_order: str = "rgb") -> np.ndarray:
    """Return frames as float32 grey, shape (t, h, w).

    Parameters
    ----------
    block : ndarray
        (t, h, w) grey or (t, h, w, c) colour frames, c in {1, 3, 4}.
    channel_order : {"rgb", "bgr"}
        Order of the colour channels; alpha (a fourth channel) is ignored.

    Returns
    -------
    ndarray
        float32 array; the input itself when it already is float32 grey
        (readers pass freshly read blocks they own), never modified.
    """
    if block.ndim == 3:
        return block.astype(np.float32, copy=False)
    if block.ndim == 4 and block.shape[-1] == 1:
        return block[..., 0].astype(np.float32)
    if block.ndim == 4 and block.shape[-1] in (3, 4):
        weights = _LUMA_RGB if channel_order == "rgb" else _LUMA_RGB[::-1]
        return np.tensordot(block[..., :3].astype(np.float32), weights, axes=([-1], [0])).astype(np.float32)
    raise ValueError(f"cannot make grey frames from an array shaped {block.shape}")


class VideoReader:
    """Read a video chunk by chunk, as float32 grey frames (t, h, w).

    Subclasses set ``path``, ``n_frames``, ``frame_shape`` and ``dtype`` (the
    dtype on disk) and implement :meth:`_read` and :meth:`_close`. Frames are
    never all loaded: :meth:`iter_chunks` reads ``batch_frames`` at a time.
    ``fs`` and ``recorded_at`` (when the recording started, an aware time) are
    set when the file's own metadata says them, else None.

    :meth:`set_crop` makes every read return one rectangle of the frame
    (``frame_shape`` becomes its size, ``full_shape`` stays the file's). Readers
    that can read the rectangle alone do so in ``_read`` (``_window``), so a
    chunk's memory follows the cropped size; any other reader's full frames are
    cut in :meth:`read`.
    """

    path: Path
    n_frames: int
    frame_shape: tuple[int, int]
    dtype: np.dtype
    fs: float | None = None
    recorded_at: datetime | None = None
    crop: tuple[int, int, int, int] | None = None
    _window: tuple[slice, slice] = (slice(None), slice(None))
    _full_shape: tuple[int, int] | None = None

    @property
    def full_shape(self) -> tuple[int, int]:
        """(h, w) of the file's frames, before any crop."""
        return self._full_shape if self._full_shape is not None else self.frame_shape

    def set_crop(self, crop: Sequence[int] | None) -> None:
        """Read only rows ``top:bottom`` and columns ``left:right`` of every frame from now on.

        ``crop`` is ``(top, bottom, left, right)`` in pixels of the file's frame (bottom and
        right excluded, as Python slices), or None for the whole frame.

        Raises
        ------
        InputError
            The rectangle is empty or reaches past the frame; the message names the frame's size.
        """
        if crop is None:
            return
        if len(crop) != 4:
            raise InputError(f"crop {list(crop)} needs 4 numbers [top, bottom, left, right]")
        top, bottom, left, right = (int(v) for v in crop)
        h, w = self.full_shape
        name = f"{self.path.name} is {h}x{w} px"
        if min(top, left) < 0 or top >= bottom or left >= right:
            raise InputError(
                f"crop {[top, bottom, left, right]} is not a rectangle of the frame ({name}); "
                "give [top, bottom, left, right] with 0 <= top < bottom and 0 <= left < right"
            )
        if bottom > h:
            raise InputError(
                f"crop {[top, bottom, left, right]} reaches past the frame's {h} rows ({name}); "
                f"set bottom to at most {h}"
            )
        if right > w:
            raise InputError(
                f"crop {[top, bottom, left, right]} reaches past the frame's {w} columns ({name}); "
                f"set right to at most {w}"
            )
        self._full_shape = self.full_shape
        self.crop = (top, bottom, left, right)
        self.frame_shape = (bottom - top, right - left)
        self._window = (slice(top, bottom), slice(left, right))

    def _read(self, start: int, stop: int) -> np.ndarray:
        """Return frames [start, stop) as float32 (t, h, w): cropped to ``_window`` where the format
        can read a rectangle alone, else whole (``read`` then cuts them)."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the file handle."""

    # -- public API ---------------------------------------------------------
    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Return frames ``[start, stop)`` as a new float32 array (t, h, w)."""
        stop = self.n_frames if stop is None else stop
        if not 0 <= start <= stop <= self.n_frames:
            raise InputError(f"{self.path}: frames [{start}, {stop}) are outside the video's {self.n_frames} frames")
        if start == stop:
            return np.empty((0, *self.frame_shape), dtype=np.float32)
        block = self._read(start, stop)
        if self.crop is not None and block.shape[1:] != self.frame_shape and block.shape[1:] == self.full_shape:
            block = np.ascontiguousarray(block[:, self._window[0], self._window[1]])  # a reader that reads whole frames
        if block.shape != (stop - start, *self.frame_shape):
            raise VideoReadError(
                f"{self.path}: expected {stop - start} frames of {self.frame_shape} from "
                f"frame {start}, got an array shaped {block.shape}; the file may be "
                "truncated or corrupt"
            )
        return block

    def iter_chunks(self, batch_frames: int, *, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Yield float32 (t, h, w) chunks of at most ``batch_frames`` frames."""
        if int(batch_frames) < 1:
            raise InputError(f"batch_frames must be a positive integer, got {batch_frames!r}")
        stop = self.n_frames if stop is None else stop
        for first in range(start, stop, int(batch_frames)):
            yield self.read(first, min(first + int(batch_frames), stop))

    def close(self) -> None:
        """Close the underlying file; safe to call twice."""
        self._close()

    def __len__(self) -> int:
        return self.n_frames

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.frame_shape
        return f"{type(self).__name__}({str(self.path)!r}, {self.n_frames} frames of {h}x{w} {self.dtype})"
