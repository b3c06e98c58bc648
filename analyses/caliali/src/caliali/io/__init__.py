"""Streaming video input and output.

Every reader yields float32 grey frames (t, h, w), chunk by chunk, without
loading the whole file::

    from caliali.io import open_video
    with open_video("day1.avi") as video:
        for chunk in video.iter_chunks(500):
            ...

Formats: ``.avi``/``.mp4``/``.mov``/``.mkv`` (OpenCV/FFmpeg), ``.tif``/``.tiff``
(tifffile; multi-page, BigTIFF, ImageJ, OME), ``.h5``/``.hdf5`` (h5py;
``dataset=`` selects the array), ``.zarr`` (v2 or v3; ``dataset=`` inside a
group), ``.nwb`` (OnePhotonSeries / TwoPhotonSeries; ``dataset=`` is the
series name) and ``.isxd`` (Inscopix movies, through the optional ``isx``
package: ``pip install 'caliali[isxd]'``).
"""

from __future__ import annotations

from caliali.io._base import VideoReader, to_grey_float32
from caliali.io._open import VIDEO_SUFFIXES, is_video, open_video
from caliali.io._split import split_sizes, split_video
from caliali.io._writers import WRITABLE_SUFFIXES, VideoWriter, open_writer

__all__ = [
    "VIDEO_SUFFIXES",
    "WRITABLE_SUFFIXES",
    "VideoReader",
    "VideoWriter",
    "is_video",
    "open_video",
    "open_writer",
    "split_sizes",
    "split_video",
    "to_grey_float32",
]
