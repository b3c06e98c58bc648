"""Readers for array containers: HDF5, zarr and NWB all expose lazy arrays."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from caliali.exceptions import UnsupportedFormatError, VideoReadError
from caliali.io._base import VideoReader, to_grey_float32
from caliali.io._recorded import from_attributes

__all__ = ["ArrayReader", "open_hdf5", "open_nwb", "open_zarr"]

# Names tried, in order, when a container holds several movie-shaped arrays.
_PREFERRED = ("mov", "movie", "data", "frames", "images", "video", "Y", "varr", "org")


def _movie_like(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3, 4))


def _choose(path: Path, candidates: dict[str, tuple[int, ...]], dataset: str | None, kind: str) -> str:
    """Pick the array to read: the one named, the only one, or a preferred name."""
    if dataset is not None:
        key = dataset.strip("/")
        if key not in candidates:
            listing = ", ".join(f"{k} {v}" for k, v in candidates.items()) or "none"
            raise VideoReadError(f"{path}: no {kind} named {dataset!r}; movie-shaped {kind}s: {listing}")
        return key
    if not candidates:
        raise VideoReadError(f"{path}: contains no movie-shaped {kind} (3-D: time, height, width)")
    if len(candidates) == 1:
        return next(iter(candidates))
    for name in _PREFERRED:
        hits = [k for k in candidates if k.rsplit("/", 1)[-1] == name]
        if len(hits) == 1:
            return hits[0]
    listing = ", ".join(f"{k} {v}" for k, v in candidates.items())
    raise VideoReadError(f"{path}: several {kind}s could be the movie ({listing}); choose one with dataset=...")


class ArrayReader(VideoReader):
    """Read (t, h, w) or (t, h, w, c) frames from any lazily sliced array."""

    def __init__(
        self,
        path: Path,
        array: Any,
        *,
        name: str,
        closer: Callable[[], None] = lambda: None,
        fs: float | None = None,
        recorded_at: datetime | None = None,
    ) -> None:
        self.path, self.name, self._array, self._closer, self.fs = Path(path), name, array, closer, fs
        self.recorded_at = recorded_at
        shape = tuple(int(n) for n in array.shape)
        if not _movie_like(shape):
            closer()
            raise UnsupportedFormatError(
                f"{self.path}: array {name!r} is shaped {shape}; expected (time, height, width) "
                "or (time, height, width, colour)"
            )
        self.n_frames, self.frame_shape, self.dtype = shape[0], (shape[1], shape[2]), np.dtype(array.dtype)
        if self.n_frames == 0 or 0 in self.frame_shape:
            closer()
            raise VideoReadError(f"{self.path}: array {name!r} contains no frames (shape {shape})")

    def _read(self, start: int, stop: int) -> np.ndarray:
        try:
            block = np.asarray(self._array[(slice(start, stop), *self._window)])  # the rectangle alone is read
        except Exception as exc:
            raise VideoReadError(
                f"{self.path}: cannot read frames {start}-{stop - 1} of {self.name!r} ({exc}); "
                "the file is truncated or corrupt"
            ) from exc
        return to_grey_float32(block, channel_order="rgb")

    def _close(self) -> None:
        self._closer()
        self._closer = lambda: None


def _attribute_chain(root: Any, key: str) -> list[Any]:
    """The attributes of array ``key`` under ``root`` (an HDF5 file or zarr group), then of each
    group holding it, up to ``root``'s own: where a recording's start time may be written."""
    parts = key.strip("/").split("/")
    places = ["/".join(parts[:n]) for n in range(len(parts), 0, -1)]
    return [root[place].attrs for place in places] + [root.attrs]


def open_hdf5(path: Path, *, dataset: str | None = None) -> ArrayReader:
    """Open a movie dataset in an HDF5 file (``dataset`` is its path inside)."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise VideoReadError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with ExitStack() as stack:
        stack.enter_context(handle)  # closed on leaving if the movie cannot be found, else handed to the reader
        found: dict[str, tuple[int, ...]] = {}
        handle.visititems(
            lambda key, obj: (
                found.__setitem__(key, obj.shape) if isinstance(obj, h5py.Dataset) and _movie_like(obj.shape) else None
            )
        )
        if dataset is not None and dataset.strip("/") not in found and dataset.strip("/") in handle:
            found[dataset.strip("/")] = handle[dataset.strip("/")].shape
        key = _choose(path, found, dataset, "dataset")
        recorded = from_attributes(_attribute_chain(handle, key))
        return ArrayReader(path, handle[key], name=key, closer=stack.pop_all().close, recorded_at=recorded)


