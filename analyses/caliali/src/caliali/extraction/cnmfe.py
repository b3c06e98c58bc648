"""CNMF-E on the aligned, concatenated multi-session movie, in bounded memory.

Outline (Zhou et al. 2018, with CaliAli's multi-session seeding, Vergara et al. 2025):

1. seeds: local maxima of the max-over-sessions Cn x PNR;
2. per temporal batch, greedy rank-1 fits around the same seeds (patch by patch,
   with peeling); a seed's footprint is the activity-weighted mean of its batch
   fits, so every neuron keeps one identity across sessions;
3. iterations over all batches: ring background, temporal HALS per batch,
   OASIS on each whole trace, spatial HALS from sums accumulated over batches,
   removal of empty / silent components, merging of duplicates, until the
   footprints change by less than ``tol``;
4. per-session detrending and noise scaling, AR(2) deconvolution, SNR order.

Only one temporal batch of frames is in memory at a time; its size comes from
``memory_budget``. Traces (K x T) and footprints (sparse) are the only
full-length state; the traces live in unnamed files (`TraceFile`, in
``work_dir``) and every step reads them a batch of frames or one neuron at a
time, so no step holds K x T in memory, however long the recording.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np

from caliali.allocator import release_freed_memory

from ._background import RingBackground, downsample
from ._batches import Batch, check_session_bounds, plan_batches
from ._convergence import convergence_record
from ._deconv import deconvolve_trace
from ._errors import ExtractionError
from ._footprints import Footprints, box_around, box_intersection, image_dot
from ._hals import spatial_hals, temporal_hals
from ._initialize import batch_min_pnr, initialize_batch
from ._merge import merge_components
from ._params import ExtractionParams, auto_min_pnr
from ._postprocess import finalize_traces
from ._result import Extraction
from ._seeds import find_seeds
from ._source import FrameSource, open_source
from ._summary import SessionImages, session_images
from ._traces import TraceFile

__all__ = ["extract"]

Progress = Callable[[float, str], None] | None


def _report(progress: Progress, lo: float, hi: float, fraction: float, message: str) -> None:
    if progress is not None:
        progress(lo + (hi - lo) * min(max(fraction, 0.0), 1.0), message)


def _initialize(
    source: FrameSource,
    batches: list[Batch],
    seeds: np.ndarray,
    bounds: np.ndarray,
    *,
    gSig,
    min_pnr,
    patch_size,
    patch_overlap,
    box_factor,
    region_radius,
    progress,
    work_dir=None,
    stage: tuple[float, float, str] = (0.1, 0.3, "initialisation"),
):
    """Fit seeds in every batch; combine the fits into one footprint per seed (activity-weighted).

    ``stage``: the share of the extraction's progress this fit spans and the name it reports per batch.

    Returns the footprints, their traces (a `TraceFile`, K x T on disk), the
    indices of the seeds kept and the mean frame of every session. The traces
    of every seed in every batch, and the unit-norm image of every batch fit
    (needed to express each batch's trace on the combined footprint), are kept
    on disk too: memory holds one batch of frames and per-seed sums only.
    """
    dims = source.frame_shape
    k = len(seeds)
    boxes = [box_around(int(y), int(x), region_radius, dims) for y, x in seeds]
    side = 2 * region_radius + 1
    sums = [np.zeros((b[1] - b[0], b[3] - b[2]), np.float64) for b in boxes]
    weights = np.zeros(k)
    traces = TraceFile((k, source.n_frames), directory=work_dir)
    # each batch's unit-norm fit, zero where not fitted
    units = TraceFile((k, len(batches), side, side), directory=work_dir)
    mean_frames = np.zeros((len(bounds) - 1, *dims), np.float64)
    lo, hi, label = stage
    for bi, batch in enumerate(batches):
        frames = source.read(batch.start, batch.stop)
        mean_frames[batch.session] += frames.sum(axis=0, dtype=np.float64)
        fits = initialize_batch(
            frames,
            seeds,
            gSig=gSig,
            min_pnr=batch_min_pnr(min_pnr, batch.stop - batch.start, source.n_frames),
            patch_size=patch_size,
            patch_overlap=patch_overlap,
            box_factor=box_factor,
            region_radius=region_radius,
        )
        del frames
        fitted, batch_traces = [], []
        batch_units = np.zeros((sum(f is not None for f in fits), side, side), np.float32)
        for j, fit in enumerate(fits):
            if fit is None:
                continue
            y0, y1, x0, x1 = boxes[j]
            image = np.zeros_like(sums[j], dtype=np.float32)
            fy0, fy1, fx0, fx1 = fit.box
            iy0, iy1, ix0, ix1 = max(fy0, y0), min(fy1, y1), max(fx0, x0), min(fx1, x1)
            image[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] = fit.image[iy0 - fy0 : iy1 - fy0, ix0 - fx0 : ix1 - fx0]
            norm = float(np.sqrt((image.astype(np.float64) ** 2).sum()))
            if norm <= 0:
                continue
            trace = fit.trace * norm
            weight = float(trace @ trace)  # activity of this neuron in this batch
            sums[j] += weight * image / norm
            weights[j] += weight
            batch_units[len(fitted), : image.shape[0], : image.shape[1]] = image / norm
            fitted.append(j)
            batch_traces.append(trace)
        del fits
        if fitted:
            traces[fitted, batch.start : batch.stop] = np.stack(batch_traces)
            units[fitted, bi] = batch_units[: len(fitted)]
        _report(progress, lo, hi, (bi + 1) / len(batches), f"{label}, batch {bi + 1}/{len(batches)}")
    keep = np.nonzero(weights > 0)[0]
    images = []
    c = TraceFile((len(keep), source.n_frames), directory=work_dir)
    for i, j in enumerate(keep):
        a = (sums[j] / weights[j]).astype(np.float32)
        a /= max(float(np.sqrt((a**2).sum())), 1e-12)
        images.append(a)
        # Express each batch's trace on the combined footprint: its unit image's projection on it.
        unit = units[j][:, : a.shape[0], : a.shape[1]]
        factors = np.tensordot(unit, a, axes=([1, 2], [0, 1]))
        trace = traces[j]
        for bi, b in enumerate(batches):
            trace[b.start : b.stop] *= factors[bi]
        c[i] = trace
    traces.close()
    units.close()
    for s in range(len(bounds) - 1):
        mean_frames[s] /= bounds[s + 1] - bounds[s]
    return Footprints(dims, [boxes[j] for j in keep], images), c, keep, mean_frames


def _session_constant(footprints: Footprints, c, mean_frames: np.ndarray, batches: list[Batch], bounds) -> np.ndarray:
    """b0 per session = mean frame minus the mean of A C over the session (C read a batch at a time)."""
    b0 = mean_frames.astype(np.float32).copy()
    sums = np.zeros((len(bounds) - 1, len(footprints)), np.float64)
    for batch in batches:
        sums[batch.session] += c[:, batch.start : batch.stop].sum(axis=1, dtype=np.float64)
    for s in range(len(bounds) - 1):
        mean_c = sums[s] / (bounds[s + 1] - bounds[s])
        for k, im in enumerate(footprints.images):
            b0[s][footprints.slices(k)] -= mean_c[k] * im
    return b0


def _background_under(footprints: Footprints, b0: np.ndarray) -> np.ndarray:
    """(K, n_sessions): each session's constant background ``b0`` under each footprint, as the amplitude
    of the footprint that fits it best (least squares), in the units of the footprint's raw trace."""
    out = np.zeros((len(footprints), len(b0)), np.float64)
    for k, im in enumerate(footprints.images):
        norm = float((im.astype(np.float64) ** 2).sum())
        if norm > 0:
            for s in range(len(b0)):
                out[k, s] = float((b0[s][footprints.slices(k)].astype(np.float64) * im).sum()) / norm
    return out


def _iteration_pass(
    source,
    batches,
    footprints: Footprints,
    c,
    background: RingBackground,
    *,
    spatial: list | None,
    progress,
    lo,
    hi,
    label,
    work_dir=None,
    fit_background: bool = True,
):
    """One pass over every batch: background sums, temporal HALS, spatial sums.

    ``c`` (K x T, an array or a `TraceFile`) is read one batch at a time; the
    new raw traces are written to a `TraceFile`, returned as it is. ``spatial``
    (each neuron's search box) asks for the sums of the spatial update, Y C^T
    over those boxes and C C^T; None skips them. ``fit_background=False``
    leaves the ring background's sums alone (a pass for the traces only).
    """
    k = len(footprints)
    release_freed_memory()  # what the whole-trace work since the last pass freed: not kept beside the frames
    c_raw = TraceFile((k, source.n_frames), directory=work_dir)
    ata = footprints.gram()
    yct = [np.zeros((y1 - y0, x1 - x0), np.float64) for y0, y1, x0, x1 in spatial] if spatial is not None else None
    cct = np.zeros((k, k), np.float64)
    new_b0 = np.zeros_like(background.b0, dtype=np.float64)
    residual_sq = np.zeros(source.frame_shape, np.float64) if spatial is not None else None
    n_sessions = len(background.b0)
    trace_sums = np.zeros((n_sessions, k), np.float64)
    session_frames = np.zeros(n_sessions, np.int64)
    for bi, batch in enumerate(batches):
        frames = source.read(batch.start, batch.stop)
        cb = c[:, batch.start : batch.stop]
        frames -= background.b0[batch.session]
        footprints.add_product(frames, cb, sign=-1.0)  # frames = Y - b0 - A C
        regressors, small = _ring_regressors(background, frames)
        if fit_background:
            background.accumulate(regressors, small)
        del small
        fluct = background.fluctuation(regressors)
        del regressors
        frames -= fluct  # Y - b0 - A C - B_f: residual
        new_b0[batch.session] += frames.sum(axis=0, dtype=np.float64)
        if residual_sq is not None:
            residual_sq += np.einsum("tij,tij->ij", frames, frames, dtype=np.float64)
        del fluct
        footprints.add_product(frames, cb, sign=1.0)  # Y - b0 - B_f: the neural part
        c_raw[:, batch.start : batch.stop] = temporal_hals(footprints.project(frames), ata, cb)
        if spatial is not None:
            for j, v in enumerate(footprints.correlate(frames, cb, spatial)):
                yct[j] += v
            cct += cb.astype(np.float64) @ cb.T.astype(np.float64)
            trace_sums[batch.session] += np.asarray(cb, np.float64).sum(axis=1)
            session_frames[batch.session] += batch.stop - batch.start
        del frames, cb
        _report(progress, lo, hi, (bi + 1) / len(batches), f"{label}, batch {bi + 1}/{len(batches)}")
    if residual_sq is not None:
        residual_sq /= source.n_frames  # each pixel's mean squared residual: the noise the fit sees
    if spatial is not None:
        _centre(yct, cct, spatial, footprints, new_b0, trace_sums, session_frames)
    return c_raw, yct, cct, new_b0, residual_sq


def _traces_pass(
    source, batches, footprints: Footprints, c, background: RingBackground, *, progress, lo, hi, label, work_dir
):
    """A pass that refits the raw traces (a `TraceFile`) on ``footprints`` and leaves the background's sums alone."""
    c_raw, _, _, _, _ = _iteration_pass(
        source,
        batches,
        footprints,
        c,
        background,
        spatial=None,
        fit_background=False,
        progress=progress,
        lo=lo,
        hi=hi,
        label=label,
        work_dir=work_dir,
    )
    return c_raw


# Residual values this many robust standard deviations above the background's prediction are activity
# the neurons do not explain yet (CNMF-E's thresh_outlier), not background.
OUTLIER_SIGMAS = 3.0


def _ring_regressors(background: RingBackground, frames: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The ring model's regressors for a batch's residual ``frames`` (t, h, w), and the downsampled
    residual they are fitted to, with the values far above the model's prediction brought down."""
    small = downsample(frames, background.ssub)
    regressors = background.regressors(small)
    small = _without_outliers(small, background.predict_small(regressors))
    return background.regressors(small), small


def _without_outliers(residual: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The residual (t, h, w) with values far above the predicted background brought down to it plus the limit.

    The ring model learns each pixel's background from its residual; where a footprint does not
    yet cover all of a cell (a large cell's tail), the cell's own transients stay in that residual
    and the model would learn to predict them from the ring, taking the cell's edge away from
    its footprint round after round. Each pixel's spread is the median absolute deviation of
    residual minus prediction over the batch's frames.
    """
    excess = residual - predicted
    spread = 1.4826 * np.median(np.abs(excess), axis=0)
    return np.minimum(residual, predicted + OUTLIER_SIGMAS * spread)


def _centre(yct, cct, boxes, footprints: Footprints, residual_sums, trace_sums, session_frames) -> None:
    """Y C^T and C C^T of each session's deviations from its mean, in place: footprints fitted with a free constant.

    The spatial update then fits every pixel's footprint value together with a
    constant per pixel and session (least squares of the neural part on the
    trace and a constant), so a footprint does not depend on the session
    constant ``b0`` of the previous round. Fitted one after the other, the
    two trade a footprint's halo against ``b0`` a little each round and
    converge only slowly (at the rate (sum c)^2 / (T sum c^2) per round).
    A session's sum of the neural part is its sum of residuals plus A times
    its sum of C, built one session at a time.
    """
    for s, n in enumerate(session_frames):
        if n == 0:
            continue
        mean_c = trace_sums[s] / n
        neural_sum = residual_sums[s].copy()
        for k, image in enumerate(footprints.images):
            neural_sum[footprints.slices(k)] += trace_sums[s, k] * image
        for j, (y0, y1, x0, x1) in enumerate(boxes):
            if mean_c[j] != 0:
                yct[j] -= neural_sum[y0:y1, x0:x1] * mean_c[j]
        cct -= n * np.outer(mean_c, mean_c)


def _footprint_noise(fitted: Footprints, norms: np.ndarray, cct: np.ndarray, residual_var: np.ndarray) -> float:
    """Median over neurons of the relative standard error of each fitted footprint.

    The spatial update fits pixel p of footprint k as (Y C^T)_pk / (C C^T)_kk: its standard
    error is sigma_p / ||c_k||, with sigma_p^2 the pixel's mean squared residual (noise and
    what the model does not explain). Over the footprint's support, relative to the norm the
    fit had, that is how much two fits from equally good data would differ: a round-to-round
    change of that size is the estimates' own noise, not a fit still moving.
    """
    out = []
    for k, (box, image) in enumerate(zip(fitted.boxes, fitted.images)):
        if cct[k, k] <= 0 or norms[k] <= 0 or not image.any():
            continue
        y0, y1, x0, x1 = box
        var = float(residual_var[y0:y1, x0:x1][image > 0].sum())
        out.append(float(np.sqrt(var / cct[k, k])) / float(norms[k]))
    return float(np.median(out)) if out else math.inf


def _deconvolve_all(c_raw: TraceFile, bounds: np.ndarray, *, scale: np.ndarray | None = None) -> TraceFile:
    """OASIS (AR(1)) on each neuron's whole trace of each session, across all its batches: denoised C.

    One neuron's trace at a time, read from ``c_raw`` and written to a new
    `TraceFile` in the same folder. With ``scale`` (K,), each denoised trace
    and, in place, each raw trace are multiplied by their neuron's factor
    after the deconvolution.
    """
    c = TraceFile(c_raw.shape, directory=c_raw.directory)
    for k in range(c_raw.shape[0]):
        raw = c_raw[k]
        row = np.zeros_like(raw)
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            row[s0:s1] = deconvolve_trace(raw[s0:s1], p=1).c
        if scale is not None:
            row *= scale[k]
            c_raw[k] = raw * scale[k]
        c[k] = row
    return c


def _remove_false_positives(
    footprints: Footprints,
    c: np.ndarray | TraceFile,
    c_raw: np.ndarray | TraceFile,
    *,
    min_pixels: int,
    min_snr: float | str,
    bounds: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Indices of components to keep (a footprint of a few pixels and a calcium event standing out of the
    noise), and the event SNR they needed.

    A component is kept if its footprint has at least ``min_pixels`` pixels
    and its event SNR (`event_snr`: the least probable run of consecutive
    frames, two decay times long, under the trace's own noise, best session)
    reaches ``min_snr``. The peak of the denoised trace alone does not tell
    noise from neurons: over thousands of frames, components fitted to noise
    reach 3-4 noise units in single frames, but do not stay up for two decay times.
    ``min_snr="auto"``: `AUTO_SNR_CAP` (3), or less where the traces' noise stays further
    below: noise rises as far as it dips, and over all components the dips' upper tail
    (`dip_snrs`, `false_alarm_level`) puts the level that noise would carry 0.05 of them
    above (the rounds resolve it once, in the first, and pass the level on).
    ``c`` and ``c_raw`` (K, T) are arrays or `TraceFile` s, read one neuron at a time.
    """
    from ._quality import AUTO_SNR_CAP, dip_snrs, event_frames, event_snr, false_alarm_level

    if bounds is None:
        bounds = np.array([0, c.shape[1]])
    n = event_frames(c, c_raw)
    # "auto" with too few traces to tell the dips' tail (an infinite level): the cap
    level = float(min_snr) if min_snr != "auto" else min(AUTO_SNR_CAP, false_alarm_level(dip_snrs(c, c_raw, bounds, n)))
    keep = []
    for k in range(len(footprints)):
        if np.count_nonzero(footprints.images[k]) < min_pixels:
            continue
        trace = c[k]
        if trace.max() <= 0 or event_snr(c_raw[k], trace, bounds, n) < level:
            continue
        keep.append(k)
    return np.array(keep, dtype=np.int64), level


def _carry_over(old: Footprints, new: Footprints) -> np.ndarray:
    """Factor (K,) expressing traces fitted on the ``old`` footprints on the unit-norm ``new`` ones.

    The temporal update fits each trace to the footprint it was given (``old``);
    the spatial update fits each footprint to the traces of the previous round,
    so the new footprint's norm carries that round's scale, not the new
    trace's. The part of ``c a_old`` along ``a_new`` is ``c (a_old . a_new)``:
    a trace keeps its own scale, and a footprint that changed shape passes on
    only the part of the signal it still explains. Scaling the new traces by
    the new footprints' norms instead counts a scale change twice; on real
    recordings that made traces and ring background feed each other and diverge.
    """
    out = np.zeros(len(new), np.float32)
    for k in range(len(new)):
        out[k] = max(image_dot(old.images[k], old.boxes[k], new.images[k], new.boxes[k]), 0.0)
    return out


def _change(old: Footprints, new: Footprints) -> float:
    """Median over neurons of the relative change of each (unit-norm) footprint, for the convergence rule.

    The median ignores the few dim components whose footprints keep
    fluctuating with the noise.
    """
    if len(old) != len(new) or len(old) == 0:
        return math.inf
    per = []
    for k in range(len(old)):
        a, b = old.images[k], new.images[k]
        aa, bb = float((a.astype(np.float64) ** 2).sum()), float((b.astype(np.float64) ** 2).sum())
        ab = image_dot(a, old.boxes[k], b, new.boxes[k])  # the footprints may sit on different boxes
        per.append(float(np.sqrt(max(aa + bb - 2 * ab, 0.0) / max(aa, 1e-12))))
    return float(np.median(per))


def _interior_change(old: Footprints, new: Footprints) -> float:
    """Median over neurons of the relative change of each (unit-norm) footprint over the pixels in both supports.

    The part of `_change` that is the footprints' values moving; the rest is pixels at the edge
    crossing the threshold that cuts a footprint off (``clean_footprint``), in or out with the
    smallest change of the fit.
    """
    if len(old) != len(new) or len(old) == 0:
        return math.inf
    per = []
    for k in range(len(old)):
        ov = box_intersection(old.boxes[k], new.boxes[k])
        if ov is None:
            per.append(1.0)
            continue
        a, b = old.images[k][ov[0]].astype(np.float64), new.images[k][ov[1]].astype(np.float64)
        both = (a > 0) & (b > 0)
        aa = float((a[both] ** 2).sum())
        per.append(float(np.sqrt(((a[both] - b[both]) ** 2).sum() / aa)) if aa > 0 else 1.0)
    return float(np.median(per))


def _stalled(history: list[dict]) -> bool:
    """The footprint change has stopped falling: not 5% below the lowest of the quiet rounds before.

    Only the trailing quiet rounds count (nothing removed, merged or added, no support spreading):
    a round that removed, merged, added or grew components moves footprints for a reason, and the
    change after it is measured afresh. A change still falling steadily, however slowly, is not stalled.
    """
    quiet: list[float] = []
    for h in reversed(history):
        if h["removed"] or h["merged"] or h.get("spreading") or h.get("added"):
            break
        quiet.append(h["change"])
    return len(history) >= 3 and len(quiet) >= 2 and quiet[0] > 0.95 * min(quiet[1:])


# A round-to-round change of up to this many times the footprints' standard error is noise: two fits
# with independent errors of sigma differ by sqrt(2) sigma on average.
NOISE_FACTOR = 2.0


def _stop(history: list[dict], tol: float) -> str | None:
    """How the rounds end after the last one, or None to go on.

    Only a quiet round (nothing removed, merged or added) can end them.
    ``"tol"``: the change fell below ``tol``; ``"noise"``: it stopped falling, and inside the
    supports (`_interior_change`) it is within `NOISE_FACTOR` x the footprints' standard error
    (converged as far as the data can tell; what still moves is edge pixels crossing the
    threshold); ``"stalled"``: it stopped falling with the values themselves still moving by more
    than that — the fit is not converging, and more rounds would not change that (reported as
    not converged).
    """
    last = history[-1]
    if last["removed"] or last["merged"] or last.get("added"):
        return None
    if last["change"] < tol:
        return "tol"
    if _stalled(history):
        return "noise" if last["interior"] <= NOISE_FACTOR * last["noise"] else "stalled"
    return None


def extract(
    video,
    params: ExtractionParams | None = None,
    *,
    session_bounds=None,
    cn: np.ndarray | None = None,
    pnr: np.ndarray | None = None,
    valid_mask: np.ndarray | None = None,
    footprint_mask: np.ndarray | None = None,
    work_dir: str | os.PathLike | None = None,
    progress: Progress = None,
    **options,
) -> Extraction:
    """Extract neurons with one identity across sessions from the aligned, concatenated movie (CNMF-E).

    Parameters
    ----------
    video : array-like (t, h, w), zarr array or path, or caliali.io VideoReader
        The aligned movie, all sessions concatenated in time. Read one temporal
        batch at a time, never whole; never modified.
    params : ExtractionParams, optional
        The options (neuron radius, seed thresholds, batches, background,
        stopping rule); default ``ExtractionParams()``, the method's.
    session_bounds : array of int, optional
        First frame of each session followed by the total number of frames
        (n_sessions + 1 entries). Default: one session.
    cn, pnr : ndarray (h, w), optional
        Max-over-sessions local correlation and peak-to-noise images. Computed
        here (CNMF-E style, max over batches) when not given.
    valid_mask : ndarray (h, w) bool, optional
        Pixels valid in all sessions; seeds outside are ignored.
    footprint_mask : ndarray (h, w) bool, optional
        The region footprints may cover (e.g. a region of interest): every
        footprint is confined to it from the first fit on. Default: the whole frame.
    work_dir : str or path, optional
        Folder for the temporary files holding the full-length traces
        (neurons x frames, float32), which every step reads a batch of
        frames or one neuron at a time; they have no name and vanish when
        extraction ends, except those the result's traces map, which vanish
        with the result. Default: the system temporary folder (``TMPDIR``);
        give a folder on disk where that one is memory-backed (tmpfs).
    progress : callable, optional
        ``progress(fraction, message)``.
    **options
        Fields of :class:`ExtractionParams` (``gSig=3, min_corr=0.2, ...``),
        overriding those of ``params``.

    Returns
    -------
    Extraction
        Its ``C_raw``, ``C`` and ``S`` are read-only memory maps of files in
        ``work_dir``: they take memory only as they are read.

    Raises
    ------
    ExtractionError
        Bad input, or no seed passes the thresholds.

    Notes
    -----
    Long recordings free long traces between batches; in a process of its
    own, call :func:`caliali.allocator.large_arrays_returned_on_free` first so
    that the C allocator does not keep them (``caliali run`` does).

    References
    ----------
    Zhou, P. et al. Efficient and accurate extraction of in vivo calcium signals
    from microendoscopic video data. eLife 7, e28728 (2018).
    Vergara, P. et al. CaliAli: reliable tracking of neurons across days in
    one-photon calcium imaging. Nat. Commun. (2025).
    Friedrich, J., Zhou, P. & Paninski, L. PLoS Comput. Biol. 13, e1005423 (2017).

    Examples
    --------
    >>> params = ExtractionParams(gSig=3, min_corr=0.2, min_pnr=4, memory_budget="1GB")
    >>> result = extract("aligned.zarr", params, session_bounds=[0, 2000, 4000])  # doctest: +SKIP
    >>> result.by_session("C")[1].shape  # doctest: +SKIP
    (87, 2000)
    """
    params = (params if params is not None else ExtractionParams()).with_options(**options)
    if work_dir is not None and not os.path.isdir(work_dir):
        raise ExtractionError(f"work_dir {os.fspath(work_dir)!r} is not a folder; create it or leave work_dir unset")
    source = open_source(video)
    bounds = check_session_bounds(session_bounds, source.n_frames)
    batches = plan_batches(
        bounds,
        source.frame_shape,
        batch_frames=params.batch_frames,
        memory_budget=params.memory_budget if params.batch_frames is None else None,
    )
    longest = max(b.stop - b.start for b in batches)
    cn, pnr, images, seeds, params, chosen = _seed(
        source, bounds, longest, params, cn=cn, pnr=pnr, valid_mask=valid_mask, progress=progress
    )
    allowed = None
    if footprint_mask is not None:
        allowed = np.asarray(footprint_mask, bool)
        if allowed.shape != source.frame_shape:
            raise ExtractionError(
                f"footprint_mask is shaped {allowed.shape}, the frames {source.frame_shape}; give one the frame's size"
            )
    footprints, c, background = _start(source, batches, seeds, bounds, params, progress=progress, work_dir=work_dir)
    footprints = footprints.confined(allowed)
    footprints, c, history = _iterate(
        source,
        batches,
        bounds,
        footprints,
        c,
        background,
        params,
        longest=longest,
        progress=progress,
        work_dir=work_dir,
        allowed=allowed,
        valid_mask=valid_mask,
    )
    return _finish(
        source,
        batches,
        bounds,
        footprints,
        c,
        background,
        progress=progress,
        work_dir=work_dir,
        extras=dict(
            cn=cn,
            pnr=pnr,
            images=images,
            seeds=seeds,
            history=history,
            convergence=convergence_record(history, tol=params.tol, max_iter=params.max_iter),
            params={**params.record(batch_frames=longest, n_batches=len(batches)), "min_pnr_from": chosen},
        ),
    )


def _seed(
    source: FrameSource,
    bounds: np.ndarray,
    longest: int,
    params: ExtractionParams,
    *,
    cn,
    pnr,
    valid_mask,
    progress: Progress,
) -> tuple[np.ndarray, np.ndarray, SessionImages | None, np.ndarray, ExtractionParams, str]:
    """The summary images (computed when not given, with each session's images: None when given),
    the seeds that pass the thresholds, the params with ``min_pnr`` resolved (``"auto"``: from the
    PNR image) and how it was chosen."""
    dims, gSig = source.frame_shape, params.gSig
    images = None
    if cn is None or pnr is None:
        images = session_images(
            source,
            session_bounds=bounds,
            gSig=gSig,
            batch_frames=longest,
            progress=None if progress is None else lambda f, m: progress(0.1 * f, m),
        )
        whole = images.whole()
        cn, pnr = whole["Cn"], whole["PNR"]
    cn, pnr = np.asarray(cn, np.float32), np.asarray(pnr, np.float32)
    if cn.shape != dims or pnr.shape != dims:
        raise ExtractionError(f"cn and pnr must have the frame shape {dims}; got {cn.shape} and {pnr.shape}")
    chosen = "set"
    if params.min_pnr == "auto":
        level, chosen = auto_min_pnr(pnr, valid_mask)
        params = params.with_options(min_pnr=round(level, 3))
        if progress is not None:
            progress(0.1, f"seed threshold min_pnr {params.min_pnr:g} ({chosen})")
    seeds = find_seeds(cn, pnr, gSig=gSig, min_corr=params.min_corr, min_pnr=params.min_pnr, valid_mask=valid_mask)
    if len(seeds) == 0:
        raise ExtractionError(
            f"no seed passes min_corr={params.min_corr} and min_pnr={params.min_pnr} "
            f"(max Cn {float(np.nanmax(cn)):.3f}, max PNR {float(np.nanmax(pnr)):.2f}); "
            "lower the thresholds or check gSig"
        )
    return cn, pnr, images, seeds, params, chosen


def _fit_seeds(
    source,
    batches: list[Batch],
    seeds: np.ndarray,
    bounds: np.ndarray,
    params: ExtractionParams,
    *,
    progress,
    work_dir,
    stage: tuple[float, float, str] = (0.1, 0.3, "initialisation"),
) -> tuple[Footprints, TraceFile, np.ndarray]:
    """Footprints and traces fitted at ``seeds`` in every batch of ``source``, and each session's mean frame
    (``stage``: the progress it spans and its name, `_initialize`)."""
    footprints, c, _, mean_frames = _initialize(
        source,
        batches,
        seeds,
        bounds,
        gSig=params.gSig,
        min_pnr=params.min_pnr,
        patch_size=params.patch_size,
        patch_overlap=params.patch_overlap,
        box_factor=params.box_factor,
        region_radius=int(math.ceil(2.5 * params.gSig)) + 1,
        progress=progress,
        work_dir=work_dir,
        stage=stage,
    )
    return footprints, c, mean_frames


def _start(
    source: FrameSource,
    batches: list[Batch],
    seeds: np.ndarray,
    bounds: np.ndarray,
    params: ExtractionParams,
    *,
    progress: Progress,
    work_dir,
) -> tuple[Footprints, TraceFile, RingBackground]:
    """Initial footprints and traces from the seeds, and the ring background with each session's constant."""
    gSig = params.gSig
    footprints, c, mean_frames = _fit_seeds(
        source, batches, seeds, bounds, params, progress=progress, work_dir=work_dir
    )
    if len(footprints) == 0:
        raise ExtractionError(f"none of the {len(seeds)} seeds could be fitted; check gSig and min_pnr")
    background = RingBackground(
        source.frame_shape,
        len(bounds) - 1,
        ring_radius=params.ring_factor * 4 * gSig,
        ssub=params.bg_ssub,
        n_sectors=params.n_sectors,
    )
    background.b0 = _session_constant(footprints, c, mean_frames, batches, bounds)
    return footprints, c, background


def _iterate(
    source: FrameSource,
    batches: list[Batch],
    bounds: np.ndarray,
    footprints: Footprints,
    c,
    background: RingBackground,
    params: ExtractionParams,
    *,
    longest: int,
    progress: Progress,
    work_dir,
    allowed: np.ndarray | None = None,
    valid_mask: np.ndarray | None = None,
) -> tuple[Footprints, TraceFile, list[dict]]:
    """Rounds of background, temporal and spatial updates, false-positive removal and merges, to convergence.

    ``allowed``: where footprints may reach (the ROI); ``valid_mask``: where seeds may be (the pixels
    real in every frame), for the seeds in the residual as for the first ones."""
    history: list[dict] = []
    started = len(footprints)
    min_pixels = max(3, int(round(0.5 * params.gSig * params.gSig)))
    grow = max(1, int(round(params.gSig / 2)))  # px a support may spread per round
    span = 0.55 / params.max_iter
    level = None  # the event SNR a component needs (min_snr, resolved in the first round)
    for it in range(params.max_iter):
        lo = 0.3 + span * it
        search = footprints.grown(grow, allowed)
        if it > 0:
            # the traces first: the spatial update below then fits the footprints to this round's traces
            # (an alternating, Gauss-Seidel order), not to the last round's, which it did while the same
            # pass refitted the traces (a simultaneous, Jacobi order): footprints and traces then followed
            # each other a round late, see-sawing (a component's event SNR 6.4, 15.1, 4.0, 8.7 round by
            # round on minian's fixture), and the minian demo quadrant took 17 rounds to converge, 7 now
            c_raw = _traces_pass(
                source,
                batches,
                footprints,
                c,
                background,
                progress=progress,
                lo=lo,
                hi=lo + span / 2,
                label=f"iteration {it + 1}, traces",
                work_dir=work_dir,
            )
            c.close()
            c = _deconvolve_all(c_raw, bounds)
            c_raw.close()
        c_raw, yct, cct, b0_sums, residual_var = _iteration_pass(
            source,
            batches,
            footprints,
            c,
            background,
            spatial=search[0],
            progress=progress,
            lo=lo + (span / 2 if it > 0 else 0.0),
            hi=lo + span,
            label=f"iteration {it + 1}",
            work_dir=work_dir,
        )
        _report(progress, lo, lo + span, 1.0, f"trace steps, iteration {it + 1}: OASIS, false positives, merges")
        background.refit()
        for s in range(len(bounds) - 1):
            background.b0[s] += (b0_sums[s] / (bounds[s + 1] - bounds[s])).astype(np.float32)
        updated, norms = spatial_hals(footprints, yct, cct.astype(np.float32), search).normalized()
        spreading = int(updated.spreading.sum())  # supports the search cut off: still growing
        if it < 2 or (params.residual_seeds and RESIDUAL_ROUND <= it < RESIDUAL_ROUND + 2):
            # the first update fits the traces of the initialisation, replaced only in this round, and the
            # first two rounds remove most false positives, whose edges a neighbour's update may have
            # followed: a support that ends inside its search then is not yet the cell's edge, so every
            # footprint spreads through the first two rounds, and again through the two after the
            # components seeded in the residual joined
            updated.spreading[:] = True
        noise = _footprint_noise(updated, norms, cct, residual_var)
        carry = _carry_over(footprints, updated)  # the new traces, expressed on the new footprints
        c.close()
        c = _deconvolve_all(c_raw, bounds, scale=carry)
        change, interior = _change(footprints, updated), _interior_change(footprints, updated)
        # "auto" is settled in the first round, on the most components (the fits to noise among them) and
        # held: a record over the few components of a later round is a noisier estimate of the same noise
        keep, level = _remove_false_positives(
            updated, c, c_raw, min_pixels=min_pixels, min_snr=params.min_snr if level is None else level, bounds=bounds
        )
        too_large = 0
        if it > 0:
            # from the second round on, when the first round's fits to noise are gone
            large = too_large_footprints(updated.subset(keep))
            too_large = int(large.sum())
            keep = keep[~large]
        if params.residual_seeds and it + 1 == RESIDUAL_ROUND:
            from ._quality import event_frames

            n_event = event_frames(c, c_raw)
        c_raw.close()  # the next pass fits new raw traces
        removed = len(updated) - len(keep)
        footprints = updated.subset(keep)
        if removed:
            c, dropped = c.take(keep), c
            dropped.close()
        footprints, merged, _, merges = merge_components(
            footprints, c, None, merge_thr=params.merge_thr, batch_frames=longest
        )
        if merged is not c:
            c.close()
            c = merged
        if len(footprints) == 0:
            raise ExtractionError(
                f"every component was removed as a false positive (round {it + 1}: the last {removed} of the "
                f"{started} fitted at the seeds scored an event SNR below {level:.2f} or had under {min_pixels} px): "
                f"check gSig ({params.gSig:g} px; a radius well below the cells' finds few of them and cuts their "
                "footprints), else lower min_snr, min_pnr or min_corr"
            )
        added, residual, split = 0, None, 0
        if params.residual_seeds and it + 1 == RESIDUAL_ROUND:
            footprints, c, split = _split_pairs(
                source, batches, bounds, footprints, c, background, n_event, work_dir, min_distance=params.gSig / 2
            )
            footprints, c, residual = _seed_residual(
                source,
                batches,
                bounds,
                footprints,
                c,
                background,
                params,
                longest=longest,
                work_dir=work_dir,
                valid_mask=valid_mask,
                screen=(level, n_event),
                progress=progress,
                # at the round's end: its share of the progress is spent, so the messages say how far it is
                stage=(lo + span, lo + span, f"iteration {it + 1}: seeds in the residual"),
            )
            footprints = footprints.confined(allowed)
            added = residual["added"]
        history.append(
            {
                "iteration": it + 1,
                "neurons": len(footprints),
                "change": change,
                "interior": interior,
                "noise": noise,
                "removed": removed,
                "too_large": too_large,
                "merged": merges,
                "spreading": spreading,
                "added": added,
                "split": split,
                "min_snr": level,
            }
        )
        if residual is not None:
            history[-1]["residual"] = residual  # seeds in the residual: how many, and what became of them
        stop = _stop(history, params.tol)
        if stop is not None:
            history[-1]["stop"] = stop  # how it ended (_convergence)
            break
    least = least_pixels(footprints, params.gSig)
    footprints, c, history[-1]["too_small"] = _drop_too_small(footprints, c, least)
    return footprints, c, history


# A footprint whose mask covers more than this many times the median footprint's is not one cell
SPRAWL_FACTOR = 4.0


def too_large_footprints(footprints: Footprints, factor: float = SPRAWL_FACTOR) -> np.ndarray:
    """Which footprints sprawl: a mask (pixels above 0.2 x the footprint's max) more than ``factor`` times
    the median mask, i.e. twice the median cell's diameter. (K,) bool; none with fewer than 5 footprints.

    A dim neuron's trace can take in a fluctuation of the background that the ring model leaves; the
    spatial update then spreads the footprint over the pixels that fluctuation covers, and its trace
    follows it there, round after round: on a second generator's movie two components grew from 153 and
    157 px to 1,160 and 778 px (12 x and 8 x the median, 94 px), each a flat blob over several cells,
    with a slow trace. The largest real cells seen were 2.1 x (minian's fixture) and 3.4 x (a cell and
    its tail on minian's demo quadrant); two merged neighbours make 2 x.
    """
    k = len(footprints)
    out = np.zeros(k, bool)
    if k < 5:
        return out
    areas = np.array(
        [np.count_nonzero(im > 0.2 * im.max()) if im.size and im.max() > 0 else 0 for im in footprints.images]
    )
    out[:] = areas > factor * float(np.median(areas))
    return out


def least_pixels(footprints: Footprints, gSig: float) -> int:
    """The fewest pixels a footprint may end the rounds with: gSig^2 (CNMF-E's ``min_pixel``), or a
    quarter of the median footprint's pixels where that is less (at least 3).

    gSig^2 says a cell gSig across covers that much; but gSig is a setting, and set larger than the
    cells it exceeds their own footprints: at 1.6 x a 3 px radius (23 px) it took 4 of 37 true
    neurons (18-21 px; median footprint 37 px) off a 128 px simulation. A quarter of the median
    area is half the median radius: smaller than any cell of the recording, whatever gSig says.
    """
    sizes = [np.count_nonzero(im) for im in footprints.images]
    least = int(round(gSig**2))
    if sizes:
        least = min(least, int(round(float(np.median(sizes)) / 4)))
    return max(3, least)


def _drop_too_small(footprints: Footprints, c: TraceFile, least: int) -> tuple[Footprints, TraceFile, int]:
    """The components whose footprint has at least ``least`` pixels, their traces, and how many were dropped.

    Applied once the rounds end, with ``least`` from `least_pixels` (gSig^2, CNMF-E's ``min_pixel``,
    unless a quarter of the median footprint is less): a footprint that small is not the shape of a
    cell, whatever its trace. Not in the rounds, where a dim neuron's first footprints are that small
    and grow. When every footprint is that small, all are kept, for the user to see what the gSig
    given found.
    """
    keep = np.array([k for k, im in enumerate(footprints.images) if np.count_nonzero(im) >= least], np.int64)
    if len(keep) == 0 or len(keep) == len(footprints):
        return footprints, c, 0
    c, dropped = c.take(keep), c
    dropped.close()
    return footprints.subset(keep), c, len(footprints) - len(keep)


# With ``residual_seeds``, after this many rounds the neurons the seeds missed are looked for in the
# residual, once (CNMF-E's "pick neurons from the residual"): by then most false positives are gone and
# the background fits.
RESIDUAL_ROUND = 2


class _Residual:
    """The movie less what the model explains, Y - b0 - A C - B_f, read like the movie one batch at a time.

    The background's fluctuation is predicted as in a round (`_iteration_pass`), without refitting it.
    """

    def __init__(self, source: FrameSource, bounds: np.ndarray, footprints: Footprints, c, background):
        self.n_frames, self.frame_shape = source.n_frames, source.frame_shape
        self._source, self._bounds = source, bounds
        self._footprints, self._c, self._background = footprints, c, background

    def read(self, start: int, stop: int) -> np.ndarray:
        session = int(np.searchsorted(self._bounds, start, side="right")) - 1
        background = self._background
        frames = self._source.read(start, stop)
        frames -= background.b0[session]
        self._footprints.add_product(frames, self._c[:, start:stop], sign=-1.0)
        regressors, _ = _ring_regressors(background, frames)
        frames -= background.fluctuation(regressors)
        return frames


# the share of the residual's Cn image a seed there must stand above (a normal's mean + 2 sd)
RESIDUAL_CN_QUANTILE = 0.9772


def residual_min_corr(cn: np.ndarray) -> float:
    """The local correlation a seed in the residual needs: the level that all but 2.3 % of the
    residual's Cn image stays under (the 97.7th percentile: two standard deviations above the middle,
    were it normal; it is not: Cn counts a pixel's values under 3 noise sd as zero, so a third to a
    half of the noise's pixels sit at 0 and the median and its deviation say nothing).

    What the model explains is gone from the residual: what is left is noise, whose pixels hardly
    move together, and the few neurons the seeds missed, whose pixels do. Held to ``min_corr`` alone
    (0.1), the residual of a 2,000-frame movie of 200 neurons gave 1,134 seeds, each fitted in every
    batch and then removed by the event SNR but for 14; this level (0.29 there) leaves 218,
    among them every seed of a neuron the residual added (Cn 0.33-0.74).
    """
    values = np.asarray(cn, np.float64)
    values = values[np.isfinite(values) & (values > -1)]  # -1: no batch long enough to measure
    if values.size == 0:
        return 0.0
    return float(np.percentile(values, 100 * RESIDUAL_CN_QUANTILE))


def _residual_traces(
    residual: _Residual,
    batches: list[Batch],
    new: Footprints,
    directory,
    *,
    progress: Progress = None,
    stage: tuple[float, float, str] = (0.0, 1.0, "traces in the residual"),
) -> TraceFile:
    """Each new footprint's trace in the residual (the residual projected on its unit-norm image), (J, T) on disk."""
    unit, _ = new.normalized()
    raw = TraceFile((len(new), residual.n_frames), directory=directory)
    lo, hi, label = stage
    for bi, batch in enumerate(batches):
        frames = residual.read(batch.start, batch.stop)
        raw[:, batch.start : batch.stop] = unit.project(frames)
        del frames
        _report(progress, lo, hi, (bi + 1) / len(batches), f"{label}, batch {bi + 1}/{len(batches)}")
    return raw


def screen_residual(
    new: Footprints,
    raw,
    denoised,
    bounds: np.ndarray,
    *,
    level: float,
    n: int,
    footprints: Footprints,
    c,
    merge_thr: float,
) -> tuple[np.ndarray, int, int]:
    """Which components fitted in the residual join the model: (indices kept, how many had no event of
    their own, how many were a neighbour's misfit).

    ``raw`` and ``denoised`` (J, T) are the new components' traces in the residual; ``footprints`` and
    ``c`` the components already there. A new component must have an event of its own in the
    residual: an event SNR (`event_snr`, runs of ``n`` frames) of at least ``level``, what every
    component needs at the end of a round. Held to that only a round later, the seeds on noise (over
    a thousand on a 100-frame movie) took parts of their neighbours' traces in the round they stayed,
    enough to tip a contested neighbour under the level. And it must not be a neighbour's misfit:
    where a footprint touching it moves with it (traces correlating at ``merge_thr`` or more) over the
    session in which the new component is most active, the residual there is what that neighbour's
    one footprint for all sessions leaves of the cell in that session (after alignment, or as its
    activity changes between sessions), not another neuron: two neurons' activity is their own.
    """
    from ._quality import event_snr

    evented = [
        j for j in range(len(new)) if denoised[j].max() > 0 and event_snr(raw[j], denoised[j], bounds, n) >= level
    ]
    if not evented or len(footprints) == 0:
        return np.array(evented, np.int64), len(new) - len(evented), 0
    both = Footprints(
        footprints.dims,
        footprints.boxes + [new.boxes[j] for j in evented],
        footprints.images + [new.images[j] for j in evented],
    )
    touching = both.touching(grow=1)[len(footprints) :, : len(footprints)]
    keep = []
    for i, j in enumerate(evented):
        trace = np.asarray(denoised[j])
        peaks = [trace[s0:s1].max() if s1 > s0 else -np.inf for s0, s1 in zip(bounds[:-1], bounds[1:])]
        s = int(np.argmax(peaks))
        mine = trace[bounds[s] : bounds[s + 1]]
        misfit = False
        for k in np.nonzero(touching[i])[0]:
            theirs = np.asarray(c[k])[bounds[s] : bounds[s + 1]]
            if mine.std() > 0 and theirs.std() > 0 and np.corrcoef(mine, theirs)[0, 1] >= merge_thr:
                misfit = True
                break
        if not misfit:
            keep.append(j)
    return np.array(keep, np.int64), len(new) - len(evented), len(evented) - len(keep)


def _split_pairs(source, batches, bounds, footprints: Footprints, c, background, gap: int, work_dir, *, min_distance):
    """Components whose strongest events show two shapes, each split in two (`_split.split_components`);
    the halves start from the component's trace. (footprints, traces, how many were split)."""
    from ._split import event_times, split_components

    residual = _Residual(source, bounds, footprints, c, background)
    times = [event_times(c[k], max(1, gap)) for k in range(len(footprints))]
    supports = [image > 0 for image in footprints.images]
    # each event's image over the support only, in float32: K x 40 x the support's pixels in memory
    stacks: list[list[np.ndarray]] = [[] for _ in range(len(footprints))]
    for batch in batches:
        wanted = [(k, t) for k in range(len(footprints)) for t in times[k] if batch.start <= t < batch.stop]
        if not wanted:
            continue
        frames = residual.read(batch.start, batch.stop)
        block = c[:, batch.start : batch.stop]
        for k, t in wanted:
            i = t - batch.start
            own = frames[i][footprints.slices(k)] + footprints.images[k] * block[k, i]
            stacks[k].append(own[supports[k]].astype(np.float32))
        del frames
    images = [np.array(st, np.float32) if st else None for st in stacks]
    split, pairs = split_components(footprints, images, min_distance)
    if not pairs:
        return footprints, c, 0
    traces = TraceFile((len(split), source.n_frames), directory=work_dir)
    for k in range(len(footprints)):
        traces[k] = c[k]
    for k, j in pairs:
        traces[j] = c[k]
    c.close()
    return split, traces, len(pairs)


def _seed_residual(
    source: FrameSource,
    batches: list[Batch],
    bounds: np.ndarray,
    footprints: Footprints,
    c,
    background: RingBackground,
    params: ExtractionParams,
    *,
    longest: int,
    work_dir,
    valid_mask: np.ndarray | None = None,
    screen: tuple[float, int],
    progress: Progress = None,
    stage: tuple[float, float, str] = (0.0, 1.0, "seeds in the residual"),
) -> tuple[Footprints, TraceFile, dict]:
    """The components with new ones fitted at the seeds of the residual; their traces; how many seeds
    there were, fitted, without an event of their own, misfits of a neighbour, and added.

    ``screen``: the event SNR a component needs and the run length it is scored over (`screen_residual`).
    ``stage``: the share of the extraction's progress this spans and its name; each of its passes over
    the movie reports its batches.

    The residual's Cn and PNR are computed as the movie's were and seeded with the same thresholds:
    a neuron next to a brighter one, whose seed the brighter one's peak suppressed, or that a
    neighbour's first fit took with it, stands out there. A seed inside the core (half the maximum)
    of a component is that component's misfit, not a new neuron, and is skipped. Seeds on noise are
    fitted too, as in the first seeding; each fit's trace in the residual is then measured (a third
    pass over the movie) and only those with an event of their own that no touching neighbour
    follows join (`screen_residual`): those passes are the time this costs. Seeds outside ``valid_mask`` are not
    taken, as in the first seeding: where motion correction filled the frame's edges from the pixels
    next to them, the residual holds those copies moving with the motion.

    References
    ----------
    Zhou, P. et al. eLife 7, e28728 (2018): CNMF-E picks neurons from the residual
    (``initComponents_residual``) after the first updates.
    """
    lo, hi, label = stage
    third = (hi - lo) / 3
    _report(progress, lo, hi, 0.0, f"{label}: its Cn and PNR images")
    residual = _Residual(source, bounds, footprints, c, background)
    whole = session_images(residual, session_bounds=bounds, gSig=params.gSig, batch_frames=longest).whole()
    cn_valid = whole["Cn"] if valid_mask is None else whole["Cn"][np.asarray(valid_mask, bool)]
    min_corr = max(params.min_corr, residual_min_corr(cn_valid))
    seeds = find_seeds(
        whole["Cn"], whole["PNR"], gSig=params.gSig, min_corr=min_corr, min_pnr=params.min_pnr, valid_mask=valid_mask
    )
    if len(seeds):
        core = np.zeros(source.frame_shape, bool)
        for k, image in enumerate(footprints.images):
            if image.size and image.max() > 0:
                core[footprints.slices(k)] |= image >= 0.5 * image.max()
        seeds = seeds[~core[seeds[:, 0], seeds[:, 1]]]
    counts = {"seeds": len(seeds), "fitted": 0, "no_event": 0, "misfits": 0, "added": 0}
    if len(seeds) == 0:
        return footprints, c, counts
    new, new_c, _ = _fit_seeds(
        residual,
        batches,
        seeds,
        bounds,
        params,
        progress=progress,
        work_dir=work_dir,
        stage=(lo + third, lo + 2 * third, f"{label}: fitting {len(seeds)} seeds"),
    )
    counts["fitted"] = len(new)
    if len(new):
        raw = _residual_traces(
            residual,
            batches,
            new,
            work_dir,
            progress=progress,
            stage=(lo + 2 * third, hi, f"{label}: screening {len(new)} fits"),
        )
        denoised = _deconvolve_all(raw, bounds)
        keep, counts["no_event"], counts["misfits"] = screen_residual(
            new,
            raw,
            denoised,
            bounds,
            level=screen[0],
            n=screen[1],
            footprints=footprints,
            c=c,
            merge_thr=params.merge_thr,
        )
        raw.close()
        denoised.close()
    else:
        keep = np.zeros(0, np.int64)
    if len(keep) == 0:
        new_c.close()
        return footprints, c, counts
    new = new.subset(keep)
    counts["added"] = len(new)
    both = Footprints(
        footprints.dims,
        footprints.boxes + new.boxes,
        footprints.images + new.images,
        np.concatenate([footprints.spreading, np.ones(len(new), bool)]),
    )
    traces = TraceFile((len(both), source.n_frames), directory=work_dir)
    for k in range(len(footprints)):
        traces[k] = c[k]
    for i, j in enumerate(keep):
        traces[len(footprints) + i] = new_c[j]
    c.close()
    new_c.close()
    return both, traces, counts


def _finish(
    source: FrameSource,
    batches: list[Batch],
    bounds: np.ndarray,
    footprints: Footprints,
    c,
    background: RingBackground,
    *,
    progress: Progress,
    work_dir,
    extras: dict,
) -> Extraction:
    """Final traces on the converged footprints, post-processed and ordered by SNR, as the result."""
    c_raw = _traces_pass(
        source,
        batches,
        footprints,
        c,
        background,
        progress=progress,
        lo=0.85,
        hi=0.97,
        label="final traces",
        work_dir=work_dir,
    )
    _report(progress, 0.97, 0.97, 1.0, "post-processing: deconvolution, detrending, noise scaling, SNR order")
    c.close()
    c = _deconvolve_all(c_raw, bounds)
    scaled, denoised, spikes, noise, snr, level = finalize_traces(c_raw, c, bounds)
    f0 = level + _background_under(footprints, background.b0)
    c_raw.close()
    c.close()
    order = np.argsort(-snr, kind="stable")
    outputs = []
    for traces in (scaled, denoised, spikes):  # reordered one neuron at a time, into the files the result maps
        outputs.append(traces.take(order).view())
        traces.close()
    c_raw_out, c_out, s_out = outputs
    scale = noise.mean(axis=1)
    images = [footprints.images[k] * scale[k] for k in order]
    final = Footprints(source.frame_shape, [footprints.boxes[k] for k in order], images)
    _report(progress, 0.97, 1.0, 1.0, f"extraction done: {len(final)} neurons")
    return Extraction(
        A=final.to_sparse(),
        C_raw=c_raw_out,
        C=c_out,
        S=s_out,
        session_bounds=bounds,
        dims=source.frame_shape,
        snr=snr[order],
        noise=noise[order],
        centers=final.centers(),
        f0=f0[order].astype(np.float32),
        b0=np.asarray(background.b0, np.float32).copy(),
        **extras,
    )
