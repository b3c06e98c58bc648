"""Writers that append frames chunk by chunk: TIFF, lossless AVI, HDF5, zarr."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from caliali._cv2 import cv2
from caliali.exceptions import InputError, UnsupportedFormatError, VideoReadError

__all__ = ["VideoWriter", "open_writer", "WRITABLE_SUFFIXES"]

WRITABLE_SUFFIXES = (".tif", ".tiff", ".avi", ".h5", ".hdf5", ".zarr")

# Above this size a TIFF must be BigTIFF (classic TIFF offsets are 32-bit).
_BIGTIFF_BYTES = 2**32 - 2**25


class VideoWriter:
    """Append (t, h, w) frames to a new file; use as a context manager.

    ``.tif``: one page per frame, the dtype given (float32 stays exact),
    BigTIFF when ``n_frames`` says the file may pass 4 GB. ``.avi``: FFV1,
    lossless, grey 8- or 16-bit (uint8 / uint16 only). ``.h5``: a resizable
    chunked dataset named ``dataset``. ``.zarr``: a zarr v3 array.
    """

    def __init__(
        self,
        path: Path,
        *,
        frame_shape: tuple[int, int],
        dtype: Any = np.float32,
        n_frames: int | None = None,
        fps: float = 10.0,
        dataset: str = "mov",
    ) -> None:
        self.path, self.frame_shape, self.dtype = Path(path), tuple(int(n) for n in frame_shape), np.dtype(dtype)
        self.n_written = 0
        suffix = self.path.suffix.lower()
        if suffix not in WRITABLE_SUFFIXES:
            raise UnsupportedFormatError(
                f"{self.path}: cannot write {suffix!r}; use one of {', '.join(WRITABLE_SUFFIXES)}"
            )
        self._kind = {".tiff": ".tif", ".hdf5": ".h5"}.get(suffix, suffix)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:  # what an opener opened is closed on leaving if it fails, else by close()
            getattr(self, f"_open_{self._kind[1:]}")(stack, n_frames=n_frames, fps=fps, dataset=dataset)
            self._resources = stack.pop_all()

    # -- openers --------------------------------------------------------------
    def _open_tif(self, stack: ExitStack, *, n_frames: int | None, **_: Any) -> None:
        import tifffile

        frame_bytes = self.dtype.itemsize * self.frame_shape[0] * self.frame_shape[1]
        bigtiff = n_frames is None or n_frames * frame_bytes > _BIGTIFF_BYTES
        self._handle = stack.enter_context(tifffile.TiffWriter(self.path, bigtiff=bigtiff))

    def _open_avi(self, stack: ExitStack, *, fps: float, **_: Any) -> None:
        if self.dtype not in (np.uint8, np.uint16):
            raise InputError(
                f"{self.path}: AVI (FFV1) stores uint8 or uint16 frames, not {self.dtype}; "
                "scale the frames to integers first or write .tif to keep floats"
            )
        depth = cv2.CV_16U if self.dtype == np.uint16 else cv2.CV_8U
        params = [cv2.VIDEOWRITER_PROP_DEPTH, depth, cv2.VIDEOWRITER_PROP_IS_COLOR, 0]
        h, w = self.frame_shape
        self._handle = cv2.VideoWriter(
            str(self.path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h), params
        )
        stack.callback(self._handle.release)
        if not self._handle.isOpened():
            raise VideoReadError(f"{self.path}: OpenCV cannot create an FFV1 AVI file here")

    def _open_h5(self, stack: ExitStack, *, dataset: str, **_: Any) -> None:
        import h5py

        file = stack.enter_context(h5py.File(self.path, "w"))
        self._handle = file.create_dataset(
            dataset,
            shape=(0, *self.frame_shape),
            maxshape=(None, *self.frame_shape),
            dtype=self.dtype,
            chunks=(1, *self.frame_shape),
        )

    def _open_zarr(self, stack: ExitStack, **_: Any) -> None:
        import zarr

        self._handle = zarr.create_array(
            str(self.path),
            shape=(0, *self.frame_shape),
            chunks=(64, *self.frame_shape),
            dtype=self.dtype,
            compressors=None,
            fill_value=0,
            overwrite=True,
        )

    # -- writing --------------------------------------------------------------
    def write(self, frames: np.ndarray) -> None:
        """Append frames shaped (t, h, w) (or one (h, w) frame), cast to the writer's dtype."""
        frames = np.asarray(frames)
        frames = frames[None] if frames.ndim == 2 else frames
        if frames.shape[1:] != self.frame_shape:
            raise InputError(f"{self.path}: frames shaped {frames.shape[1:]} do not match {self.frame_shape}")
        block = frames.astype(self.dtype, copy=False)
        if self._kind == ".tif":
            for frame in block:
                self._handle.write(frame, contiguous=True, photometric="minisblack")
        elif self._kind == ".avi":
            for frame in block:
                self._handle.write(np.ascontiguousarray(frame))
        elif self._kind == ".h5":
            self._handle.resize(self.n_written + len(block), axis=0)
            self._handle[self.n_written :] = block
        else:
            self._handle.append(block, axis=0)
        self.n_written += len(block)

    def close(self) -> None:
        """Finish the file."""
        self._resources.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_writer(path: Path | str, **options: Any) -> VideoWriter:
    """Create a :class:`VideoWriter` for ``path``; see its docstring for the options."""
    return VideoWriter(Path(path), **options)
