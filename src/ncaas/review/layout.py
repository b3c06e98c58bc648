"""A dataset's neurons, read from the "neurons" layout through :class:`ncaas.storage.Storage`.

The layout (docs/review.md): ``A.npz`` (sparse footprints, pixels × K), ``C_raw.npy``,
``C.npy``, ``S.npy`` ((K, T) float32), ``session_bounds.npy``, ``meta.json`` and background
images. Footprints, images and the small arrays are read whole (they are the size of a frame or
of K); a trace is one row of a (K, T) array, read by byte range from the offset its header
gives, so a long recording is never downloaded to show one neuron.
"""

from __future__ import annotations

import ast
import io
import json
import math
import threading
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..exceptions import NcaasError
from ..storage import Storage

__all__ = ["ImageRef", "Layout", "LayoutCache", "LayoutError", "decimate", "png"]

TRACES = ("C_raw", "C", "S")
IMAGE_KINDS = ("Cn", "PNR", "mean", "max")
_ROWS_PER_READ = 64


class LayoutError(NcaasError):
    """The outputs do not follow the neurons layout; the message says what is missing or wrong."""


@dataclass(frozen=True)
class ImageRef:
    kind: str
    session: str | None
    file: str


@dataclass(frozen=True)
class _Npy:
    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int  # where the data starts


