"""Downsampling and within-session rigid motion correction, streaming.

Shift convention (used by every caliali module): a shift ``(dy, dx)`` applied
to a frame gives ``corrected[y, x] = frame[y + dy, x + dx]``; shifts are
``(t, 2)`` float arrays with columns ``(dy, dx)``.

Entry point: :func:`correct_session` (files or readers of one session in, a
:class:`MotionResult` out, corrected chunks streamed to ``out``). Building
blocks: :func:`downsample_chunks`, :func:`estimate_shifts`,
:class:`RigidTemplate`, :func:`apply_shifts`, :func:`valid_mask_from_shifts`;
QC: :func:`save_session_qc`.
"""

from __future__ import annotations

from ._errors import MotionError
from .correct import correct_frames, correct_session, session_chunks, session_info
from .downsample import downsample_chunks, downsample_spatial, downsample_temporal, downsampled_shape
from .qc import plot_session_qc, save_session_qc
from .result import MotionResult
from .rigid import RigidTemplate, border_crop, estimate_shifts
from .shifts import apply_shift, apply_shifts, valid_mask_from_shifts

__all__ = [
    "MotionError",
    "MotionResult",
    "RigidTemplate",
    "apply_shift",
    "apply_shifts",
    "border_crop",
    "correct_frames",
    "correct_session",
    "downsample_chunks",
    "downsample_spatial",
    "downsample_temporal",
    "downsampled_shape",
    "estimate_shifts",
    "plot_session_qc",
    "save_session_qc",
    "session_chunks",
    "session_info",
    "valid_mask_from_shifts",
]
