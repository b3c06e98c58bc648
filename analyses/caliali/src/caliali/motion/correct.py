"""Within-session rigid motion correction, streaming chunk by chunk.

One session (one or more files, in order) is read in chunks, downsampled,
registered on blood-vessel images against a template carried across chunks,
shifted (subpixel) and written out; dropped (all-zero) frames are filled by
interpolation in time. Memory is a few copies of one chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caliali.chunking import iter_chunks
from caliali.experiment import Session
from caliali.io import open_video
from caliali.projections.vessels import bv_filter

from ._errors import MotionError
from .downsample import downsample_chunks, downsampled_shape
from .rigid import RigidTemplate
from .shifts import apply_shifts, valid_mask_from_shifts

__all__ = ["MotionResult", "correct_frames", "correct_session", "session_chunks", "session_info"]

Progress = Callable[[float, str], None]

# float32 copies of a chunk held at peak (raw, BV images, corrected, the
# registration's FFT block; 4.4 measured with tracemalloc at 300x300), used to
# size chunks from a memory budget.
CHUNK_COPIES = 5


@dataclass(frozen=True)
class MotionResult:
    """What :func:`correct_session` found.

    Attributes
    ----------
    shifts : (t, 2) float64
        Per-frame ``(dy, dx)``: ``corrected[y, x] = frame[y + dy, x + dx]``.
        Dropped frames carry shifts interpolated from their neighbours.
    valid_mask : (h, w) bool
        Pixels whose data is real in every corrected frame (the rest were
        filled from the nearest border pixel); use instead of cropping.
    dropped : (t,) bool
        Frames that were all zero in the input and were filled by
        interpolation in time.
    peak : (t,) float64
        Normalised cross-correlation with the template at the chosen shift
        (NaN for dropped frames): low values flag frames that did not register.
    template : (h, w) float32
        The final blood-vessel template.
    """

    shifts: np.ndarray
    valid_mask: np.ndarray
    dropped: np.ndarray
    peak: np.ndarray
    template: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:
        # ``shifts, valid_mask = correct_session(...)`` unpacks the two that
        # the rest of the pipeline needs.
        return iter((self.shifts, self.valid_mask))

    def save(self, folder: Path | str, *, name: str = "motion") -> dict[str, Path]:
        """Write ``<name>_shifts.npy`` / ``.csv``, ``<name>_valid_mask.npy``,
        ``<name>_template.npy`` and a JSON summary into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "shifts": folder / f"{name}_shifts.npy",
            "shifts_csv": folder / f"{name}_shifts.csv",
            "valid_mask": folder / f"{name}_valid_mask.npy",
            "template": folder / f"{name}_template.npy",
            "summary": folder / f"{name}_summary.json",
        }
        np.save(paths["shifts"], self.shifts)
        table = np.column_stack([np.arange(len(self.shifts)), self.shifts, self.dropped, self.peak])
        np.savetxt(paths["shifts_csv"], table, delimiter=",", fmt=["%d", "%.4f", "%.4f", "%d", "%.4f"],
                   header="frame,dy,dx,dropped,peak", comments="")
        np.save(paths["valid_mask"], self.valid_mask)
        np.save(paths["template"], self.template)
        paths["summary"].write_text(json.dumps(self.summary(), indent=2))
        return paths

    def summary(self) -> dict[str, Any]:
        """Plain-number summary for logs and QC."""
        mag = np.hypot(self.shifts[:, 0], self.shifts[:, 1]) if len(self.shifts) else np.zeros(1)
        return {
            "n_frames": len(self.shifts),
            "n_dropped": int(self.dropped.sum()),
            "max_shift_px": float(mag.max()),
            "median_shift_px": float(np.median(mag)),
            "valid_fraction": float(self.valid_mask.mean()),
            "median_peak_correlation": float(np.nanmedian(self.peak)) if np.isfinite(self.peak).any() else None,
        }


