"""Inter-session alignment: translation, groupwise diffeomorphic demons,
blood-vessel reliability, QC, and streaming application to videos.

Fields follow the caliali backward convention
``aligned[y, x] = session[y + dy[y, x], x + dx[y, x]]``.
"""

from caliali.registration._errors import AlignmentError
from caliali.registration.alignment import Alignment, align_sessions
from caliali.registration.apply import AlignedVideo, FrameWarper, apply_alignment
from caliali.registration.persist import load_alignment, save_alignment

__all__ = [
    "AlignedVideo",
    "Alignment",
    "AlignmentError",
    "FrameWarper",
    "align_sessions",
    "apply_alignment",
    "load_alignment",
    "save_alignment",
]
