"""Inscopix ``.isxd`` movies through ``isx``, Inscopix's own reader from PyPI.

``isx`` is optional (the ``caliali[isxd]`` extra): it brings about 100 MB of
native libraries, has wheels only for x86-64 (Linux with glibc 2.34 or newer,
Intel macOS, Windows) and Python 3.9-3.13, and is licensed CC BY-NC 4.0. It
is imported when an ``.isxd`` file is opened, never before.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from caliali.exceptions import InputError, UnsupportedFormatError, VideoReadError
from caliali.io._base import VideoReader

__all__ = ["IsxdReader", "import_isx"]

_INSTALL = "pip install 'caliali[isxd]'"
_EXPORT = "or export the movie to TIFF from Inscopix Data Processing"
_LIBC = ctypes.CDLL(None) if os.name == "posix" else ctypes.cdll.msvcrt


def import_isx() -> Any:
    """The ``isx`` module, or an :class:`InputError` saying how to get it."""
    try:
        import isx
    except ImportError as exc:
        raise InputError(
            f"reading .isxd movies needs Inscopix's isx package, which is not installed: {_INSTALL} "
            f"(wheels for x86-64 Linux, Intel macOS and Windows, Python 3.9-3.13), {_EXPORT}"
        ) from exc
    except OSError as exc:  # its bundled library needs a few system ones (GLib among them)
        raise InputError(f"Inscopix's isx package is installed but cannot load its library ({exc}); {_EXPORT}") from exc
    return isx


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Keep isx's C library from printing its exceptions to stdout: we raise them as one-line errors.

    The library writes ``file.cpp:line: Exception - ...`` straight to file
    descriptor 1, where caliali's progress lines go; it is pointed at the null
    device for the call and C's buffers are flushed before it is given back.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        _LIBC.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _reason(exc: Exception) -> str:
    """isx's message without its ``Error calling C library function ...`` preamble, on one line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith("Error calling C library function")]
    return " ".join(useful or lines) or type(exc).__name__


def _recording_start(timing: Any) -> datetime | None:
    """When the first frame was taken, in the recording's own UTC offset; None when the file leaves it unset.

    isx's public ``Time.to_datetime`` returns a naive local time and drops the
    offset, so the stored fields (seconds since the epoch as a ratio, and the
    offset in seconds) are read instead. Zero seconds is isx's default: unset.
    """
    start = timing.start._impl
    num, den = int(start.secs_since_epoch.num), int(start.secs_since_epoch.den)
    if num == 0 or den <= 0:
        return None
    zone = timezone(timedelta(seconds=int(start.utc_offset)))
    return datetime.fromtimestamp(num / den, tz=zone)


class IsxdReader(VideoReader):
    """Read an Inscopix ``.isxd`` movie frame by frame through ``isx``.

    ``fs`` is one over the movie's sampling period and ``recorded_at`` its
    start time. Frames the movie marks invalid (dropped during acquisition,
    cropped or blank in processing) hold no recording: isx returns a dropped
    one as zeros (it is stored without pixels), which would read as a sudden
    loss of all fluorescence, so each is read as the nearest valid frame
    before it (after it for leading ones). The
    frame count and the time axis stay the recording's. ``invalid_frames``
    lists their indices.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        isx = import_isx()
        try:
            with _quiet_stdout():
                self._movie = isx.Movie.read(str(self.path))
                timing, spacing, data_type = self._movie.timing, self._movie.spacing, self._movie.data_type
                valid = np.asarray(timing.get_valid_samples_mask(), dtype=bool)
        except Exception as exc:  # isx raises a bare Exception for every failure
            raise VideoReadError(
                f"{self.path}: not a readable .isxd movie ({_reason(exc)}); the file is truncated, "
                "corrupt, or not a movie (a cell set or an event set)"
            ) from exc
        try:
            self._setup(timing, spacing, data_type, valid)
        except InputError:
            self._movie = None  # a refused file is released at once, not when the error is collected
            raise

    def _setup(self, timing: Any, spacing: Any, data_type: Any, valid: np.ndarray) -> None:
        self.n_frames = int(timing.num_samples)
        self.frame_shape = (int(spacing.num_pixels[0]), int(spacing.num_pixels[1]))
        self.dtype = np.dtype(data_type)
        if self.n_frames == 0 or 0 in self.frame_shape:
            raise VideoReadError(f"{self.path}: the .isxd movie contains no frames")
        if not valid.any():
            raise VideoReadError(
                f"{self.path}: all {self.n_frames} frames are marked invalid (dropped, cropped or blank)"
            )
        if self.dtype.kind not in "uif":
            raise UnsupportedFormatError(f"{self.path}: .isxd pixel type {self.dtype} is not supported")
        stored = int(valid.sum()) * int(np.prod(self.frame_shape)) * self.dtype.itemsize
        if os.path.getsize(self.path) < stored:  # isx would read the frames from wrong offsets
            raise VideoReadError(
                f"{self.path}: the .isxd header announces {int(valid.sum())} stored frames ({stored} bytes) "
                f"but the file holds {os.path.getsize(self.path)} bytes; it is truncated"
            )
        period = float(timing.period.secs_float)
        self.fs = 1.0 / period if period > 0 else None
        self.recorded_at = _recording_start(timing)
        self.invalid_frames = np.flatnonzero(~valid)
        # The frame each index is read from: itself when valid, else the nearest valid one before it.
        indices = np.where(valid, np.arange(self.n_frames), -1)
        source = np.maximum.accumulate(indices)
        source[source < 0] = int(np.argmax(valid))
        self._source = source

    def _read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.frame_shape), dtype=np.float32)
        wanted, frame = -1, None
        try:
            with _quiet_stdout():
                for i, index in enumerate(self._source[start:stop].tolist()):
                    if index != wanted:  # a run of invalid frames repeats one frame: read it once
                        wanted = index
                        frame = self._movie.get_frame_data(index)
                    out[i] = frame
        except Exception as exc:
            raise VideoReadError(
                f"{self.path}: cannot read frame {wanted} of {self.n_frames} ({_reason(exc)}); "
                "the file is truncated or corrupt"
            ) from exc
        return out

    def _close(self) -> None:
        self._movie = None  # isx releases the file when its movie object goes