class _GapFiller:
    """Streams corrected frames out in order, filling runs of dropped frames
    by linear interpolation between the valid frames around them (the nearest
    valid frame at the ends of the session). Only the run's length and the
    last valid frame are held, so a long run costs no memory."""

    def __init__(self) -> None:
        self.last: np.ndarray | None = None
        self.pending = 0

    def _run(self, nxt: np.ndarray | None) -> list[np.ndarray]:
        n, prev = self.pending, self.last
        self.pending = 0
        if n == 0:
            return []
        if prev is None and nxt is None:
            return []
        if prev is None or nxt is None:
            fill = prev if nxt is None else nxt
            return [np.repeat(fill[None], n, axis=0)]
        w = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None, None]
        return [(1 - w) * prev[None] + w * nxt[None]]

    def feed(self, frames: np.ndarray, dropped: np.ndarray) -> np.ndarray | None:
        """Frames ready to write (may be None when the chunk is all dropped)."""
        if self.pending == 0 and not dropped.any():
            self.last = frames[-1].copy()
            return frames
        out: list[np.ndarray] = []
        start = 0
        valid_idx = np.flatnonzero(~dropped)
        for i in valid_idx:
            gap = i - start
            self.pending += gap
            out.extend(self._run(frames[i]))
            out.append(frames[i : i + 1])
            self.last = frames[i].copy()
            start = i + 1
        self.pending += len(frames) - start
        return np.concatenate(out).astype(np.float32, copy=False) if out else None

    def finish(self) -> np.ndarray | None:
        if self.last is None and self.pending:
            raise MotionError("every frame of the session is all zero (dropped); nothing to correct")
        parts = self._run(None)
        return parts[0].astype(np.float32, copy=False) if parts else None


def _as_sink(out: Any) -> Callable[[np.ndarray], None] | None:
    if out is None:
        return None
    if isinstance(out, (list, tuple)):
        sinks = [_as_sink(o) for o in out]

        def fan_out(frames: np.ndarray) -> None:
            for sink in sinks:
                if sink is not None:
                    sink(frames)

        return fan_out
    for method in ("append", "write"):
        if callable(getattr(out, method, None)):
            return getattr(out, method)
    if callable(out):
        return out
    raise MotionError(
        f"out must be None, a callable taking a (t, h, w) chunk, or an object with .append()/.write(); "
        f"got {type(out).__name__}"
    )


def correct_frames(
    chunks: Iterable[np.ndarray],
    *,
    gSig: float,
    out: Any = None,
    max_shift: float = 20,
    border: float = 0.1,
    interpolation: str = "cubic",
) -> MotionResult:
    """Rigid-correct a stream of ``(t, h, w)`` chunks of one session.

    The streaming core of :func:`correct_session` (which adds file reading
    and downsampling); see there for the method and parameters.
    """
    if not gSig > 0:
        raise MotionError(f"gSig (neuron radius, px) must be > 0, got {gSig}")
    sink = _as_sink(out)
    template = RigidTemplate(max_shift=max_shift, border=border)
    filler = _GapFiller()
    shifts_parts, drop_parts, peak_parts = [], [], []
    shape: tuple[int, int] | None = None
    done = 0
    for chunk in chunks:
        frames = np.asarray(chunk, dtype=np.float32)
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise MotionError(f"chunks must be non-empty (t, h, w) arrays, got shape {frames.shape}")
        if not np.all(np.isfinite(frames)):
            raise MotionError(f"frames {done}..{done + len(frames)} contain NaN or infinite values")
        if shape is None:
            shape = frames.shape[1:]
        elif frames.shape[1:] != shape:
            raise MotionError(f"frame shape changed from {shape} to {frames.shape[1:]} at frame {done}")
        dropped = ~frames.reshape(len(frames), -1).any(axis=1)
        shifts = np.full((len(frames), 2), np.nan)
        peak = np.full(len(frames), np.nan)
        if not dropped.any():  # the common case, without extra copies
            shifts[:], peak[:] = template.register(bv_filter(frames, gSig=gSig))
            corrected = apply_shifts(frames, shifts, interpolation=interpolation)
        else:
            corrected = np.zeros_like(frames)
            if (~dropped).any():
                keep = frames[~dropped]
                s, p = template.register(bv_filter(keep, gSig=gSig))
                shifts[~dropped], peak[~dropped] = s, p
                corrected[~dropped] = apply_shifts(keep, s, interpolation=interpolation)
        ready = filler.feed(corrected, dropped)
        if ready is not None and sink is not None:
            sink(ready)
        shifts_parts.append(shifts)
        drop_parts.append(dropped)
        peak_parts.append(peak)
        done += len(frames)
    if shape is None:
        raise MotionError("the session has no frames")
    tail = filler.finish()
    if tail is not None and sink is not None:
        sink(tail)
    shifts = np.concatenate(shifts_parts)
    dropped = np.concatenate(drop_parts)
    good = np.flatnonzero(~dropped)
    for col in range(2):
        shifts[dropped, col] = np.interp(np.flatnonzero(dropped), good, shifts[good, col])
    return MotionResult(
        shifts=shifts,
        valid_mask=valid_mask_from_shifts(shifts[good], shape),
        dropped=dropped,
        peak=np.concatenate(peak_parts),
        template=np.asarray(template.template, dtype=np.float32),
    )