def _npy_header(head: bytes, where: str) -> _Npy:
    """Shape, dtype and data offset of a ``.npy`` file from its first bytes (format 1.0, 2.0, 3.0)."""
    if head[:6] != b"\x93NUMPY":
        raise LayoutError(f"{where} is not a .npy file")
    major = head[6]
    size_len = 2 if major == 1 else 4
    length = int.from_bytes(head[8 : 8 + size_len], "little")
    start = 8 + size_len
    try:
        header = ast.literal_eval(head[start : start + length].decode("latin1"))
        dtype = np.dtype(header["descr"])
        shape = tuple(int(n) for n in header["shape"])
        fortran = bool(header["fortran_order"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        raise LayoutError(f"{where} has an unreadable .npy header") from None
    if fortran and len(shape) > 1:
        raise LayoutError(f"{where} is in Fortran order; the layout needs C order (rows contiguous)")
    return _Npy(shape, dtype, start + length)


def _load_npy(data: bytes, where: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise LayoutError(f"{where} cannot be read as .npy: {exc}") from None


def _load_csc(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """(data, indices, indptr, shape) of a ``scipy.sparse.save_npz`` CSC matrix, read with numpy alone."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            fmt = npz["format"].item()
            fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
            if fmt != "csc":
                raise LayoutError(f"{where} holds a {fmt} matrix; the layout needs CSC (pixels × neurons)")
            shape = tuple(int(n) for n in npz["shape"])
            return npz["data"], npz["indices"], npz["indptr"], (shape[0], shape[1])
    except (ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise LayoutError(f"{where} is not a scipy.sparse .npz file: {exc}") from None


def decimate(trace: np.ndarray, points: int) -> dict[str, Any]:
    """``trace`` in at most ``points`` bins: each bin's first frame, min and max (so a one-frame
    spike still shows as the bin's max)."""
    n = int(trace.shape[0])
    if n <= points:
        values = [_round(v) for v in trace]
        return {"frames": list(range(n)), "min": values, "max": values}
    step = math.ceil(n / points)
    bins = math.ceil(n / step)
    padded = np.full(bins * step, np.nan, dtype=np.float64)
    padded[:n] = trace
    blocks = padded.reshape(bins, step)
    return {
        "frames": [i * step for i in range(bins)],
        "min": [_round(v) for v in np.nanmin(blocks, axis=1)],
        "max": [_round(v) for v in np.nanmax(blocks, axis=1)],
    }


def _round(value: float) -> float | None:
    return None if not math.isfinite(value) else float(f"{value:.5g}")


def png(image: np.ndarray, *, lo: float = 1.0, hi: float = 99.5, colormap: str = "gray") -> bytes:
    """``image`` scaled between its ``lo`` and ``hi`` percentiles, as an 8-bit PNG."""
    from PIL import Image

    finite = image[np.isfinite(image)]
    a, b = (float(v) for v in np.percentile(finite, [lo, hi])) if finite.size else (0.0, 1.0)
    scaled = np.clip((np.nan_to_num(image, nan=a) - a) / ((b - a) or 1.0), 0, 1)
    pixels = (scaled * 255).astype(np.uint8)
    if colormap == "hot":
        rgb = np.stack([np.clip(3 * scaled, 0, 1), np.clip(3 * scaled - 1, 0, 1), np.clip(3 * scaled - 2, 0, 1)], -1)
        out = Image.fromarray((rgb * 255).astype(np.uint8), "RGB")
    else:
        out = Image.fromarray(pixels, "L")
    buf = io.BytesIO()
    out.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class Layout:
    """One dataset's neurons: ``folder`` is the layout's storage path."""

    storage: Storage
    folder: str
    meta: dict[str, Any] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, storage: Storage, folder: str) -> Layout:
        where = f"{folder}/meta.json"
        try:
            meta = json.loads(storage.read_text(where))
        except FileNotFoundError:
            raise LayoutError(
                f"no neurons to review: {storage.relative(where)} is missing (did the dataset succeed?)"
            ) from None
        except ValueError:
            raise LayoutError(f"{storage.relative(where)} is not JSON") from None
        for key in ("dims", "n_neurons", "n_frames"):
            if key not in meta:
                raise LayoutError(f"{storage.relative(where)} lacks {key!r}, which the neurons layout requires")
        return cls(storage, folder, meta)

    # -- small arrays, read once ---------------------------------------------------------------
    def _memo(self, key: str, build: Any) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def _path(self, name: str) -> str:
        return f"{self.folder}/{name}"

    def _has(self, name: str) -> bool:
        return self.storage.entry_kind(self._path(name)) == "file"

    @property
    def dims(self) -> tuple[int, int]:
        h, w = self.meta["dims"][:2]
        return int(h), int(w)

    @property
    def n_neurons(self) -> int:
        return int(self.meta["n_neurons"])

    @property
    def n_frames(self) -> int:
        return int(self.meta["n_frames"])

    def footprints(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(data, indices, indptr) of A, checked against ``dims`` and K."""

        def build() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            where = self.storage.relative(self._path("A.npz"))
            try:
                raw = self.storage.read_bytes(self._path("A.npz"))
            except FileNotFoundError:
                raise LayoutError(f"{where} is missing: the footprints of the neurons layout") from None
            data, indices, indptr, shape = _load_csc(raw, where)
            h, w = self.dims
            if shape != (h * w, self.n_neurons):
                raise LayoutError(
                    f"{where} is {shape[0]} × {shape[1]}; meta.json says {h * w} pixels × {self.n_neurons}"
                )
            return data.astype(np.float32), indices.astype(np.int64), indptr.astype(np.int64)

        return self._memo("A", build)

    def footprint(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Neuron ``k``'s pixels (flat indices) and weights."""
        data, indices, indptr = self.footprints()
        return indices[indptr[k] : indptr[k + 1]], data[indptr[k] : indptr[k + 1]]

    def session_bounds(self) -> list[int]:
        def build() -> list[int]:
            if self._has("session_bounds.npy"):
                raw = self.storage.read_bytes(self._path("session_bounds.npy"))
                return [int(v) for v in _load_npy(raw, "session_bounds.npy")]
            return [0, self.n_frames]

        return self._memo("bounds", build)

    def session_ids(self) -> list[str]:
        ids = self.meta.get("session_ids")
        n = len(self.session_bounds()) - 1
        return [str(s) for s in ids] if isinstance(ids, list) and len(ids) == n else [f"session {i}" for i in range(n)]

    def images(self) -> list[ImageRef]:
        """The background images meta.json lists; else ``Cn.npy``/``PNR.npy`` beside it."""
        listed = self.meta.get("images")
        if isinstance(listed, list):
            return [
                ImageRef(str(i["kind"]), None if i.get("session") is None else str(i["session"]), str(i["file"]))
                for i in listed
                if isinstance(i, dict) and "kind" in i and "file" in i and ".." not in str(i["file"]).split("/")
            ]
        return [ImageRef(k, None, f"{k}.npy") for k in ("Cn", "PNR") if self._has(f"{k}.npy")]

    def image(self, kind: str, session: str | None) -> np.ndarray:
        ref = next((i for i in self.images() if i.kind == kind and i.session == session), None)
        if ref is None:
            raise LayoutError(f"no {kind} image for {'the whole recording' if session is None else session}")

        def build() -> np.ndarray:
            arr = _load_npy(self.storage.read_bytes(self._path(ref.file)), ref.file)
            if arr.shape[:2] != self.dims:
                raise LayoutError(f"{ref.file} is {arr.shape}, not the layout's dims {list(self.dims)}")
            return arr.astype(np.float32)

        return self._memo(f"image:{ref.file}", build)

    # -- traces, one row at a time ----------------------------------------------------------
    def _trace_header(self, name: str) -> _Npy | None:
        def build() -> _Npy | None:
            if not self._has(f"{name}.npy"):
                return None
            head = self.storage.read_head(self._path(f"{name}.npy"), 4096)
            npy = _npy_header(head, f"{name}.npy")
            if len(npy.shape) != 2 or npy.shape[0] != self.n_neurons:
                raise LayoutError(f"{name}.npy is {npy.shape}; the layout needs (K={self.n_neurons}, T)")
            return npy

        return self._memo(f"npy:{name}", build)

    def rows(self, name: str, start: int, stop: int) -> np.ndarray | None:
        """Rows ``start:stop`` of the (K, T) array ``name``, or None when the layout has no such array."""
        npy = self._trace_header(name)
        if npy is None:
            return None
        width = npy.shape[1] * npy.dtype.itemsize
        raw = self.storage.read_range(self._path(f"{name}.npy"), npy.offset + start * width, (stop - start) * width)
        if len(raw) != (stop - start) * width:
            raise LayoutError(f"{name}.npy is shorter than its header says")
        return np.frombuffer(raw, dtype=npy.dtype).reshape(stop - start, npy.shape[1])

    def trace(self, name: str, k: int) -> np.ndarray | None:
        rows = self.rows(name, k, k + 1)
        return None if rows is None else rows[0]

    def activity(self) -> list[list[float]]:
        """Each neuron's mean activity (S, else C, else C_raw) per session; read in blocks of rows."""

        def build() -> list[list[float]]:
            name = next((n for n in ("S", "C", "C_raw") if self._trace_header(n) is not None), None)
            bounds = self.session_bounds()
            out: list[list[float]] = []
            if name is None:
                return [[0.0] * (len(bounds) - 1) for _ in range(self.n_neurons)]
            for start in range(0, self.n_neurons, _ROWS_PER_READ):
                block = self.rows(name, start, min(start + _ROWS_PER_READ, self.n_neurons))
                assert block is not None
                means = [block[:, a:b].mean(axis=1, dtype=np.float64) for a, b in zip(bounds, bounds[1:], strict=False)]
                out += [[_round(float(m[i])) or 0.0 for m in means] for i in range(block.shape[0])]
            return out

        return self._memo("activity", build)


class LayoutCache:
    """Open layouts by key (job, dataset), the least recently used dropped past ``size``."""

    def __init__(self, size: int = 8):
        self.size = size
        self._items: OrderedDict[tuple[str, str], Layout] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str], storage: Storage, folder: str) -> Layout:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        layout = Layout.open(storage, folder)
        with self._lock:
            self._items[key] = layout
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return layout
