"""The options of an extraction, as one validated object with the method's defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ._batches import parse_memory_budget
from ._errors import ExtractionError

__all__ = ["AUTO_PNR_SIGMAS", "ExtractionParams", "auto_min_pnr"]

# How far above the bulk of the PNR image a seed must stand, in robust standard deviations.
AUTO_PNR_SIGMAS = 2.0


@dataclass(frozen=True)
class ExtractionParams:
    """Options of :func:`~caliali.extraction.extract`; checked when made (CNMF-E defaults).

    Parameters
    ----------
    gSig : float
        Neuron radius in pixels (gSiz = 4 gSig is the neuron diameter bound).
    min_corr, min_pnr : float
        Seed thresholds on Cn and PNR (defaults 0.1 and ``"auto"``). ``min_pnr="auto"`` takes it from
        the recording (:func:`auto_min_pnr`): a fixed PNR threshold suits only one recording length
        and noise (the PNR of pure noise grows with the number of frames), and CNMF-E's own default
        of 6 kept about 1 in 8 of the cells minian found in its 100-frame test movie.
    batch_frames : int, optional
        Frames per temporal batch; default derived from ``memory_budget``.
    memory_budget : int or str
        Bytes (or e.g. ``"2GB"``) for the frames of one batch and its working copies.
    merge_thr : float
        Trace correlation above which overlapping components are merged.
    max_iter, tol : int, float
        At most ``max_iter`` rounds; stop when no component was merged or
        removed and the median relative footprint change is below ``tol``, or
        has stopped falling (less than 10% below the previous round): within
        twice the footprints' standard error that is convergence as far as
        the data can tell, above it a fit that is not converging.
    bg_ssub : int
        Spatial downsampling of the ring background grid.
    ring_factor : float
        Ring radius in units of gSiz.
    n_sectors : int
        Angular sectors of the ring, each with a weight per pixel.
    patch_size, patch_overlap : int
        Spatial patches of the initialisation.
    box_factor : float
        Half-width of the initialisation box in units of gSig.
    min_snr : float or "auto"
        Components whose strongest calcium event (the least probable run of
        two decay times of frames of the raw trace, best session) is less
        exceptional than ``min_snr`` x noise in every frame are removed.
        Default ``"auto"``: 3, or less where the traces' own noise cannot
        reach it: the first round's traces (the most components, the fits to
        noise among them) show by how far they dip below their baselines how
        far noise rises, and the level is where the dips' upper tail puts
        0.05 of those components (`false_alarm_level`): about one component
        fitted to noise in 10-20 runs. Held for every round; recorded in the
        history. On real recordings the traces dip beyond 3, so it is 3.
    residual_seeds : bool
        After the second round, look for the neurons the seeds missed in the residual (the movie
        less the model), next to the components found, and fit them too (CNMF-E's "pick neurons
        from the residual"): more of the dim neurons beside bright ones, at about a third more
        extraction time (figures in the caliali benchmarks README). Default on.

    Raises
    ------
    ExtractionError
        A value out of range, naming the option and what is allowed.

    Examples
    --------
    >>> ExtractionParams(gSig=3, min_corr=0.2, min_pnr=4).with_options(max_iter=5).max_iter
    5
    """

    gSig: float = 3.0
    min_corr: float = 0.1
    min_pnr: float | str = "auto"
    merge_thr: float = 0.65
    max_iter: int = 20
    tol: float = 0.05
    bg_ssub: int = 2
    ring_factor: float = 1.5
    n_sectors: int = 4
    patch_size: int = 64
    patch_overlap: int = 32
    box_factor: float = 6.0
    min_snr: float | str = "auto"
    residual_seeds: bool = True
    batch_frames: int | None = None
    memory_budget: int | str | None = "2GB"

    def __post_init__(self) -> None:
        gSig = self.gSig
        if not (isinstance(gSig, (int, float)) and 0.5 <= gSig <= 50):
            raise ExtractionError(f"gSig (neuron radius in pixels) must be a number between 0.5 and 50, got {gSig!r}")
        if not -1 <= self.min_corr <= 1:
            raise ExtractionError(f"min_corr must lie in [-1, 1], got {self.min_corr!r}")
        if self.min_pnr != "auto" and not (isinstance(self.min_pnr, (int, float)) and self.min_pnr >= 0):
            raise ExtractionError(f"min_pnr must be a number >= 0 or 'auto', got {self.min_pnr!r}")
        if self.min_snr != "auto" and not (isinstance(self.min_snr, (int, float)) and self.min_snr >= 0):
            raise ExtractionError(f"min_snr must be a number >= 0 or 'auto', got {self.min_snr!r}")
        if not 0 < self.merge_thr <= 1:
            raise ExtractionError(f"merge_thr must lie in (0, 1], got {self.merge_thr!r}")
        if int(self.max_iter) < 1:
            raise ExtractionError(f"max_iter must be at least 1, got {self.max_iter!r}")
        if self.tol <= 0:
            raise ExtractionError(f"tol must be positive, got {self.tol!r}")
        if int(self.bg_ssub) < 1:
            raise ExtractionError(f"bg_ssub must be a positive integer, got {self.bg_ssub!r}")

    def with_options(self, **options: Any) -> ExtractionParams:
        """A copy with ``options`` changed; an unknown name is refused with the known ones."""
        unknown = sorted(set(options) - {f.name for f in fields(self)})
        if unknown:
            known = ", ".join(f.name for f in fields(self))
            raise ExtractionError(f"unknown extraction option(s) {', '.join(unknown)}; known options are: {known}")
        return replace(self, **options) if options else self

    @classmethod
    def from_config(cls, config: Any) -> ExtractionParams:
        """The extraction options of a validated run config (:class:`caliali.config.CalialiConfig`).

        Options the config shares with extraction keep their names; the neuron
        radius is taken at the downsampled resolution and ``batch_frames`` 0
        means "from the memory budget".
        """
        shared = {f.name: getattr(config, f.name) for f in fields(cls) if f.name in type(config).model_fields}
        shared.update(gSig=config.gsig_ds, batch_frames=config.batch_frames or None)
        return cls(**shared)

    def record(self, *, batch_frames: int, n_batches: int) -> dict[str, Any]:
        """What an extraction ran with, as its result records it: the batches it used, the budget in bytes."""
        options = {k: v for k, v in asdict(self).items() if k not in ("batch_frames", "memory_budget")}
        budget = None if self.memory_budget is None else parse_memory_budget(self.memory_budget)
        return {**options, "batch_frames": int(batch_frames), "n_batches": n_batches, "memory_budget": budget}


def auto_min_pnr(pnr: Any, valid_mask: Any = None) -> tuple[float, str]:
    """The seed threshold on PNR chosen from a recording's PNR image, and how it was chosen (in words).

    Most pixels are not a neuron's centre, so the bulk of the PNR image is what noise and background
    reach over this recording: its median plus ``AUTO_PNR_SIGMAS`` robust standard deviations
    (1.4826 x the median absolute deviation) over the valid pixels.
    """
    import numpy as np

    values = np.asarray(pnr, np.float64)
    if valid_mask is not None:
        values = values[np.asarray(valid_mask, bool)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, "auto: no valid pixel, so no threshold"
    median = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - median)))
    level = median + AUTO_PNR_SIGMAS * spread
    return level, f"auto: median {median:.2f} + {AUTO_PNR_SIGMAS:g} x robust sd {spread:.2f} of the PNR image"
