"""Per-session projections, accumulated over chunks: mean image, blood
vessels (BV), local correlation image (Cn) and peak-to-noise ratio (PNR).

Entry point: :func:`session_projections`; pieces of one session combine with
:func:`combine_projections`. Building blocks: :func:`bv_filter`,
:func:`remove_vignetting`, :func:`detrend`, :func:`noise_level`,
:func:`enhance_neurons`, :class:`CorrelationAccumulator`.
"""

from __future__ import annotations

from ._errors import ProjectionError
from .vessels import bv_filter, bv_scales, remove_vignetting

__all__ = [
    "ProjectionError",
    "bv_filter",
    "bv_scales",
    "remove_vignetting",
]
