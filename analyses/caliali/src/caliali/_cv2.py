"""OpenCV as caliali uses it: import ``cv2`` from here, never directly.

OpenCV hands some float kernels to Intel IPP when its wheel bundles it. IPP's
``cv2.magnitude`` (the Hessian step of the blood-vessel filter) gave different
bits for the same input in different processes, and the differences grew
through motion correction's template into every output. OpenCV's own kernels
give the same bits every time and were as fast here (``bv_filter`` on 500
frames of 120 x 188: 0.52 s with IPP, 0.55 s without). The switch is
process-wide, so it is made once, on the first import of this module.
"""

from __future__ import annotations

import cv2

cv2.ipp.setUseIPP(False)

__all__ = ["cv2"]
