"""Per-session projections, accumulated over chunks: mean image, blood
vessels (BV), local correlation image (Cn) and peak-to-noise ratio (PNR).

Entry point: :func:`session_projections` (or push chunks into a
:class:`ProjectionAccumulator`, e.g. as the ``out`` of motion correction);
pieces of one session combine with :func:`combine_projections`. Building
blocks: :func:`bv_filter`, :func:`remove_vignetting`, :func:`detrend`,
:func:`noise_level`, :func:`enhance_neurons`, :func:`correlation_image`,
:func:`peak_to_noise`. The neuron radius: :func:`estimate_gsig`.
"""

from __future__ import annotations

from ._errors import ProjectionError
from .neurons import CorrelationAccumulator, correlation_image, peak_to_noise
from .preprocess import (
    anisotropic_diffusion,
    detrend,
    detrend_windows,
    enhance_neurons,
    moving_median,
    noise_level,
    tophat_disk,
)
from .session import (
    MIN_SESSION_FRAMES,
    PROJECTION_COPIES,
    ProjectionAccumulator,
    Projections,
    combine_projections,
    session_projections,
)
from .size import (
    GSIG_FRAMES,
    RADIUS_PER_SIGMA,
    ActivityAccumulator,
    NoCellsError,
    SizeEstimate,
    activity_image,
    blob_scales,
    estimate_gsig,
    estimate_session_gsig,
    first_frames,
)
from .vessels import bv_filter, bv_scales, remove_vignetting

__all__ = [
    "GSIG_FRAMES",
    "MIN_SESSION_FRAMES",
    "PROJECTION_COPIES",
    "RADIUS_PER_SIGMA",
    "ActivityAccumulator",
    "NoCellsError",
    "SizeEstimate",
    "activity_image",
    "blob_scales",
    "estimate_gsig",
    "estimate_session_gsig",
    "first_frames",
    "CorrelationAccumulator",
    "ProjectionAccumulator",
    "ProjectionError",
    "Projections",
    "anisotropic_diffusion",
    "bv_filter",
    "bv_scales",
    "combine_projections",
    "correlation_image",
    "detrend",
    "detrend_windows",
    "enhance_neurons",
    "moving_median",
    "noise_level",
    "peak_to_noise",
    "remove_vignetting",
    "session_projections",
    "tophat_disk",
]
