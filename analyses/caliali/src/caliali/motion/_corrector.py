"""The stateful core of within-session correction: one chunk in, corrected
frames out, with a state that can be saved and restored to resume."""

from __future__ import annotations

from typing import Any

import numpy as np

from caliali.projections.vessels import bv_filter

from ._errors import MotionError
from .result import MotionResult
from .rigid import RigidTemplate
from .shifts import apply_shifts, valid_mask_from_shifts

__all__ = ["Corrector"]

# The template is seeded on at least this many frames (or the whole session
# when it is shorter): a first chunk of a frame or two (a tiny batch_frames, a
# temporal_ds group boundary) would otherwise seed it with one frame's noise.
SEED_FRAMES = 32


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


class Corrector:
    """Register, shift and gap-fill one chunk at a time (see
    :func:`caliali.motion.correct_session` for the method).

    Chunks may have any length: until the template is seeded, chunks are held
    back until :data:`SEED_FRAMES` frames (or the end of the session) have come.
    Held frames are not part of :meth:`state`; a resumed run reads them again.
    """

    def __init__(self, *, gSig: float, max_shift: float = 20, border: float = 0.1, interpolation: str = "cubic"):
        if not gSig > 0:
            raise MotionError(f"gSig (neuron radius, px) must be > 0, got {gSig}")
        self.gSig, self.interpolation = gSig, interpolation
        self.template = RigidTemplate(max_shift=max_shift, border=border)
        self.filler = _GapFiller()
        self.shifts: list[np.ndarray] = []
        self.dropped: list[np.ndarray] = []
        self.peak: list[np.ndarray] = []
        self.registered: list[np.ndarray] = []
        self.shape: tuple[int, int] | None = None
        self.done = 0
        self._held: list[np.ndarray] = []  # first chunks, until the seed is long enough

    def process(self, chunk: np.ndarray) -> np.ndarray | None:
        """Correct the next chunk; return the frames ready to write, in order."""
        frames = np.asarray(chunk, dtype=np.float32)
        if frames.ndim != 3 or frames.shape[0] == 0:
            raise MotionError(f"chunks must be non-empty (t, h, w) arrays, got shape {frames.shape}")
        first = self.done + sum(len(h) for h in self._held)
        if not np.all(np.isfinite(frames)):
            raise MotionError(f"frames {first}..{first + len(frames)} contain NaN or infinite values")
        if self.shape is None:
            self.shape = frames.shape[1:]
        elif frames.shape[1:] != self.shape:
            raise MotionError(f"frame shape changed from {self.shape} to {frames.shape[1:]} at frame {first}")
        if self.done == 0:
            self._held.append(frames)
            if first + len(frames) < SEED_FRAMES:
                return None
            frames, self._held = np.concatenate(self._held), []
        return self._correct(frames)

    def _correct(self, frames: np.ndarray) -> np.ndarray | None:
        dropped = ~frames.reshape(len(frames), -1).any(axis=1)
        shifts = np.full((len(frames), 2), np.nan)
        peak = np.full(len(frames), np.nan)
        registered = np.zeros(len(frames), bool)
        if not dropped.any():  # the common case, without extra copies
            shifts[:], peak[:], registered[:] = self.template.register(
                bv_filter(frames, gSig=self.gSig), with_registered=True
            )
            corrected = apply_shifts(frames, shifts, interpolation=self.interpolation)
        else:
            corrected = np.zeros_like(frames)
            if (~dropped).any():
                keep = frames[~dropped]
                s, p, r = self.template.register(bv_filter(keep, gSig=self.gSig), with_registered=True)
                shifts[~dropped], peak[~dropped], registered[~dropped] = s, p, r
                corrected[~dropped] = apply_shifts(keep, s, interpolation=self.interpolation)
        self.shifts.append(shifts)
        self.dropped.append(dropped)
        self.peak.append(peak)
        self.registered.append(registered)
        self.done += len(frames)
        return self.filler.feed(corrected, dropped)

    def flush(self) -> np.ndarray | None:
        """Frames still held back (a trailing run of dropped frames)."""
        if self.shape is None:
            raise MotionError("the session has no frames")
        ready = None
        if self._held:  # a session shorter than the seed: the template is seeded on all of it
            frames, self._held = np.concatenate(self._held), []
            ready = self._correct(frames)
        tail = self.filler.finish()
        parts = [p for p in (ready, tail) if p is not None]
        return np.concatenate(parts) if parts else None

    def result(self) -> MotionResult:
        """The :class:`~caliali.motion.MotionResult` of everything processed."""
        shifts = np.concatenate(self.shifts)
        dropped = np.concatenate(self.dropped)
        good = np.flatnonzero(~dropped)
        for col in range(2):
            shifts[dropped, col] = np.interp(np.flatnonzero(dropped), good, shifts[good, col])
        return MotionResult(
            shifts=shifts,
            valid_mask=valid_mask_from_shifts(shifts[good], self.shape),
            dropped=dropped,
            peak=np.concatenate(self.peak),
            template=np.asarray(self.template.template, dtype=np.float32),
            registered=np.concatenate(self.registered),
        )

    # -- resuming ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything needed to continue after the frames processed so far."""
        h, w = self.shape if self.shape is not None else (0, 0)
        empty = np.zeros((0, h, w), np.float32)
        return {
            "shape": np.array([h, w]),
            "shifts": np.concatenate(self.shifts) if self.shifts else np.zeros((0, 2)),
            "dropped": np.concatenate(self.dropped) if self.dropped else np.zeros(0, bool),
            "peak": np.concatenate(self.peak) if self.peak else np.zeros(0),
            "registered": np.concatenate(self.registered) if self.registered else np.zeros(0, bool),
            "last_registered": np.zeros((0, 2))
            if self.template.last_registered is None
            else self.template.last_registered[None],
            "template": empty[:0] if self.template.template is None else self.template.template[None],
            "template_frames": np.array(self.template.n_frames),
            "last": empty if self.filler.last is None else self.filler.last[None],
            "pending": np.array(self.filler.pending),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state`."""
        h, w = (int(n) for n in state["shape"])
        self.shape = (h, w) if h and w else None
        self.shifts, self.dropped, self.peak = [state["shifts"]], [state["dropped"]], [state["peak"]]
        # a state saved before frames were checked for registering: every frame then counted as registered
        self.registered = [state.get("registered", ~state["dropped"].astype(bool))]
        last = state.get("last_registered", np.zeros((0, 2)))
        self.template.last_registered = last[0].astype(np.float64) if len(last) else None
        self.done = len(state["shifts"])
        self.template.template = state["template"][0].astype(np.float64) if len(state["template"]) else None
        self.template.n_frames = int(state["template_frames"])
        self.filler.last = state["last"][0].copy() if len(state["last"]) else None
        self.filler.pending = int(state["pending"])
