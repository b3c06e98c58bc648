"""Within-session rigid motion correction, streaming chunk by chunk.

One session (one or more files, in order) is read in chunks, downsampled,
registered on blood-vessel images against a template carried across chunks,
shifted (subpixel) and written out; dropped (all-zero) frames are filled by
interpolation in time. Memory is a few copies of one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from caliali.chunking import iter_chunks
from caliali.experiment import Session

from ._corrector import Corrector
from ._errors import MotionError
from .downsample import downsample_chunks, downsampled_shape
from .result import MotionResult

__all__ = ["MotionResult", "correct_frames", "correct_session", "session_chunks", "session_info"]

Progress = Callable[[float, str], None]

# float32 copies of a chunk held at peak (raw, BV images, corrected, the
# registration's FFT block; above the peak measured with tracemalloc,
# benchmarks/README.md), used to size chunks from a memory budget.
CHUNK_COPIES = 5


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

    The streaming core of :func:`correct_session` (which adds file reading,
    downsampling and resumable output); see there for the method and
    parameters.
    """
    sink = _as_sink(out)
    corrector = Corrector(gSig=gSig, max_shift=max_shift, border=border, interpolation=interpolation)
    for chunk in chunks:
        ready = corrector.process(chunk)
        if ready is not None and sink is not None:
            sink(ready)
    tail = corrector.flush()
    if tail is not None and sink is not None:
        sink(tail)
    return corrector.result()


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


def _frames_in(part: Any) -> int:
    if hasattr(part, "iter_chunks"):
        return int(part.n_frames)
    return int(part.n_frames())


def _identity(sources: Any) -> list[list[Any]]:
    """(file, frames) of every part, for the store's params."""
    rows = []
    for part in _parts(sources):
        if hasattr(part, "iter_chunks"):
            rows.append([str(part.path), int(part.n_frames)])
        else:
            rows.extend([str(f), n] for f, n in zip(part.files, part.frame_counts(), strict=True))
    return rows


def session_info(sources: Any) -> tuple[int, tuple[int, int]]:
    """(frames, (h, w)) of a session given as a path, reader, Session or a
    sequence of them; error if its files differ in frame size."""
    total, shape = 0, None
    for part in _parts(sources):
        readers = [part] if hasattr(part, "iter_chunks") else [part.open(f) for f in part.files]
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
    start: int = 0,
) -> Iterator[np.ndarray]:
    """Float32 chunks of one session, in order, through the shared chunk loop
    (:func:`caliali.chunking.iter_chunks`), downsampled. ``sources``: a path,
    reader or ``caliali.experiment.Session``, or a sequence of them;
    ``start``: raw frames of the session to skip (to resume)."""
    parts = _parts(sources)

    def raw() -> Iterator[np.ndarray]:
        skip = int(start)
        for i, part in enumerate(parts):

            def sub(fraction: float, message: str, i: int = i) -> None:
                if progress is not None:
                    progress((i + fraction) / len(parts), message)

            n = _frames_in(part)
            if skip >= n:
                skip -= n
                continue
            for chunk in iter_chunks(part, batch_frames=batch_frames, start=skip, progress=sub, label=label):
                yield chunk.data
            skip = 0

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
        means a :class:`caliali.store.FrameStore` there, resumable: a run
        interrupted after some chunks continues from its last committed
        chunk (same sources and options), and a complete one returns at
        once. An object can be a store, a ``caliali.io`` writer or a
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

    def chunks_from(start: int) -> Iterator[np.ndarray]:
        return session_chunks(
            sources,
            batch_frames=int(batch_frames),
            spatial_ds=spatial_ds,
            temporal_ds=temporal_ds,
            progress=progress,
            start=start,
        )

    if isinstance(out, (str, Path)):
        from ._resume import correct_into_store

        params = {
            "stage": "motion",
            "files": _identity(sources),
            "batch_frames": int(batch_frames),
            "spatial_ds": spatial_ds,
            "temporal_ds": temporal_ds,
            "gSig": gSig,
            "max_shift": max_shift,
            "border": border,
            "interpolation": interpolation,
        }
        corrector = Corrector(gSig=gSig, max_shift=max_shift, border=border, interpolation=interpolation)
        return correct_into_store(
            out, chunks_from, corrector, frame_shape=small, params=params, temporal_ds=temporal_ds
        )
    return correct_frames(
        chunks_from(0), gSig=gSig, out=out, max_shift=max_shift, border=border, interpolation=interpolation
    )


def _batch_from_budget(memory_budget: int | str | None, frame_shape: tuple[int, int]) -> int:
    if memory_budget is None:
        raise MotionError("give batch_frames or memory_budget (bytes or a string like '2GB')")
    from caliali.chunking import batch_frames_for

    return int(batch_frames_for(memory_budget, frame_shape, copies=CHUNK_COPIES))
