"""TIFF stacks (multi-page, BigTIFF, ImageJ, OME) through tifffile."""

from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import tifffile

from caliali.exceptions import UnsupportedFormatError, VideoReadError
from caliali.io._base import VideoReader, to_grey_float32
from caliali.io._recorded import from_tiff, rate_from_tiff

__all__ = ["TiffReader"]


class TiffReader(VideoReader):
    """Read the first series of a TIFF file page range by page range.

    Axes other than Y, X and samples (S, colour) are flattened into time, so
    a (T, Y, X) stack, a (Z, Y, X) ImageJ stack or a (T, Y, X, S) colour
    movie all read as (t, h, w). Only the requested pages are read.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            tif = tifffile.TiffFile(self.path)
        except Exception as exc:  # tifffile raises several types for bad files
            raise VideoReadError(f"{self.path}: not a readable TIFF file ({exc})") from exc
        with ExitStack() as stack:  # closed on leaving if its layout is refused; the reader keeps it otherwise
            self._tif = stack.enter_context(tif)
            self._setup()
            stack.pop_all()

    def _setup(self) -> None:
        if not self._tif.series:
            raise VideoReadError(f"{self.path}: the TIFF file contains no images")
        series = self._tif.series[0]
        axes, shape = series.axes, series.shape
        leading = {a: n for a, n in zip(axes, shape) if a not in "YXS" and n > 1}
        # C alone is how tifffile labels a plain ImageJ stack; C next to T or Z is a real channel axis.
        if "C" in leading and len(leading) > 1:
            raise UnsupportedFormatError(
                f"{self.path}: TIFF with {shape[axes.index('C')]} channels (axes {axes}); "
                "save the channel to analyse as its own file"
            )
        self._colour = axes.endswith("S")
        spatial = shape[-3:-1] if self._colour else shape[-2:]
        if len(spatial) != 2 or axes[-3 if self._colour else -2 :][:2] != "YX":
            raise UnsupportedFormatError(f"{self.path}: TIFF series with axes {axes!r} has no Y, X image plane")
        self.frame_shape = (int(spatial[0]), int(spatial[1]))
        self.n_frames = int(np.prod(shape[: -3 if self._colour else -2], dtype=np.int64))
        self.dtype = np.dtype(series.dtype)
        self._series = series
        self.recorded_at = from_tiff(self._tif)
        self.fs = rate_from_tiff(self._tif)
        # Uncompressed contiguous data (what tifffile, ImageJ and our writer produce) is read
        # straight from its offset: parsing every page header cost more than reading the pixels.
        self._offset = series.dataoffset
        self._disk_dtype = self.dtype.newbyteorder(self._tif.byteorder)
        if self.n_frames == 0:
            raise VideoReadError(f"{self.path}: the TIFF file contains no frames")
        size = os.path.getsize(self.path)
        if series.dataoffset is not None and series.dataoffset + series.nbytes > size:
            raise VideoReadError(
                f"{self.path}: the TIFF header announces {self.n_frames} frames "
                f"({series.nbytes} bytes) but the file ends early; it is truncated"
            )

    def _read(self, start: int, stop: int) -> np.ndarray:
        if self._offset is not None:
            return self._read_contiguous(start, stop)
        try:
            if self.n_frames == 1:
                block = self._series.asarray()[None]
            else:
                block = self._series.asarray(key=range(start, stop))
        except Exception as exc:
            raise VideoReadError(
                f"{self.path}: cannot read frames {start}-{stop - 1} ({exc}); the file is truncated or corrupt"
            ) from exc
        block = block.reshape(stop - start, *self.full_shape, *block.shape[-1:] if self._colour else ())
        return np.ascontiguousarray(to_grey_float32(block[:, self._window[0], self._window[1]], channel_order="rgb"))

    def _read_contiguous(self, start: int, stop: int) -> np.ndarray:
        """Frames read straight from the file; with a crop, a few whole frames at a time (no more
        bytes in flight than the cropped chunk holds), each cut to the rectangle."""
        full = int(np.prod(self.full_shape))
        step = max(1, (stop - start) * int(np.prod(self.frame_shape)) // full)
        if step >= stop - start:
            return self._frames_at(start, stop)
        return np.concatenate([self._frames_at(a, min(a + step, stop)) for a in range(start, stop, step)])

    def _frames_at(self, start: int, stop: int) -> np.ndarray:
        per_frame = int(np.prod(self.full_shape)) * (3 if self._colour else 1)
        handle = self._tif.filehandle
        try:
            handle.seek(self._offset + start * per_frame * self._disk_dtype.itemsize)
            block = handle.read_array(self._disk_dtype, (stop - start) * per_frame)
        except Exception as exc:
            raise VideoReadError(
                f"{self.path}: cannot read frames {start}-{stop - 1} ({exc}); the file is truncated or corrupt"
            ) from exc
        block = block.reshape(stop - start, *self.full_shape, *(3,) if self._colour else ())
        return np.ascontiguousarray(to_grey_float32(block[:, self._window[0], self._window[1]], channel_order="rgb"))

    def _close(self) -> None:
        self._tif.close()
