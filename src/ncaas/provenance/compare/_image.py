"""Images: decoded pixels, frame by frame; metadata (a PNG's text chunks, say) is not compared.

Images are decoded under a pixel limit, so a small file that unpacks to gigapixels (a
decompression bomb) is refused rather than decoded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

from . import Outcome

__all__ = ["MAX_PIXELS", "compare_images"]

MAX_PIXELS = 64_000_000  # per frame: far beyond any QC figure, far below a bomb's size


def _frames(path: Path) -> tuple[Image.Image, list[np.ndarray]]:
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # larger raises DecompressionBombError (or its warning, made an error)
    image = Image.open(path)
    return image, [np.asarray(frame) for frame in ImageSequence.Iterator(image)]


def compare_images(a: Path, b: Path) -> Outcome:
    """Equal when every decoded pixel is; otherwise how many pixels differ, and by how much at most."""
    ia, fa = _frames(a)
    ib, fb = _frames(b)
    if (ia.width, ia.height) != (ib.width, ib.height):
        return Outcome(False, f"size {ia.width}x{ia.height} vs {ib.width}x{ib.height} pixels")
    if ia.mode != ib.mode:
        return Outcome(False, f"pixel format {ia.mode} vs {ib.mode}")
    if len(fa) != len(fb):
        return Outcome(False, f"{len(fa)} vs {len(fb)} frames")
    for n, (x, y) in enumerate(zip(fa, fb)):
        if np.array_equal(x, y):
            continue
        d = np.abs(x.astype(np.int64) - y.astype(np.int64))
        if d.ndim == 3:  # channels: a pixel differs when any of its channels does
            d = d.max(axis=2)
        frame = f" in frame {n + 1}" if len(fa) > 1 else ""
        return Outcome(False, f"{np.count_nonzero(d):,} of {d.size:,} pixels differ{frame}, largest {int(d.max())}")
    return Outcome(True, "same pixels (the files differ in metadata or encoding)", exact=True)