def _is_single(sources: Any) -> bool:
    return isinstance(sources, (str, Path, Session)) or hasattr(sources, "iter_chunks")


def _as_session(item: Any) -> Any:
    """A source the shared chunk loop accepts: a reader or a Session."""
    if hasattr(item, "iter_chunks") or isinstance(item, Session):
        return item
    path = Path(item)
    return Session(id=path.stem, files=(path,))


def _parts(sources: Any) -> list[Any]:
    """The session as chunk-loop sources: one Session for a list of paths,
    one per reader otherwise."""
    items = [sources] if _is_single(sources) else list(sources)
    if not items:
        raise MotionError("a session needs at least one file or reader")
    if all(isinstance(i, (str, Path)) for i in items):
        first = Path(items[0])
        return [Session(id=first.stem, files=tuple(Path(i) for i in items))]
    return [_as_session(i) for i in items]


def session_info(sources: Any) -> tuple[int, tuple[int, int]]:
    """(frames, (h, w)) of a session given as a path, reader, Session or a
    sequence of them; error if its files differ in frame size."""
    total, shape = 0, None
    for part in _parts(sources):
        readers = [part] if hasattr(part, "iter_chunks") else [open_video(f, dataset=part.dataset) for f in part.files]
        for reader in readers:
            try:
                if shape is not None and tuple(reader.frame_shape) != shape:
                    raise MotionError(
                        f"{reader.path}: frames are {reader.frame_shape}, the session's first file has {shape}; "
                        "files of one session must share a frame size"
                    )
                shape = tuple(reader.frame_shape)
                total += int(reader.n_frames)
            finally:
                if reader is not part:
                    reader.close()
    if shape is None:
        raise MotionError("a session needs at least one file or reader")
    return total, shape


def session_chunks(
    sources: Any,
    *,
    batch_frames: int,
    spatial_ds: int = 1,
    temporal_ds: int = 1,
    progress: Progress | None = None,
    label: str = "motion correction",
) -> Iterator[np.ndarray]:
    """Float32 chunks of one session, in order, through the shared chunk loop
    (:func:`caliali.chunking.iter_chunks`), downsampled. ``sources``: a path,
    reader or ``caliali.experiment.Session``, or a sequence of them."""
    parts = _parts(sources)

    def raw() -> Iterator[np.ndarray]:
        for i, part in enumerate(parts):
            def sub(fraction: float, message: str, i: int = i) -> None:
                if progress is not None:
                    progress((i + fraction) / len(parts), message)

            for chunk in iter_chunks(part, batch_frames=batch_frames, progress=sub, label=label):
                yield chunk.data

    return downsample_chunks(raw(), spatial_ds=spatial_ds, temporal_ds=temporal_ds)


