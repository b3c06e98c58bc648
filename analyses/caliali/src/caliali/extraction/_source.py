"""Uniform, read-only, chunked access to the aligned movie.

The aligned, concatenated movie is a float32 time-chunked zarr array written by
the alignment stage (a ``caliali.store.FrameStore``); extraction also accepts an
in-memory array (tests), any array-like with ``shape`` and slicing, a video path
(opened with ``caliali.io.open_video``), or any ``caliali.io`` ``VideoReader`` (anything with
``n_frames``, ``frame_shape`` and ``read(start, stop)``). Frames are only ever read ``[start, stop)`` at a time.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._errors import ExtractionError

__all__ = ["FrameSource", "open_source"]


class FrameSource:
    """Read-only view of a (t, h, w) movie returning float32 copies of frame ranges."""

    def __init__(self, video: Any):
        self._video = video
        if hasattr(video, "read") and hasattr(video, "n_frames"):
            self.n_frames = int(video.n_frames)
            self.frame_shape = tuple(int(s) for s in video.frame_shape)
            self._read = video.read
        elif hasattr(video, "shape") and hasattr(video, "__getitem__"):
            if len(video.shape) != 3:
                raise ExtractionError(
                    f"the video must be shaped (t, h, w); got shape {tuple(video.shape)}. "
                    "Pass the aligned, concatenated movie (one frame per time point)."
                )
            self.n_frames = int(video.shape[0])
            self.frame_shape = (int(video.shape[1]), int(video.shape[2]))
            self._read = lambda start, stop: video[start:stop]
        else:
            raise ExtractionError(
                f"cannot read frames from a {type(video).__name__}; pass a (t, h, w) array, "
                "a zarr array or path, or a caliali.io VideoReader"
            )
        if self.n_frames < 1 or min(self.frame_shape) < 1:
            raise ExtractionError(f"the video is empty (frames {self.n_frames}, frame shape {self.frame_shape})")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Frames ``[start, stop)`` as a new C-contiguous float32 array (non-finite -> 0).

        A reader that already returns a float32 array of its own (zarr, the
        ``caliali.io`` readers) hands it over as it is; anything else (views of
        an in-memory movie, other dtypes) is copied, so the caller may always
        modify the result.
        """
        block = self._read(start, stop)
        owned = (
            isinstance(block, np.ndarray)
            and block.dtype == np.float32
            and block.flags.owndata
            and block.flags.c_contiguous
            and block.flags.writeable
            and block is not self._video
        )
        if not owned:
            block = np.array(block, dtype=np.float32, copy=True, order="C")
        if block.shape != (stop - start, *self.frame_shape):
            raise ExtractionError(
                f"reading frames {start}..{stop} returned shape {block.shape}, "
                f"expected {(stop - start, *self.frame_shape)}; the video file may be truncated"
            )
        if not np.isfinite(block).all():
            np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return block


def open_source(video: Any) -> FrameSource:
    """Wrap ``video`` (array, zarr array, zarr path, or VideoReader) as a `FrameSource`."""
    if isinstance(video, (str, os.PathLike)):
        from caliali.exceptions import CalialiError
        from caliali.io import open_video

        try:
            video = open_video(video)
        except CalialiError as exc:
            raise ExtractionError(f"cannot open the aligned movie {os.fspath(video)!r}: {exc}") from exc
    return FrameSource(video)