def open_zarr(path: Path, *, dataset: str | None = None) -> ArrayReader:
    """Open a zarr array, or a movie array inside a zarr group (v2 or v3)."""
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise VideoReadError(f"{path}: not a readable zarr store ({exc})") from exc
    if isinstance(node, zarr.Array):
        if dataset is not None:
            raise VideoReadError(f"{path}: is a single zarr array; remove dataset={dataset!r}")
        return ArrayReader(path, node, name=Path(path).name, recorded_at=from_attributes([node.attrs]))
    found = {key: tuple(arr.shape) for key, arr in node.arrays() if _movie_like(arr.shape)}
    if dataset is not None and dataset.strip("/") not in found and dataset.strip("/") in node:
        found[dataset.strip("/")] = tuple(node[dataset.strip("/")].shape)
    key = _choose(path, found, dataset, "array")
    return ArrayReader(path, node[key], name=key, recorded_at=from_attributes(_attribute_chain(node, key)))


def _rate_of_timestamps(timestamps: Any) -> float | None:
    """Frames per second of a series given by ``timestamps`` (s) instead of a rate: the median step of
    its first frames (a few dropped frames do not move it); None without two increasing times."""
    if timestamps is None or len(timestamps) < 2:
        return None
    steps = np.diff(np.asarray(timestamps[:1001], np.float64))
    step = float(np.median(steps)) if steps.size else 0.0
    return round(1.0 / step, 6) if step > 0 and np.isfinite(step) else None


def open_nwb(path: Path, *, dataset: str | None = None) -> ArrayReader:
    """Open a OnePhotonSeries or TwoPhotonSeries of an NWB file; ``fs`` is the series' ``rate``, else
    the rate of its ``timestamps``.

    NWB stores imaging data as (frames, x, y); like CaImAn and suite2p we read
    the two image axes in the order stored, as (height, width).
    """
    from pynwb import NWBHDF5IO
    from pynwb.ophys import OnePhotonSeries, TwoPhotonSeries

    with ExitStack() as stack:  # the file is closed on leaving unless handed to the reader
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pynwb warns about cached namespaces
                io = stack.enter_context(NWBHDF5IO(str(path), mode="r"))
                nwbfile = io.read()
        except Exception as exc:
            raise VideoReadError(f"{path}: not a readable NWB file ({exc})") from exc
        series = {
            obj.name: obj for obj in nwbfile.objects.values() if isinstance(obj, (OnePhotonSeries, TwoPhotonSeries))
        }
        key = _choose(path, {k: tuple(s.data.shape) for k, s in series.items()}, dataset, "imaging series")
        chosen = series[key]
        if chosen.external_file is not None and chosen.data.shape[0] == 0:
            raise UnsupportedFormatError(
                f"{path}: series {key!r} keeps its frames in external files "
                f"{list(chosen.external_file[:])}; open those files directly"
            )
        rate = chosen.rate or _rate_of_timestamps(chosen.timestamps)
        return ArrayReader(
            path,
            chosen.data,
            name=key,
            closer=stack.pop_all().close,
            fs=float(rate) if rate else None,
            recorded_at=nwbfile.session_start_time,
        )