def correct_session(
    sources: Any,
    *,
    gSig: float,
    out: Any = None,
    batch_frames: int | None = None,
    memory_budget: int | str | None = None,
    spatial_ds: int = 1,
    temporal_ds: int = 1,
    max_shift: float = 20,
    border: float = 0.1,
    interpolation: str = "cubic",
    progress: Progress | None = None,
) -> MotionResult:
    """Rigid within-session motion correction of one session, streaming.

    Each chunk is downsampled (area averaging in space, averaging in time);
    every frame's blood-vessel image (:func:`caliali.projections.bv_filter`)
    is registered by cross-correlation to a template, with 10 % of each side
    cropped from the template and shifts bounded by ``max_shift``; the
    template is seeded and refined on the first chunk and then carried across
    chunks as a running mean of aligned images. The shifts are applied to the
    raw (downsampled) frames with subpixel interpolation. All-zero (dropped)
    frames are filled by linear interpolation in time between their valid
    neighbours. Borders are not cropped: ``valid_mask`` says which pixels are
    real in every frame.

    Parameters
    ----------
    sources : path, reader, ``caliali.experiment.Session``, or a sequence of them
        The session's files in order (``caliali.io.open_video`` paths or open
        readers with ``iter_chunks``).
    gSig : float
        Neuron radius, px, at the downsampled resolution.
    out : None, path, callable, object with ``.append`` / ``.write``, or a list of these
        Receives the corrected float32 ``(t, h, w)`` chunks in order. A path
        creates a :class:`caliali.store.FrameStore` there (marked complete at
        the end); an object can be a store, a ``caliali.io`` writer or a
        :class:`caliali.projections.ProjectionAccumulator` (projections in the
        same pass). None: only estimate.
    batch_frames : int, optional
        Frames read per chunk. Default: derived from ``memory_budget``.
    memory_budget : int or str, optional
        Bytes (or "2GB") for the chunk's work arrays when ``batch_frames`` is
        not given.
    spatial_ds, temporal_ds : int
        Downsampling factors applied before correction.
    max_shift : float
        Largest shift, px per axis (downsampled pixels).
    border : float
        Fraction of each side of the template ignored by registration.
    interpolation : {"cubic", "linear", "nearest"}
        How subpixel shifts are applied to the frames.
    progress : callable(fraction, message), optional

    Returns
    -------
    MotionResult
        ``shifts`` (t, 2), ``valid_mask`` (h, w), ``dropped``, ``peak``,
        ``template``; unpacks as ``shifts, valid_mask = correct_session(...)``.

    References
    ----------
    .. [1] Vergara, P. et al. (2025). A comprehensive suite for extracting
       neuron signals across multiple sessions in one-photon calcium imaging.
       Nature Communications 16, 3443.
    .. [2] Guizar-Sicairos, M., Thurman, S. T. & Fienup, J. R. (2008). Efficient
       subpixel image registration algorithms. Optics Letters 33, 156-158.
    """
    _, shape = session_info(sources)
    small = downsampled_shape(shape, spatial_ds)
    if batch_frames is None:
        batch_frames = _batch_from_budget(memory_budget, shape)
    if int(batch_frames) < 1:
        raise MotionError(f"batch_frames must be a positive integer, got {batch_frames!r}")
    chunks = session_chunks(
        sources, batch_frames=int(batch_frames), spatial_ds=spatial_ds, temporal_ds=temporal_ds, progress=progress
    )
    store = None
    if isinstance(out, (str, Path)):
        from caliali.store import FrameStore

        store = FrameStore.create(out, small, params={"stage": "motion", "spatial_ds": spatial_ds,
                                                      "temporal_ds": temporal_ds, "gSig": gSig,
                                                      "max_shift": max_shift, "border": border})
        out = store
    result = correct_frames(
        chunks, gSig=gSig, out=out, max_shift=max_shift, border=border, interpolation=interpolation,
    )
    if store is not None:
        store.mark_complete()
    return result


def _batch_from_budget(memory_budget: int | str | None, frame_shape: tuple[int, int]) -> int:
    if memory_budget is None:
        raise MotionError("give batch_frames or memory_budget (bytes or a string like '2GB')")
    from caliali.chunking import batch_frames_for

    return int(batch_frames_for(memory_budget, frame_shape, copies=CHUNK_COPIES))

