"""AVI / MP4 (and other FFmpeg containers) through OpenCV."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from caliali._cv2 import cv2
from caliali.exceptions import VideoReadError
from caliali.io._base import VideoReader

__all__ = ["OpenCVReader"]

# FFmpeg pixel formats that decode to one grey plane; everything else is colour.
_GREY8 = "Y800"
_GREY16 = "Y1\x00\x10"


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence OpenCV's own stderr log while opening: we raise clear errors instead."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


@contextmanager
def _capture(path: Path, params: list[int] | None = None) -> Iterator[cv2.VideoCapture]:
    """A capture of ``path`` (opened quietly), released on leaving, whatever happens."""
    with _quiet():
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, *([params] if params is not None else []))
    try:
        yield cap
    finally:
        cap.release()


def _fourcc_text(value: float) -> str:
    code = int(value)
    return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))


class OpenCVReader(VideoReader):
    """Read AVI / MP4 frames sequentially with OpenCV's FFmpeg backend.

    Grey 8- and 16-bit streams (e.g. FFV1 ``gray``/``gray16le``) are read
    without colour conversion, so 16-bit values survive; colour streams are
    converted to grey with BT.601 weights. Reads that continue where the last
    one stopped never seek (seeking in compressed streams can be inexact).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with _capture(self.path) as probe:
            if not probe.isOpened():
                raise VideoReadError(
                    f"{self.path}: OpenCV cannot open this file as a video (corrupt, empty, "
                    "or not a video); check that it plays in a video player"
                )
            pixel_format = _fourcc_text(probe.get(cv2.CAP_PROP_CODEC_PIXEL_FORMAT))
            self.n_frames = int(probe.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frame_shape = (int(probe.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(probe.get(cv2.CAP_PROP_FRAME_WIDTH)))
            fps = probe.get(cv2.CAP_PROP_FPS)
        self._grey = pixel_format in (_GREY8, _GREY16)
        self.dtype = np.dtype(np.uint16 if pixel_format == _GREY16 else np.uint8)
        self.fs = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
        if self.n_frames <= 0 or min(self.frame_shape) <= 0:
            raise VideoReadError(f"{self.path}: the video contains no frames")
        self._cap: cv2.VideoCapture | None = None
        self._pos = 0

    def _open(self) -> cv2.VideoCapture:
        params = [cv2.CAP_PROP_CONVERT_RGB, 0] if self._grey else []
        with _quiet():
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            raise VideoReadError(f"{self.path}: OpenCV could not reopen the video")
        return cap

    def _seek(self, start: int) -> None:
        if self._cap is None or start < self._pos:
            if self._cap is not None:
                self._cap.release()
            self._cap, self._pos = self._open(), 0
        # Decode-and-discard forward: exact for every codec, unlike POS_FRAMES.
        while self._pos < start:
            if not self._cap.grab():
                self._truncated(self._pos)
            self._pos += 1

    def _truncated(self, index: int) -> None:
        raise VideoReadError(
            f"{self.path}: the video ends after {index} of the {self.n_frames} frames "
            "its header announces; the file is truncated or corrupt"
        )

    def _read(self, start: int, stop: int) -> np.ndarray:
        self._seek(start)
        out = np.empty((stop - start, *self.frame_shape), dtype=np.float32)
        for i in range(stop - start):
            ok, frame = self._cap.read()
            if not ok or frame is None:
                self._truncated(self._pos)
            if frame.ndim == 3:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
            if frame.shape != self.full_shape:
                raise VideoReadError(
                    f"{self.path}: frame {self._pos} decodes to shape {frame.shape}, not "
                    f"{self.full_shape}; the stream's pixel format is not supported"
                )
            out[i] = frame[self._window]
            self._pos += 1
        return out

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
