"""Apply an alignment to whole videos, streaming, into one aligned video."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from caliali._cv2 import cv2
from caliali.chunking import batch_frames_for, run_chunks
from caliali.experiment import Experiment, load_experiment
from caliali.io import VideoReader, open_video
from caliali.registration._errors import AlignmentError
from caliali.registration._fields import in_bounds
from caliali.registration.alignment import Alignment
from caliali.store import FrameStore

__all__ = ["AlignedVideo", "FrameWarper", "apply_alignment"]


class FrameWarper:
    """Warp frames of one session into the common frame (bilinear).

    The remap tables are built once per session; OpenCV's fixed-point tables
    interpolate at 1/32 px, well below the alignment's own error.
    """

    def __init__(self, field: np.ndarray, *, fill: float = 0.0) -> None:
        h, w = field.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self._maps = cv2.convertMaps(xx + field[1], yy + field[0], cv2.CV_16SC2)
        self._outside = ~in_bounds(field, (h, w))
        self.fill = float(fill)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        out = np.empty(frames.shape, dtype=np.float32)
        for i, frame in enumerate(frames):
            out[i] = cv2.remap(
                np.ascontiguousarray(frame, dtype=np.float32),
                *self._maps,
                interpolation=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            )
        out[:, self._outside] = self.fill
        return out


@dataclass(frozen=True)
class AlignedVideo:
    """Result of :func:`apply_alignment`.

    Attributes
    ----------
    store : FrameStore
        The aligned video: float32 (T_total, H, W), time-chunked zarr,
        sessions concatenated in alignment order.
    session_bounds : ndarray (n_sessions + 1,) int
        Session ``s`` occupies frames ``session_bounds[s]:session_bounds[s+1]``.
    valid_mask : ndarray (H, W) bool
        Pixels valid in every session.
    """

    store: FrameStore
    session_bounds: np.ndarray
    valid_mask: np.ndarray

    @property
    def path(self) -> Path:
        return self.store.path

    @property
    def n_frames(self) -> int:
        return self.store.n_frames


class _ArrayReader(VideoReader):
    """An in-memory (t, h, w) movie behind the reader interface."""

    def __init__(self, movie: np.ndarray, name: str) -> None:
        if movie.ndim != 3:
            raise AlignmentError(f"{name}: an in-memory movie must be (t, h, w); got shape {movie.shape}")
        self._movie, self.path = movie, Path(name)
        self.n_frames, self.frame_shape, self.dtype = movie.shape[0], tuple(movie.shape[1:]), movie.dtype

    def _read(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self._movie[start:stop], dtype=np.float32)

    def _close(self) -> None:
        pass


def _fingerprint(alignment: Alignment) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(alignment.total_fields).tobytes())
    digest.update(json.dumps(alignment.sessions).encode())
    return digest.hexdigest()


def _session_index(alignment: Alignment, session_id: str, position: int, n_source: int) -> int:
    if session_id in alignment.sessions:
        return alignment.sessions.index(session_id)
    if n_source == len(alignment.sessions):
        return position
    raise AlignmentError(
        f"session {session_id!r} of the videos is not among the aligned sessions "
        f"{alignment.sessions}; align the same sessions you apply the alignment to."
    )


def apply_alignment(
    alignment: Alignment,
    source: Experiment | str | Path | Sequence[str | Path | np.ndarray | VideoReader],
    out: str | Path,
    *,
    batch_frames: int | None = None,
    memory_budget: int | float | str | None = None,
    fill: float = 0.0,
    progress: Callable[[float, str], None] | None = None,
) -> AlignedVideo:
    """Warp every frame of every file of every session into the common frame,
    streaming, into one time-concatenated float32 video.

    Parameters
    ----------
    alignment : Alignment
        From :func:`caliali.registration.align_sessions`.
    source : Experiment, manifest / folder path, or sequence of videos
        An experiment (or what :func:`caliali.experiment.load_experiment`
        reads): each session's files get that session's transform, matched by
        session id (or by position when the ids differ but the counts agree).
        A sequence: one video (path, reader or in-memory (t, h, w) array) per
        input image given to ``align_sessions``, in the same order.
    out : path
        A :class:`~caliali.store.FrameStore` (zarr). An interrupted run with
        the same alignment resumes after its last committed chunk.
    batch_frames : int, optional
        Frames per chunk; default from ``memory_budget`` (3 float32 copies of
        a chunk are held: read, warped, written).
    memory_budget : int, float or str, optional
        Bytes or e.g. ``"2GB"``; default: half the available memory.
    fill : float
        Value of pixels whose source lies outside a session's image.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    AlignedVideo
    """
    shape = alignment.shape
    if batch_frames is None:
        batch_frames = batch_frames_for(memory_budget, shape, copies=3)
    if int(batch_frames) < 1:
        raise AlignmentError(f"batch_frames must be >= 1, got {batch_frames}")
    batch_frames = int(batch_frames)
    params = {"stage": "apply_alignment", "alignment": _fingerprint(alignment), "fill": fill}
    if isinstance(source, (Experiment, str, Path)):
        experiment = source if isinstance(source, Experiment) else load_experiment(source)
        return _apply_experiment(alignment, experiment, Path(out), batch_frames, params, fill, progress)
    return _apply_inputs(alignment, list(source), Path(out), batch_frames, params, fill, progress)


def _check_shape(shape_seen: tuple[int, int], shape: tuple[int, int], what: str) -> None:
    if tuple(shape_seen) != tuple(shape):
        raise AlignmentError(
            f"{what} has frames {tuple(shape_seen)} but the alignment is {tuple(shape)}; "
            "use the same spatial downsampling for projections and videos."
        )


def _apply_experiment(alignment, experiment, out, batch_frames, params, fill, progress) -> AlignedVideo:
    _check_shape(experiment.frame_shape(), alignment.shape, "the experiment")
    n = len(experiment.sessions)
    index = [_session_index(alignment, s.id, k, n) for k, s in enumerate(experiment.sessions)]
    if sorted(index) != list(range(len(alignment.sessions))):
        raise AlignmentError(
            f"the experiment's sessions {experiment.session_ids} do not match the aligned "
            f"sessions {alignment.sessions} one to one."
        )
    if index != sorted(index):
        raise AlignmentError(
            "the experiment lists the sessions in another order than the alignment; "
            "apply the alignment to the experiment it was computed on."
        )
    warpers: dict[int, FrameWarper] = {}

    def warp_chunk(chunk):
        s = index[chunk.session]
        if s not in warpers:
            warpers.clear()
            warpers[s] = FrameWarper(alignment.total_field(s), fill=fill)
        return warpers[s](chunk.data)

    store = run_chunks(
        experiment,
        warp_chunk,
        batch_frames=batch_frames,
        out=out,
        params=params,
        progress=progress,
        label="applying alignment",
    )
    frames = experiment.session_frames()
    bounds = np.concatenate([[0], np.cumsum(frames)]).astype(np.int64)
    return _finish(alignment, store, bounds)


def _apply_inputs(alignment, videos, out, batch_frames, params, fill, progress) -> AlignedVideo:
    if len(videos) != len(alignment.input_sessions):
        raise AlignmentError(
            f"{len(videos)} videos given but the alignment was computed from "
            f"{len(alignment.input_sessions)} inputs; pass one video per input, in the same order."
        )
    order = sorted(range(len(videos)), key=lambda i: (int(alignment.input_sessions[i]), i))
    bounds = np.zeros(len(alignment.sessions) + 1, dtype=np.int64)
    with ExitStack() as stack:
        readers = {}
        for i in order:
            v = videos[i]
            if isinstance(v, np.ndarray):
                readers[i] = _ArrayReader(v, f"video {i}")
            elif isinstance(v, VideoReader):
                readers[i] = v
            else:
                readers[i] = stack.enter_context(open_video(v))
            _check_shape(readers[i].frame_shape, alignment.shape, f"video {i} ({readers[i].path})")
        total = sum(readers[i].n_frames for i in order) or 1
        store = FrameStore.resume(out, alignment.shape, params=params)
        if store.complete:
            for i in order:
                bounds[int(alignment.input_sessions[i]) + 1 :] += readers[i].n_frames
            return _finish(alignment, store, bounds)
        done_before, written = store.source_frames, 0
        warper: FrameWarper | None = None
        current = -1
        for i in order:
            s = int(alignment.input_sessions[i])
            n = readers[i].n_frames
            first = max(0, done_before - written)
            if first < n:
                if s != current:
                    warper, current = FrameWarper(alignment.total_field(s), fill=fill), s
                for a in range(first, n, batch_frames):
                    b = min(a + batch_frames, n)
                    store.append(warper(readers[i].read(a, b)))
                    if progress is not None:
                        progress((written + b) / total, f"applying alignment: session {alignment.sessions[s]}")
            written += n
            bounds[s + 1 :] = written
        store.mark_complete()
    return _finish(alignment, store, bounds)


def _finish(alignment: Alignment, store: FrameStore, bounds: np.ndarray) -> AlignedVideo:
    np.save(store.path / "session_bounds.npy", bounds)
    np.save(store.path / "valid_mask.npy", alignment.valid_mask)
    return AlignedVideo(store=FrameStore.open(store.path), session_bounds=bounds, valid_mask=alignment.valid_mask)
