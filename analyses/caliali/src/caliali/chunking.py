"""Chunk sizes and the one chunk loop every streaming stage uses.

A stage never holds more than ``batch_frames`` frames of a file; the number
comes from a ``memory_budget`` and the frame size, not from the session
length (:mod:`caliali.budget`, whose functions are re-exported here)::

    from caliali.chunking import batch_frames_for, run_chunks
    from caliali.experiment import load_experiment

    exp = load_experiment("manifest.yaml")
    n = batch_frames_for("2GB", exp.frame_shape(), copies=6)
    store = run_chunks(exp, lambda chunk: chunk.data - chunk.data.mean(0),
                       batch_frames=n, out="work/centred.zarr")

:func:`iter_chunks` yields :class:`Chunk` objects (data plus where they come
from) with progress reporting; :func:`run_chunks` applies a function to each
and, with ``out=``, appends the results to a resumable
:class:`~caliali.store.FrameStore`, skipping chunks already committed by an
interrupted run.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from caliali.budget import batch_frames_for, parse_memory_budget
from caliali.exceptions import CalialiError, InputError
from caliali.experiment import Experiment, Session, load_experiment
from caliali.io import VideoReader

__all__ = [
    "Chunk",
    "Progress",
    "aligned_chunk_frames",
    "batch_frames_for",
    "iter_chunks",
    "parse_memory_budget",
    "print_progress",
    "run_chunks",
]

Progress = Callable[[float, str], None]
Source = Experiment | Session | VideoReader | Path | str


def aligned_chunk_frames(batch_frames: int, frame_shape: tuple[int, int]) -> int:
    """Zarr chunk length dividing ``batch_frames``, at most 64 MiB.

    Appends of ``batch_frames`` then fill whole chunks, so zarr never reads
    back a partial chunk to complete it, and big chunks write fastest
    (``benchmarks/io_memory.py``; figures in ``benchmarks/README.md``). When
    no divisor is at least half the 16 MiB default (e.g. a prime batch), the
    default is used.
    """
    from caliali.store import default_chunk_frames

    default = default_chunk_frames(frame_shape)
    best = max(d for d in range(1, min(batch_frames, 4 * default) + 1) if batch_frames % d == 0)
    return best if best * 2 >= min(default, batch_frames) else default


def print_progress(fraction: float, message: str) -> None:
    """Progress callback printing ``NCAAS_PROGRESS <fraction> <message>`` lines to stdout."""
    print(f"NCAAS_PROGRESS {min(max(fraction, 0.0), 1.0):.4f} {message}", file=sys.stdout, flush=True)


@dataclass(frozen=True)
class Chunk:
    """Frames ``[start, stop)`` of the experiment (all sessions concatenated in time).

    Attributes
    ----------
    data : ndarray
        float32 (t, h, w), owned by the receiver.
    index : int
        Chunk number over the whole run (0-based).
    session : int
        Index of the session (0-based); ``session_id`` its name.
    file : Path
        The file the frames come from (chunks never span files).
    start, stop : int
        Frame range in the concatenated experiment.
    session_start : int
        Index of the first frame within its session.
    first_in_session, last_in_session : bool
        Whether this chunk opens / closes its session (to reset or flush
        per-session state).
    """

    data: np.ndarray
    index: int
    session: int
    session_id: str
    file: Path
    start: int
    stop: int
    session_start: int
    first_in_session: bool
    last_in_session: bool


def _sessions(source: Source) -> list[tuple[str, list[Callable[[], VideoReader]]]]:
    """(session id, file openers) for any accepted source."""
    if isinstance(source, VideoReader):
        return [(source.path.stem, [lambda: _Borrowed(source)])]
    if isinstance(source, (str, Path)):
        source = load_experiment(source)
    sessions = source.sessions if isinstance(source, Experiment) else (source,)
    return [(s.id, [lambda p=path, s=s: s.open(p) for path in s.files]) for s in sessions]


def _frame_counts(openers: list[Callable[[], VideoReader]]) -> list[int]:
    """Frames in each file (headers only), so progress knows the total up front."""
    counts = []
    for opener in openers:
        with opener() as video:
            counts.append(video.n_frames)
    return counts


class _Borrowed(VideoReader):
    """A reader owned by the caller: the loop reads it but does not close it."""

    def __init__(self, reader: VideoReader) -> None:
        self._inner = reader
        self.path, self.n_frames, self.frame_shape = reader.path, reader.n_frames, reader.frame_shape
        self.dtype, self.fs = reader.dtype, reader.fs

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self._inner.read(start, stop)


def iter_chunks(
    source: Source,
    *,
    batch_frames: int,
    start: int = 0,
    progress: Progress | None = None,
    label: str = "reading",
) -> Iterator[Chunk]:
    """Yield every chunk of ``source`` in time order, one file open at a time.

    Parameters
    ----------
    source : Experiment, Session, VideoReader, or path
        A path is loaded with :func:`caliali.experiment.load_experiment`.
    batch_frames : int
        Most frames per chunk; a chunk never spans two files.
    start : int
        First frame (in the concatenated experiment) to yield; earlier
        frames are skipped without being read.
    progress : callable, optional
        ``progress(fraction, message)`` after each chunk, e.g. :func:`print_progress`.
    label : str
        Stage name used in progress messages.
    """
    if int(batch_frames) < 1:
        raise InputError(f"batch_frames must be a positive integer, got {batch_frames!r}")
    sessions = _sessions(source)
    counts = [_frame_counts(openers) for _, openers in sessions]
    total = sum(sum(row) for row in counts) or 1
    offset, index = 0, 0
    for s, ((sid, openers), row) in enumerate(zip(sessions, counts, strict=True)):
        session_start, session_total = 0, sum(row)
        for opener, n in zip(openers, row, strict=True):
            if offset + n <= start:
                offset, session_start = offset + n, session_start + n
                index += -(-n // int(batch_frames))
                continue
            with opener() as video:
                first = max(0, start - offset)
                index += first // int(batch_frames)  # the chunk holding `start` keeps its number
                for a in range(first, n, int(batch_frames)):
                    b = min(a + int(batch_frames), n)
                    yield Chunk(
                        data=video.read(a, b),
                        index=index,
                        session=s,
                        session_id=sid,
                        file=video.path,
                        start=offset + a,
                        stop=offset + b,
                        session_start=session_start + a,
                        first_in_session=session_start + a == 0,
                        last_in_session=session_start + b == session_total,
                    )
                    index += 1
                    if progress is not None:
                        progress(
                            (offset + b) / total,
                            f"{label}: session {sid} ({s + 1}/{len(sessions)}), frames {offset + b}/{total}",
                        )
            offset, session_start = offset + n, session_start + n


def run_chunks(
    source: Source,
    func: Callable[[Chunk], np.ndarray | None],
    *,
    batch_frames: int,
    out: Path | str | None = None,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
    label: str = "processing",
) -> Any:
    """Apply ``func`` to every chunk; with ``out``, append its results to a resumable store.

    Parameters
    ----------
    source : Experiment, Session, VideoReader, or path
        What to stream (see :func:`iter_chunks`).
    func : callable
        ``func(chunk) -> ndarray (t', h', w') or None``. Stateless functions
        resume exactly; a stage carrying state across chunks restores it
        itself from the store's committed part.
    batch_frames : int
        Most frames per chunk.
    out : path, optional
        A :class:`~caliali.store.FrameStore` to append results to. If it
        exists from an interrupted run with the same ``params``, the run
        resumes after its last committed chunk; if it is complete, nothing
        is recomputed.
    params : dict, optional
        Everything the output depends on (options, inputs); a store made
        with other params is replaced.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    FrameStore or None
        The completed store when ``out`` is given.

    Notes
    -----
    With ``out``, each result is written by a background thread while the
    next chunk is read and computed; count one more output chunk in the
    ``copies`` given to :func:`batch_frames_for`.
    """
    if out is None:
        for chunk in iter_chunks(source, batch_frames=batch_frames, progress=progress, label=label):
            func(chunk)
        return None
    params = {"batch_frames": int(batch_frames), **(params or {})}
    store = _resumable(out, params)
    if store is not None and store.complete:
        return store
    start = store.source_frames if store is not None else 0
    # One writer thread: chunk k is written while chunk k+1 is read and computed
    # (at most one write pending, so one extra output chunk in memory).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="caliali-store") as writer:
        pending: Future | None = None
        for chunk in iter_chunks(source, batch_frames=batch_frames, start=start, progress=progress, label=label):
            result = func(chunk)
            if result is None:
                raise InputError(f"{label}: the chunk function returned nothing, so there is nothing to store in {out}")
            result = np.array(result, dtype=np.float32)  # a copy: func may reuse its buffer next chunk
            if pending is not None:
                pending.result()
            if store is None:
                store = _create(out, result.shape[1:], batch_frames, params)
            pending = writer.submit(store.append, result, source_frames=chunk.stop - chunk.start)
        if pending is not None:
            pending.result()
    if store is None:
        raise InputError(f"{label}: the source has no frames, so {out} cannot be written")
    store.mark_complete()
    return store


def _resumable(out: Path | str, params: dict[str, Any]) -> Any:
    """The store at ``out`` if an earlier run with the same params left one, else None."""
    from caliali.store import FrameStore

    if not (Path(out) / "progress.json").exists():
        return None
    try:
        existing = FrameStore.open(out)
    except CalialiError:
        return None
    if existing.params != FrameStore.canonical(params):
        return None
    return FrameStore.resume(out, existing.frame_shape, params=params)


def _create(out: Path | str, frame_shape: tuple[int, int], batch_frames: int, params: dict[str, Any]) -> Any:
    from caliali.store import FrameStore

    return FrameStore.create(
        out, frame_shape, chunk_frames=aligned_chunk_frames(int(batch_frames), frame_shape), params=params
    )
