"""The whole caliali analysis of one experiment, stage by stage, resumable.

Stages (each streams its input chunk by chunk; peak memory is set by the
chunk size, not by the recording's length)::

    gsig          (gSig 'auto') the neuron radius from the first session's first frames -> summary.json
    motion        downsample + rigid motion correction per session -> work/motion_<i>.zarr
    projections   mean, blood vessels, Cn, PNR per session          -> work/projections_<i>.npz
                  (only when sessions are aligned: otherwise each session's QC shows the
                  extraction's own mean, Cn and PNR, computed in its first pass)
    alignment     translation + groupwise demons across sessions    -> <out>/alignment/
    apply         every frame warped into the common frame          -> work/aligned.zarr
    extraction    CNMF-E on the aligned movie, outputs written      -> <out>/arrays, neurons.nwb, caiman.hdf5, qc/

``summary.json`` holds the run's results (sessions, frames, neurons, the gSig used and where it
came from (``gSig_from``: 'set', or how it was estimated), how extraction converged
(``convergence``: whether, and why it stopped), the frame rate used and where it came from
(``fs``, ``fs_from``, ``fs_note``: see `caliali.framerate`), the region analysed (``crop``,
``frame_shape_original``, ``roi_mask``: see `caliali.roi`), config, alignment
QC, the NWB file's identifier and session start with where each came from), the same
for every run of the same input, config and environment, written with sorted keys;
and, in its ``run`` section alone, what differs from run to run (input and output
paths, host, process, start time, per-stage seconds and peak memory).

A stage records its completion in ``work/state.json``; running again with the
same inputs and config skips completed stages and resumes an interrupted one
from its last committed chunk. A changed config or input starts afresh.
``work/`` is removed after a successful run unless ``keep_intermediates``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from caliali import __version__
from caliali.config import CalialiConfig, config_mapping, load_config
from caliali.exceptions import InputError
from caliali.experiment import Experiment, load_experiment
from caliali.framerate import resolve_fs

__all__ = ["RunResult", "STAGES", "run"]

Progress = Callable[[float, str], None]

# Share of the run's progress bar per stage (measured proportions of the demo).
STAGES: dict[str, float] = {
    "motion": 0.30,
    "projections": 0.15,
    "alignment": 0.10,
    "apply": 0.10,
    "extraction": 0.35,
}


@dataclass
class RunResult:
    """What :func:`run` produced."""

    out: Path
    sessions: list[str]
    session_frames: list[int]
    n_neurons: int
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    convergence: dict[str, Any] = field(default_factory=dict)  # how extraction's rounds ended (summary.json)
    paths: dict[str, Path] = field(default_factory=dict)
    fs: dict[str, Any] = field(default_factory=dict)  # the frame rate used, its source and any note (summary.json)


def _peak_rss_mb() -> float:
    """Peak RSS of this process (MiB) since it started its program.

    VmHWM where /proc has it: ``ru_maxrss`` is carried over ``exec`` from the
    process that spawned this one (the platform's worker), whose peak it then reports.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _fingerprint(experiment: Experiment, config: CalialiConfig) -> str:
    files = [[s.id, [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in s.files]] for s in experiment.sessions]
    text = json.dumps({"files": files, "config": config.model_dump(), "version": __version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _check_work(work: Path, others: dict[str, Path]) -> None:
    """Refuse a work folder that holds the output or the input: caliali deletes it when a run ends."""
    inside = work.resolve()
    for option, path in others.items():
        where = path.resolve()
        if where == inside or inside in where.parents:
            raise InputError(
                f"{option} {path} lies inside the work folder {work}, which caliali deletes when the run ends; "
                "give a work folder apart from it (--work)"
            )


class _State:
    """``work/state.json``: which stages finished, for this input and config."""

    def __init__(self, work: Path, fingerprint: str) -> None:
        self.path = work / "state.json"
        data: dict[str, Any] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                data = {}
        if data.get("fingerprint") != fingerprint:
            if work.exists():
                others = [] if self.path.exists() else sorted(child.name for child in work.iterdir())
                if others:  # a folder caliali did not make: its files are the user's, never cleared
                    raise InputError(
                        f"the work folder {work} already holds files caliali did not write ({', '.join(others[:3])}"
                        f"{', ...' if len(others) > 3 else ''}); caliali clears its work folder, so give a new or "
                        "empty one (--work)"
                    )
                shutil.rmtree(work)
            data = {"fingerprint": fingerprint, "done": {}}
        work.mkdir(parents=True, exist_ok=True)
        self.data = data
        if not self.path.exists():
            self._write()  # the folder is caliali's from now on: a run stopped in its first stage resumes here

    def done(self, stage: str) -> bool:
        return stage in self.data["done"]

    def mark(self, stage: str, info: dict[str, Any]) -> None:
        self.data["done"][stage] = info
        self._write()

    def _write(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        tmp.replace(self.path)

    def info(self, stage: str) -> dict[str, Any]:
        return self.data["done"][stage]


class _Reporter:
    """Maps each stage's own 0..1 progress onto the run's bar."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.starts: dict[str, float] = {}
        acc = 0.0
        for name, weight in STAGES.items():
            self.starts[name] = acc
            acc += weight

    def note(self, message: str) -> None:
        """A message before the first stage starts."""
        if self.progress is not None:
            self.progress(0.0, message)

    def stage(self, name: str, lo: float = 0.0, hi: float = 1.0) -> Progress:
        start, weight = self.starts[name], STAGES[name]

        def report(fraction: float, message: str) -> None:
            if self.progress is not None:
                f = lo + (hi - lo) * min(max(fraction, 0.0), 1.0)
                self.progress(start + weight * f, f"{name}: {message}")

        return report


def _motion(
    experiment: Experiment, config: CalialiConfig, work: Path, report: _Reporter, state: _State
) -> list[dict[str, Any]]:
    from caliali.motion import correct_session
    from caliali.store import FrameStore

    n = len(experiment.sessions)
    results = []
    for i, session in enumerate(experiment.sessions):
        key = f"motion_{i}"
        if state.done(key):
            results.append(state.info(key))
            continue
        store_path = work / f"{key}.zarr"
        progress = report.stage("motion", i / n, (i + 1) / n)
        if config.motion_correction:
            result = correct_session(
                session,
                gSig=config.gsig_ds,
                out=store_path,
                batch_frames=config.chunk_frames,
                memory_budget=config.memory_budget,
                spatial_ds=config.spatial_ds,
                temporal_ds=config.temporal_ds,
                max_shift=config.max_shift_ds,
                progress=lambda f, m, s=session.id, p=progress: p(f, f"session {s}: {m}"),
            )
            result.save(work, name=key)
            valid = result.valid_mask
        else:
            valid = _downsample_only(session, experiment, config, store_path, progress)
        np.save(work / f"{key}_valid_mask.npy", valid)
        info = {
            "store": str(store_path),
            "valid_mask": str(work / f"{key}_valid_mask.npy"),
            "frames": FrameStore.open(store_path).n_frames,
        }
        state.mark(key, info)
        results.append(info)
    return results


def _downsample_only(
    session: Any, experiment: Experiment, config: CalialiConfig, store_path: Path, progress: Progress
) -> np.ndarray:
    """Motion correction switched off: the session downsampled into its store; every pixel valid."""
    from caliali.chunking import batch_frames_for
    from caliali.motion import session_chunks
    from caliali.store import FrameStore

    batch = config.chunk_frames or batch_frames_for(config.memory_budget, experiment.frame_shape(), copies=3)
    first = None
    store = None
    for chunk in session_chunks(
        session, batch_frames=batch, spatial_ds=config.spatial_ds, temporal_ds=config.temporal_ds, progress=progress
    ):
        if store is None:
            store = FrameStore.create(store_path, chunk.shape[1:], params={"stage": "downsample"})
            first = chunk.shape[1:]
        store.append(chunk)
    assert store is not None and first is not None
    store.mark_complete()
    return np.ones(first, dtype=bool)


def _projections(
    experiment: Experiment,
    config: CalialiConfig,
    motion: list[dict[str, Any]],
    work: Path,
    out: Path,
    report: _Reporter,
    state: _State,
) -> list[Any]:
    from caliali.projections import Projections, session_projections
    from caliali.store import FrameStore

    n = len(experiment.sessions)
    projections = []
    for i, session in enumerate(experiment.sessions):
        key = f"projections_{i}"
        path = work / f"{key}.npz"
        if state.done(key):
            projections.append(Projections.load(path))
            continue
        valid = np.load(motion[i]["valid_mask"])
        proj = session_projections(
            FrameStore.open(motion[i]["store"]),
            gSig=config.gsig_ds,
            fs=config.fs_ds,
            batch_frames=config.chunk_frames,
            memory_budget=config.memory_budget,
            valid_mask=valid,
            progress=report.stage("projections", i / n, (i + 1) / n),
        )
        proj.save(path)
        if config.qc:
            _session_qc(out, work, f"motion_{i}", session.id, proj)
        state.mark(key, {"path": str(path)})
        projections.append(proj)
    return projections


def _session_qc(out: Path, work: Path, key: str, session_id: str, proj: Any) -> None:
    """QC picture of one session's projections and motion trace, shifts beside it."""
    from caliali.motion import save_session_qc
    from caliali.motion.result import MotionResult

    motion = MotionResult.load(work, name=key) if (work / f"{key}_shifts.csv").exists() else None
    save_session_qc(out / "qc" / "sessions", f"session_{session_id}", motion=motion, projections=proj)


def _session_qc_from_extraction(out: Path, work: Path, ids: list[str], images: Any, gsig: float) -> None:
    """Each session's QC picture (mean, blood vessels, Cn, PNR, motion) from the extraction's images:
    its Cn and PNR are the ones the seeds were placed on, its vessels the BV filter of the mean frame."""
    from caliali.projections import Projections
    from caliali.projections.vessels import bv_filter

    for i, session_id in enumerate(ids):
        kinds = images.session(i)
        proj = Projections(
            mean=kinds["mean"],
            bv=bv_filter(kinds["mean"], gSig=gsig).astype(np.float32),
            cn=kinds["Cn"],
            pnr=kinds["PNR"],
            n_frames=int(images.frames[i]),
        )
        _session_qc(out, work, f"motion_{i}", session_id, proj)


def _neuron_image(proj: Any) -> np.ndarray:
    image = proj.cn * proj.pnr
    top = float(np.percentile(image, 99.9)) or 1.0
    return np.clip(image / top, 0, 1).astype(np.float32)


def _alignment(
    experiment: Experiment,
    config: CalialiConfig,
    projections: list[Any],
    motion: list[dict],
    out: Path,
    report: _Reporter,
    state: _State,
) -> Any:
    from caliali.registration import align_sessions, load_alignment, save_alignment

    if state.done("alignment"):
        return load_alignment(out)
    ids = [s.id for s in experiment.sessions]
    alignment = align_sessions(
        [p.bv for p in projections],
        session_ids=ids,
        neuron_images=[_neuron_image(p) for p in projections],
        valid_masks=[np.load(m["valid_mask"]) for m in motion],
        gSig=config.gsig_ds,
        source=config.alignment_source,
        reliability_threshold=config.reliability_threshold,
        max_shift=config.max_translation_ds,
        progress=report.stage("alignment"),
    )
    save_alignment(alignment, out, figures=config.qc)
    state.mark("alignment", {"source": alignment.source, "reliability": alignment.reliability})
    return alignment


def _apply(
    alignment: Any, config: CalialiConfig, motion: list[dict], work: Path, report: _Reporter, state: _State
) -> tuple[Path, np.ndarray, np.ndarray]:
    from caliali.registration import apply_alignment
    from caliali.store import FrameStore

    path = work / "aligned.zarr"
    if state.done("apply"):
        info = state.info("apply")
        return path, np.asarray(info["bounds"]), np.load(work / "aligned_valid_mask.npy")
    aligned = apply_alignment(
        alignment,
        [FrameStore.open(m["store"]) for m in motion],
        path,
        batch_frames=config.chunk_frames,
        memory_budget=config.memory_budget,
        progress=report.stage("apply"),
    )
    np.save(work / "aligned_valid_mask.npy", aligned.valid_mask)
    state.mark("apply", {"bounds": aligned.session_bounds.tolist()})
    return path, aligned.session_bounds, aligned.valid_mask


def run(
    input: str | Path,
    output: str | Path,
    *,
    config: CalialiConfig | dict | str | Path | None = None,
    work: str | Path | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Run the whole caliali pipeline on one experiment.

    Parameters
    ----------
    input : path
        An experiment: a folder of session videos (optionally with a
        ``manifest.yaml``, e.g. from ``caliali split``), a manifest, or a
        single video (one session).
    output : path
        Folder for the results: ``arrays/``, ``neurons.nwb``, ``alignment/``,
        ``qc/``, ``summary.json``.
    config : CalialiConfig, mapping, or path to a YAML/JSON file, optional
        Parameters; defaults from the method.
    work : path, optional
        Intermediates (default ``<output>/work``); kept after an interruption
        so that the next run resumes. Extraction's temporary trace files
        (neurons x frames, unnamed) live there too, on the run's own disk.
    progress : callable(fraction, message), optional
        Called as the run advances (fraction of the whole run).

    Returns
    -------
    RunResult

    Raises
    ------
    caliali.exceptions.CalialiError
        Unusable input or config, with a message saying what to change.
    """
    started = time.time()
    mapping = config_mapping(config)
    given = config if isinstance(config, CalialiConfig) else load_config(config)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work) if work is not None else out / "work"
    _check_work(work, {"--output": out, "--input": Path(input)})
    experiment = load_experiment(
        input, dataset=given.dataset or None, ignore=[given.roi_mask] if given.roi_mask else []
    )
    if not experiment.sessions:
        raise InputError(f"{input}: no sessions found; give a folder of videos, a manifest or a video file")
    experiment = experiment.cropped(given.crop_box)
    region = _region(input, experiment, given)
    rate = resolve_fs(experiment, given.fs)
    config = given.with_fs(rate.fs)  # what every stage uses; summary.json keeps the config as given
    _check_session_lengths(experiment, config)
    state = _State(work, _fingerprint(experiment, given))
    origin = _origin(input, mapping, experiment, config)
    report = _Reporter(progress)
    if progress is not None:
        progress(0.0, f"frame rate {rate.fs:g} Hz, {rate.source}" + (f" (note: {rate.note})" if rate.note else ""))
    timings: dict[str, dict[str, float]] = {}
    gsig_from = "set"
    if config.gSig == "auto":
        with_fs = config
        config, gsig_from = _timed(timings, "gsig", lambda: _estimate_gsig(experiment, with_fs, report))
    ids = [s.id for s in experiment.sessions]
    motion = _timed(timings, "motion", lambda: _motion(experiment, config, work, report, state))
    aligning = len(ids) > 1 and config.alignment
    if aligning:  # the sessions' projections are what alignment registers
        projections = _timed(
            timings, "projections", lambda: _projections(experiment, config, motion, work, out, report, state)
        )
    else:  # only the QC would show them: it shows the extraction's own images instead, at no extra pass
        report.stage("projections")(1.0, "not needed: nothing to align")
    if aligning:
        alignment = _timed(
            timings, "alignment", lambda: _alignment(experiment, config, projections, motion, out, report, state)
        )
        video, bounds, valid = _timed(timings, "apply", lambda: _apply(alignment, config, motion, work, report, state))
    else:
        video, bounds, valid = _unaligned(motion, config, work, report)
    from caliali.extraction import ExtractionError

    try:
        paths = _timed(
            timings,
            "extraction",
            lambda: _extract(
                video,
                bounds,
                valid,
                ids,
                config,
                out,
                work,
                report,
                origin,
                rate,
                region,
                gsig_from,
                session_qc=not aligning,
            ),
        )
    except ExtractionError as error:
        if gsig_from != "set":
            raise
        raise ExtractionError(f"{error}{_gsig_hint(experiment, config, report)}") from None
    n_neurons = paths.pop("_n_neurons")
    seeds = paths.pop("_seed_thresholds")
    convergence = paths.pop("_convergence")
    min_snr = paths.pop("_min_snr")
    frames = [int(b - a) for a, b in zip(bounds[:-1], bounds[1:])]
    _write_summary(
        out,
        {
            "caliali_version": __version__,
            "sessions": ids,
            "session_frames": frames,
            "neurons": n_neurons,
            "seed_thresholds": seeds,
            "min_snr": min_snr,
            **rate.describe(),
            **region.describe(),
            "gSig": config.gSig,
            "gSig_from": gsig_from,
            "convergence": convergence,
            "config": given.model_dump(),
            "nwb": origin.describe() if config.nwb else None,
        },
        run={
            "input": str(Path(input).resolve()),
            "output": str(out.resolve()),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="milliseconds"),
            "seconds": round(time.time() - started, 3),
            "stages": timings,
        },
    )
    if not config.keep_intermediates:
        shutil.rmtree(work, ignore_errors=True)
    if progress is not None:
        # the last message is what the platform shows: a fit that did not converge says so there
        progress(1.0, f"done: {n_neurons} neurons in {len(ids)} session(s); {convergence.get('why', '')}".rstrip("; "))
    return RunResult(
        out=out,
        sessions=ids,
        session_frames=frames,
        n_neurons=n_neurons,
        stages=timings,
        convergence=convergence,
        paths={k: Path(v) for k, v in paths.items()},
        fs=rate.describe(),
    )


@dataclass(frozen=True)
class _Region:
    """The part of the frame a run analyses: the crop rectangle, and the mask inside it (cropped grid)."""

    crop: tuple[int, int, int, int] | None
    full_shape: tuple[int, int]
    roi_name: str
    roi: np.ndarray | None

    def describe(self) -> dict[str, Any]:
        """What ``summary.json`` and ``arrays/meta.json`` record: how to map footprints back."""
        h, w = self.full_shape
        return {
            "crop": list(self.crop) if self.crop else [0, h, 0, w],
            "frame_shape_original": [h, w],
            "roi_mask": self.roi_name or None,
        }

    def sentence(self, spatial_ds: int) -> str:
        """The region in words, for the NWB descriptions."""
        h, w = self.full_shape
        top, bottom, left, right = self.crop or (0, h, 0, w)
        f = "" if spatial_ds == 1 else f"{spatial_ds}"
        text = (
            f"rows {top}-{bottom - 1}, columns {left}-{right - 1} of the original {h}x{w} px frame; "
            f"footprint pixel (y, x) is original pixel ({top} + {f}y, {left} + {f}x)"
        )
        return text + (f"; footprints confined to roi_mask {self.roi_name}" if self.roi_name else "")


def _region(input: str | Path, experiment: Experiment, config: CalialiConfig) -> _Region:
    """Check the crop against the frame and read the roi_mask, before any work (one-line errors)."""
    from caliali.roi import load_roi_mask

    full = experiment.full_shape()
    shape = experiment.frame_shape()  # refuses a crop reaching past the frame
    roi = load_roi_mask(input, config.roi_mask, shape, config.crop) if config.roi_mask else None
    return _Region(config.crop_box, full, config.roi_mask, roi)


def _estimate_gsig(experiment: Experiment, config: CalialiConfig, report: _Reporter) -> tuple[CalialiConfig, str]:
    """The config with gSig 'auto' replaced by its estimate, and how the estimate was obtained.

    Estimated from the first frames of the first session as the stages see them (downsampled),
    motion-corrected unless motion correction is off; reported in original pixels, rounded to 0.01 px.
    """
    from caliali.budget import batch_frames_for
    from caliali.motion import session_chunks
    from caliali.projections import GSIG_FRAMES, RADIUS_PER_SIGMA, estimate_session_gsig

    session = experiment.sessions[0]
    report.note(f"gSig: estimating the neuron radius from session {session.id}")
    shape = experiment.frame_shape()
    batch = config.chunk_frames or batch_frames_for(config.memory_budget, shape, copies=12, max_frames=GSIG_FRAMES)
    estimate = estimate_session_gsig(
        lambda: session_chunks(
            session, batch_frames=batch, spatial_ds=config.spatial_ds, temporal_ds=config.temporal_ds
        ),
        motion_correction=config.motion_correction,
        max_shift=config.max_shift_ds,
        max_sigma=50.0 / RADIUS_PER_SIGMA / config.spatial_ds,  # the config's bound on gSig, as a blob's sigma
    )
    gsig = round(estimate.gSig * config.spatial_ds, 2)
    raw = min(session.n_frames(), estimate.frames * config.temporal_ds)
    how = estimate.describe(spatial_ds=config.spatial_ds, where=f"frames 0-{raw - 1} of session {session.id}")
    report.note(f"gSig: {gsig:g} px, {how}")
    return config.model_copy(update={"gSig": gsig}), how


def _gsig_hint(experiment: Experiment, config: CalialiConfig, report: _Reporter) -> str:
    """When extraction found nothing with a gSig that was set: the radius the recording's cells have, if far off.

    A gSig well below the cells' size is the commonest reason for a run that finds nothing (the
    seeds' local fits cover part of each cell, and what they find is removed as noise), and the
    message of what failed cannot say so by itself. Estimated as for ``gSig: auto``, only after
    such a failure; nothing when the estimate cannot be made or is within 30% of the value set.
    """
    from caliali.projections import NoCellsError

    try:
        estimated, _ = _estimate_gsig(experiment, config.model_copy(update={"gSig": "auto"}), report)
    except NoCellsError:
        return ""
    ratio = float(estimated.gSig) / float(config.gSig)
    if 1 / 1.3 <= ratio <= 1.3:
        return ""
    return (
        f"; the cells of this recording look {'larger' if ratio > 1 else 'smaller'} than gSig says: about "
        f"{float(estimated.gSig):g} px (set: {float(config.gSig):g}); set gSig to about that, or to 'auto'"
    )


def _check_session_lengths(experiment: Experiment, config: CalialiConfig) -> None:
    """Refuse, before any work, a session too short for its noise levels (headers only)."""
    from caliali.projections import MIN_SESSION_FRAMES

    for session in experiment.sessions:
        frames = -(-session.n_frames() // config.temporal_ds)
        if frames < MIN_SESSION_FRAMES:
            after = f" after temporal_ds={config.temporal_ds}" if config.temporal_ds > 1 else ""
            raise InputError(
                f"session {session.id} has {frames} frames{after}; caliali needs at least {MIN_SESSION_FRAMES} "
                "per session (noise levels are estimated over time): leave it out"
                + (" or lower temporal_ds" if config.temporal_ds > 1 else "")
            )


def _timed(timings: dict[str, dict[str, float]], name: str, fn: Callable[[], Any]) -> Any:
    """Run one stage, recording its wall time and the run's peak RSS after it under ``name``."""
    t0 = time.perf_counter()
    value = fn()
    timings[name] = {"seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(_peak_rss_mb(), 1)}
    return value


def _unaligned(
    motion: list[dict[str, Any]], config: CalialiConfig, work: Path, report: _Reporter
) -> tuple[Path, np.ndarray, np.ndarray]:
    """One session (or alignment switched off): sessions are concatenated as corrected."""
    from caliali.store import FrameStore

    stores = [FrameStore.open(m["store"]) for m in motion]
    if len(stores) == 1:
        video = Path(motion[0]["store"])
    else:
        video = _concatenate(stores, work / "aligned.zarr", config)
    bounds = np.concatenate([[0], np.cumsum([s.n_frames for s in stores])]).astype(np.int64)
    valid = np.logical_and.reduce([np.load(m["valid_mask"]) for m in motion])
    report.stage("apply")(1.0, "nothing to align")
    return video, bounds, valid


@dataclass(frozen=True)
class _Origin:
    """Where the NWB file says it comes from: its identifier and session start, and their sources."""

    hashes: Any  # caliali.provenance.RunHashes
    start: datetime
    start_from: str

    def describe(self) -> dict[str, Any]:
        return {
            **self.hashes.describe(),
            "session_start_time": self.start.isoformat(),
            "session_start_time_from": self.start_from,
        }


def _origin(input: str | Path, mapping: dict[str, Any], experiment: Experiment, config: CalialiConfig) -> _Origin:
    from caliali.provenance import run_hashes, session_start

    first = experiment.sessions[0]
    start, start_from = session_start(
        first.files[0], dataset=first.dataset or config.dataset or None, configured=config.start_time
    )
    return _Origin(run_hashes(input, mapping), start, start_from)


def _write_summary(out: Path, summary: dict[str, Any], *, run: dict[str, Any]) -> None:
    """``summary.json``: the results, the alignment's QC (when sessions were aligned), then under
    ``run`` alone what differs between two runs of the same input (paths, host, times, memory).

    Keys sorted and floats written by `repr` (the shortest text that reads back equal), so the
    same results give the same text.
    """
    alignment = out / "alignment" / "alignment.json"
    summary = {
        **summary,
        "alignment": json.loads(alignment.read_text()).get("qc") if alignment.exists() else None,
        "run": {**run, "peak_rss_mb": round(_peak_rss_mb(), 1)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")


def _concatenate(stores: list[Any], path: Path, config: CalialiConfig) -> Path:
    from caliali.chunking import batch_frames_for
    from caliali.store import FrameStore

    shape = stores[0].frame_shape
    batch = config.chunk_frames or batch_frames_for(config.memory_budget, shape, copies=2)
    out = FrameStore.create(path, shape, params={"stage": "concatenate"})
    for store in stores:
        for start in range(0, store.n_frames, batch):
            out.append(store.read(start, min(start + batch, store.n_frames)))
    out.mark_complete()
    return path


def _extract(
    video: Path,
    bounds: np.ndarray,
    valid: np.ndarray,
    ids: list[str],
    config: CalialiConfig,
    out: Path,
    work: Path,
    report: _Reporter,
    origin: _Origin,
    rate: Any,
    region: _Region,
    gsig_from: str,
    *,
    session_qc: bool = False,
) -> dict[str, Any]:
    """Extract the neurons and write the outputs; ``session_qc``: also each session's QC picture, from
    the images the extraction computed (when no projections stage ran for them)."""
    from caliali.extraction import ExtractionParams, extract
    from caliali.outputs import write_outputs
    from caliali.roi import on_run_grid

    progress = report.stage("extraction", 0.0, 0.95)
    inside = None
    if region.roi is not None:
        inside = on_run_grid(region.roi, config.spatial_ds)
        if inside.shape != valid.shape:
            raise InputError(
                f"roi_mask {region.roi_name!r} is {inside.shape} at spatial_ds={config.spatial_ds}, the frames "
                f"{valid.shape}; make the mask the size of the (cropped) frame"
            )
        valid = valid & inside
    result = extract(
        str(video),
        ExtractionParams.from_config(config),
        session_bounds=bounds,
        valid_mask=valid,
        footprint_mask=inside,
        work_dir=work,
        progress=progress,
    )  # traces on the run's disk
    report.stage("extraction", 0.95, 1.0)(0.0, "writing outputs")
    paths: dict[str, Any] = dict(
        write_outputs(
            result,
            out,
            fs=config.fs_ds,
            session_ids=ids,
            spatial_ds=config.spatial_ds,
            nwb=config.nwb,
            qc=config.qc,
            caiman=config.caiman_hdf5,
            session_start_time=origin.start,
            identifier=origin.hashes.identifier,
            extra_meta={
                "fs_from": rate.source,
                "fs_note": rate.note,
                **region.describe(),
                "gSig": config.gSig,
                "gSig_from": gsig_from,
            },
            field_of_view=region.sentence(config.spatial_ds) if region.crop or region.roi_name else "",
            config=config,
        )
    )
    np.save(out / "arrays" / "valid_mask.npy", valid)
    if session_qc and config.qc and result.images is not None:
        _session_qc_from_extraction(out, work, ids, result.images, config.gsig_ds)
    paths["_n_neurons"] = int(result.A.shape[1])
    used = result.params or {}
    paths["_seed_thresholds"] = {k: used.get(k) for k in ("min_corr", "min_pnr", "min_pnr_from")}
    paths["_convergence"] = dict(result.convergence)
    paths["_min_snr"] = {
        "set": config.min_snr,
        "per_round": [round(float(h["min_snr"]), 3) for h in result.history if "min_snr" in h],
        "from": "auto: 3, or, if less, the level a run expects 0.05 components fitted to noise to pass, from how far "
        "the first round's traces dipped below their baselines"
        if config.min_snr == "auto"
        else "fixed",
    }
    return paths
