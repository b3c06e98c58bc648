"""Streaming video input and output.

Every reader yields float32 grey frames (t, h, w), chunk by chunk, without
loading the whole file::

    from caliali.io import open_video
    with open_video("day1.avi") as video:
        for chunk in video.iter_chunks(500):
            ...

Formats: ``.avi``/``.mp4``/``.mov``/``.mkv`` (OpenCV/FFmpeg), ``.tif``/``.tiff``
(tifffile; multi-page, BigTIFF, ImageJ, OME), ``.h5``/``.hdf5`` (h5py;
``dataset=`` selects the array), ``.zarr`` (v2 or v3; ``dataset=`` inside a
group) and ``.nwb`` (OnePhotonSeries / TwoPhotonSeries; ``dataset=`` is the
series name).
"""

from __future__ import annotations

from pathlib import Path

from caliali.exceptions import InputError, UnsupportedFormatError, VideoReadError
from caliali.io._arrays import open_hdf5, open_nwb, open_zarr
from caliali.io._base import VideoReader, to_grey_float32
from caliali.io._opencv import OpenCVReader
from caliali.io._split import split_sizes, split_video
from caliali.io._tiff import TiffReader
from caliali.io._writers import WRITABLE_SUFFIXES, VideoWriter, open_writer

__all__ = [
    "VIDEO_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "VideoReader",
    "VideoWriter",
    "is_video",
    "open_video",
    "open_writer",
    "split_sizes",
    "split_video",
    "to_grey_float32",
]

_OPENCV = (".avi", ".mp4", ".mov", ".mkv", ".m4v")
_TIFF = (".tif", ".tiff")
_HDF5 = (".h5", ".hdf5", ".hdf")
VIDEO_SUFFIXES = (*_OPENCV, *_TIFF, *_HDF5, ".zarr", ".nwb")


def is_video(path: Path | str) -> bool:
    """True when ``path``'s suffix is one caliali reads."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_video(path: Path | str, *, dataset: str | None = None) -> VideoReader:
    """Open a video file for chunked reading.

    Parameters
    ----------
    path : path-like
        The video file (or ``.zarr`` directory).
    dataset : str, optional
        For HDF5 and zarr groups, the array holding the movie; for NWB, the
        name of the imaging series. Needed only when the file holds several.

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
            f"{path}: unsupported video format {suffix or '(no suffix)'!r}; caliali reads "
            f"{', '.join(VIDEO_SUFFIXES)}"
        )
    if path.is_dir() != (suffix == ".zarr"):
        raise UnsupportedFormatError(f"{path}: expected a {'directory' if suffix == '.zarr' else 'file'}")
    if not path.is_dir() and path.stat().st_size == 0:  # any format: say so before a reader fails on it
        raise VideoReadError(f"{path}: input {path.name} is empty (0 bytes); upload it again")
    if suffix == ".zarr":
        return open_zarr(path, dataset=dataset)
    if suffix in _HDF5:
        return open_hdf5(path, dataset=dataset)
    if suffix == ".nwb":
        return open_nwb(path, dataset=dataset)
    if dataset is not None:
        raise InputError(f"{path}: dataset={dataset!r} applies only to HDF5, zarr and NWB files")
    return TiffReader(path) if suffix in _TIFF else OpenCVReader(path)
