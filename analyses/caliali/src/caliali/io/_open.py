"""Open any video caliali reads, by its suffix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from caliali.exceptions import InputError, UnsupportedFormatError, VideoReadError
from caliali.io._arrays import open_hdf5, open_nwb, open_zarr
from caliali.io._base import VideoReader
from caliali.io._isxd import IsxdReader
from caliali.io._opencv import OpenCVReader
from caliali.io._tiff import TiffReader

__all__ = ["VIDEO_SUFFIXES", "is_video", "open_video"]

_OPENCV = (".avi", ".mp4", ".mov", ".mkv", ".m4v")
_TIFF = (".tif", ".tiff")
_HDF5 = (".h5", ".hdf5", ".hdf")
VIDEO_SUFFIXES = (*_OPENCV, *_TIFF, *_HDF5, ".zarr", ".nwb", ".isxd")


def is_video(path: Path | str) -> bool:
    """True when ``path``'s suffix is one caliali reads."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_video(path: Path | str, *, dataset: str | None = None, crop: Sequence[int] | None = None) -> VideoReader:
    """Open a video file for chunked reading.

    Parameters
    ----------
    path : path-like
        The video file (or ``.zarr`` directory).
    dataset : str, optional
        For HDF5 and zarr groups, the array holding the movie; for NWB, the
        name of the imaging series. Needed only when the file holds several.
    crop : (top, bottom, left, right), optional
        Read only this rectangle of every frame (see `VideoReader.set_crop`).

    Returns
    -------
    VideoReader
        With ``.n_frames``, ``.frame_shape``, ``.dtype``, ``.read(start, stop)``
        and ``.iter_chunks(batch_frames)``; close it (or use ``with``).

    Raises
    ------
    InputError
        The file does not exist, is corrupt, truncated, empty, or of a format
        caliali does not read; the message names the file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if suffix not in VIDEO_SUFFIXES:
        raise UnsupportedFormatError(
            f"{path}: unsupported video format {suffix or '(no suffix)'!r}; caliali reads {', '.join(VIDEO_SUFFIXES)}"
        )
    if path.is_dir() != (suffix == ".zarr"):
        raise UnsupportedFormatError(f"{path}: expected a {'directory' if suffix == '.zarr' else 'file'}")
    if not path.is_dir() and path.stat().st_size == 0:  # any format: say so before a reader fails on it
        raise VideoReadError(f"{path}: input {path.name} is empty (0 bytes); upload it again")
    reader = _open(path, suffix, dataset)
    try:
        reader.set_crop(crop)
    except InputError:
        reader.close()
        raise
    return reader


def _open(path: Path, suffix: str, dataset: str | None) -> VideoReader:
    if suffix == ".zarr":
        return open_zarr(path, dataset=dataset)
    if suffix in _HDF5:
        return open_hdf5(path, dataset=dataset)
    if suffix == ".nwb":
        return open_nwb(path, dataset=dataset)
    if dataset is not None:
        raise InputError(f"{path}: dataset={dataset!r} applies only to HDF5, zarr and NWB files")
    if suffix == ".isxd":
        return IsxdReader(path)
    return TiffReader(path) if suffix in _TIFF else OpenCVReader(path)
