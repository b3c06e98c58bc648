"""Inter-session alignment: translation, groupwise diffeomorphic demons,
blood-vessel reliability, QC, and streaming application to videos.

Fields follow the caliali backward convention
``aligned[y, x] = session[y + dy[y, x], x + dx[y, x]]``.
"""

from caliali.registration._errors import AlignmentError
from caliali.registration.alignment import Alignment, align_sessions

__all__ = ["Alignment", "AlignmentError", "align_sessions"]
