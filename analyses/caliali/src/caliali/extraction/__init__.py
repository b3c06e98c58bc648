"""Source extraction (CNMF-E) across all sessions of the aligned movie, in bounded memory.

Public API
----------
ExtractionParams(gSig, min_corr, min_pnr, batch_frames, memory_budget, ...)  the options, checked, with defaults
extract(video, params, *, session_bounds, cn, pnr, valid_mask, work_dir, progress, **options) -> Extraction
summary_images(video, *, session_bounds, gSig, ...) -> (cn, pnr)
session_images(video, *, session_bounds, gSig, ...) -> SessionImages (each session's Cn, PNR, mean, max)
find_seeds(cn, pnr, *, gSig, min_corr, min_pnr) -> (n, 2)
plan_batches(session_bounds, frame_shape, *, batch_frames, memory_budget) -> list[Batch]
"""

from ._batches import Batch, parse_memory_budget, plan_batches
from ._errors import ExtractionError
from ._params import ExtractionParams, auto_min_pnr
from ._result import Extraction
from ._seeds import find_seeds
from ._summary import SessionImages, session_images, summary_images
from .cnmfe import extract

__all__ = [
    "extract",
    "Extraction",
    "ExtractionError",
    "ExtractionParams",
    "auto_min_pnr",
    "summary_images",
    "session_images",
    "SessionImages",
    "find_seeds",
    "plan_batches",
    "Batch",
    "parse_memory_budget",
]
