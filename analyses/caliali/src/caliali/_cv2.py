"""OpenCV as caliali uses it: import ``cv2`` from here, never directly.

OpenCV hands some float kernels to Intel IPP when its wheel bundles it. IPP's
``cv2.magnitude`` (the Hessian step of the blood-vessel filter) gave different
bits for the same input in different processes, and the differences grew
through motion correction's template into every output. OpenCV's own kernels
give the same bits every time and were as fast here (``bv_filter`` on 500
frames of 120 x 188: 0.52 s with IPP, 0.55 s without).

OpenCV's own threads are off too: ``cv2.filter2D`` with a kernel of 11 x 11 or more
(the high-pass filter from gSig 4 up) filters through a DFT whose parallel parts
sum in an order that changes from call to call, so the same frame gave different
bits (5 distinct results in 6 calls with 2 threads, 1 with one), and the
summary images, seeds and every output after them changed between runs. One
thread is as fast here (the high-pass of 100 frames of 480 x 752: 0.47 s wall
with 2 threads, 0.38 s with one, gSig 4; 0.53 and 0.50 s, gSig 6).

Both switches are process-wide, so they are made once, on the first import of
this module.
"""

from __future__ import annotations

import cv2

cv2.ipp.setUseIPP(False)
cv2.setNumThreads(1)

__all__ = ["cv2"]
