"""Render the simulated experiment: videos, manifest, ground truth."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from caliali._cv2 import cv2
from caliali.experiment import Session, write_manifest
from caliali.io import open_writer, split_sizes
from caliali.simulate._activity import calcium, spike_rates, spikes
from caliali.simulate._deform import invert_field, smooth_field, within_session_shifts
from caliali.simulate._params import SimulationParams
from caliali.simulate._scene import background, footprints, place_neurons

__all__ = ["Simulation", "simulate"]

_RENDER_FRAMES = 250  # frames rendered at once; fixed so output never depends on it
_HALO_STEP = 4  # halos are smooth (sigma 10 px): computed on a 4x coarser grid


@dataclass(frozen=True)
class Simulation:
    """Where a simulation was written, and its metadata."""

    out: Path
    manifest: Path
    ground_truth: Path
    meta: dict[str, Any]


def _warp(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return cv2.remap(image, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


class _SessionRenderer:
    """Frames of one session in its own coordinates (full field, before cropping)."""

    def __init__(self, p: SimulationParams, a_full: np.ndarray, bg_full: np.ndarray, u: np.ndarray) -> None:
        hf, wf = bg_full.shape
        grid = np.mgrid[0:hf, 0:wf].astype(np.float32)
        maps = (grid[1] + u[1].astype(np.float32), grid[0] + u[0].astype(np.float32))
        warped = np.stack([_warp(a, maps) for a in a_full])
        self.shape = (hf, wf)
        k_idx, pix = np.nonzero(warped.reshape(len(warped), -1))
        values = warped.reshape(len(warped), -1)[k_idx, pix]
        self.a = sparse.csr_matrix((values, (pix, k_idx)), shape=(hf * wf, len(warped)))  # (pixels, K)
        coarse = (wf // _HALO_STEP, hf // _HALO_STEP)
        # blur on the coarse grid: the halo (sigma 10 px) is far smoother than the grid step
        halos = [
            cv2.GaussianBlur(cv2.resize(a, coarse, interpolation=cv2.INTER_AREA), (0, 0), p.halo_sigma / _HALO_STEP)
            for a in warped
        ]
        self.halos = np.stack(halos).reshape(len(halos), -1)  # (K, coarse pixels), values per pixel
        self.coarse = coarse
        self.bg = 0.8 * _warp(bg_full, maps)
        self.gain = 0.2 * p.pnr / (p.pnr + 1)

    def clean(self, c: np.ndarray) -> np.ndarray:
        """Noise-free frames (t, hf, wf) for calcium ``c`` (K, t)."""
        hf, wf = self.shape
        signal = np.asarray(self.a @ c).T.reshape(-1, hf, wf)
        halo = (c.T @ self.halos).reshape(-1, self.coarse[1], self.coarse[0]).astype(np.float32)
        frames = np.empty((c.shape[1], hf, wf), dtype=np.float32)
        for i in range(c.shape[1]):
            frames[i] = self.bg + self.gain * (
                signal[i] + cv2.resize(halo[i], (wf, hf), interpolation=cv2.INTER_LINEAR)
            )
        return frames


def _shift_frames(frames: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Move each frame so that applying ``shifts`` (dy, dx) corrects it: frame[q] = scene[q - shift]."""
    out = np.empty_like(frames)
    h, w = frames.shape[1:]
    for i, (dy, dx) in enumerate(shifts):
        matrix = np.array([[1, 0, -dx], [0, 1, -dy]], dtype=np.float64)
        out[i] = cv2.warpAffine(
            frames[i], matrix, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT
        )
    return out


def _file_names(p: SimulationParams, session: int) -> list[tuple[str, int]]:
    stem = f"ses{session + 1:02d}"
    if p.max_frames_per_file is None:
        return [(stem, p.frames)]
    return [(f"{stem}_b{k}", n) for k, n in enumerate(split_sizes(p.frames, p.max_frames_per_file), start=1)]


def simulate(
    out: Path | str,
    params: SimulationParams | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
    **options: Any,
) -> Simulation:
    """Simulate a multi-session one-photon experiment with known ground truth.

    The generative model of CaliAli's simulation: neurons with Gaussian-like
    footprints (~7 px) and a dim halo (the footprint blurred with sigma 10 px)
    driven by the same trace; Bernoulli spikes with log-normal rates;
    calcium = spikes convolved with exp(-t/td) - exp(-t/tr); a smooth
    vignetted background with dark vessels; per frame
    ``0.8 background + 0.2 signal PNR/(PNR+1) + 0.2 noise/(PNR+1)`` with
    unit-variance Gaussian noise, so a footprint's peak at a single spike is
    ``pnr`` noise standard deviations. Each session sees the scene through
    its own smooth deformation (gradient of smoothed noise) plus a
    translation, optionally moved frame by frame (``within_motion``).

    Parameters
    ----------
    out : path
        Folder to write (created): ``manifest.yaml``, the videos, and
        ``ground_truth/`` (see ``meta.json`` there for every parameter).
    params : SimulationParams, optional
        Or give its fields as keyword options.
    progress : callable, optional
        ``progress(fraction, message)``.

    Returns
    -------
    Simulation

    Notes
    -----
    Videos store ``(frame + video_offset) * video_scale`` (defaults 1 and
    1000): TIFF as exact float32, AVI as lossless FFV1 uint16 (rounding adds
    a quantisation error of 0.3 counts rms, 0.4% of the noise at PNR 2).

    References
    ----------
    .. [1] Vergara, P. et al. "A comprehensive suite for extracting neuron
       signals across multiple sessions in one-photon calcium imaging."
       Nature Communications 16 (2025).
    .. [2] Zhou, P. et al. "Efficient and accurate extraction of in vivo
       calcium signals from microendoscopic video data." eLife 7 (2018).
    """
    p = params if params is not None else SimulationParams(**options)
    out = Path(out)
    gt_dir = out / "ground_truth"
    gt_dir.mkdir(parents=True, exist_ok=True)
    seeds = np.random.SeedSequence(p.seed).spawn(2 + 3 * p.sessions)
    scene = _Scene.draw(p, np.random.default_rng(seeds[0]))
    activity = _Activity.draw(p, np.random.default_rng(seeds[1]))
    rendered = [
        _render_session(
            p, ses, scene, activity, [np.random.default_rng(x) for x in seeds[2 + 3 * ses : 5 + 3 * ses]], out, progress
        )
        for ses in range(p.sessions)
    ]
    meta = _meta(p, scene, activity, rendered)
    m, h, w = p.margin, p.height, p.width
    _write_ground_truth(
        gt_dir,
        scene.a_full[:, m : m + h, m : m + w],
        activity.c,
        activity.s,
        np.stack([r.field for r in rendered]),
        scene.bg_full[m : m + h, m : m + w],
        scene.vessels[m : m + h, m : m + w],
        np.concatenate([r.shifts for r in rendered]) if p.within_motion else None,
        meta,
    )
    manifest = write_manifest(
        [r.session for r in rendered], out / "manifest.yaml", fs=p.fs, ground_truth="ground_truth"
    )
    return Simulation(out=out, manifest=manifest, ground_truth=gt_dir, meta=meta)


@dataclass(frozen=True)
class _Scene:
    """The static scene on the full (uncropped) field, reference coordinates."""

    centres: np.ndarray  # (K, 2) in cropped reference coordinates
    distance: float
    a_full: np.ndarray
    bg_full: np.ndarray
    vessels: np.ndarray

    @classmethod
    def draw(cls, p: SimulationParams, rng: np.random.Generator) -> _Scene:
        h, w, m = p.height, p.width, p.margin
        side = np.sqrt(p.central_fraction)  # a central box holding this fraction of the area
        region = (h * (1 - side) / 2, h * (1 + side) / 2, w * (1 - side) / 2, w * (1 + side) / 2)
        centres, distance = place_neurons(rng, p.n_neurons, region, min_distance=p.min_distance)
        full = (h + 2 * m, w + 2 * m)
        a_full = footprints(rng, centres + m, full, width=p.footprint_width)
        bg_full, vessels = background(rng, full)
        return cls(centres, distance, a_full, bg_full, vessels)


@dataclass(frozen=True)
class _Activity:
    """Spikes and calcium of every neuron over all sessions."""

    active: np.ndarray  # (sessions, K) bool
    rates: np.ndarray
    tau_rise: np.ndarray
    tau_decay: np.ndarray
    s: np.ndarray
    c: np.ndarray

    @classmethod
    def draw(cls, p: SimulationParams, rng: np.random.Generator) -> _Activity:
        k, session_frames = p.n_neurons, [p.frames] * p.sessions
        active = np.ones((p.sessions, k), dtype=bool)
        if p.variant == "remap":
            active = rng.random((p.sessions, k)) < p.active_fraction
            for j in np.flatnonzero(~active.any(axis=0)):  # every neuron is active somewhere
                active[rng.integers(p.sessions), j] = True
        rates = spike_rates(rng, k, median=p.spike_rate, log_sigma=p.spike_rate_log_sigma)
        tau_rise = p.tau_rise * rng.uniform(0.9, 1.1, k)
        tau_decay = p.tau_decay * rng.uniform(0.9, 1.1, k)
        s = spikes(rng, rates, session_frames, active)
        return cls(active, rates, tau_rise, tau_decay, s, calcium(s, session_frames, tau_rise, tau_decay))


@dataclass(frozen=True)
class _Rendered:
    session: Session
    field: np.ndarray
    translation: list[float]
    shifts: np.ndarray
    inversion_error: float


def _render_session(
    p: SimulationParams,
    ses: int,
    scene: _Scene,
    activity: _Activity,
    rngs: list[np.random.Generator],
    out: Path,
    progress: Callable[[float, str], None] | None,
) -> _Rendered:
    """Warp the scene into session ``ses`` and write its video file(s), chunk by chunk."""
    rng_deform, rng_motion, rng_noise = rngs
    m, h, w = p.margin, p.height, p.width
    d = smooth_field(rng_deform, scene.bg_full.shape, magnitude=p.deform_px, smoothness=min(scene.bg_full.shape) / 4)
    translation = rng_deform.uniform(-p.translation_px, p.translation_px, 2)
    d += translation[:, None, None]
    u, residual = invert_field(d)
    shifts = (
        within_session_shifts(rng_motion, p.frames, sd=p.motion_px)
        if p.within_motion
        else np.zeros((p.frames, 2), dtype=np.float32)
    )
    renderer = _SessionRenderer(p, scene.a_full, scene.bg_full, u)
    first, files, t0 = ses * p.frames, [], 0
    for name, n in _file_names(p, ses):
        path = out / f"{name}.{p.format}"
        dtype = np.float32 if p.format == "tif" else np.uint16
        with open_writer(path, frame_shape=(h, w), dtype=dtype, n_frames=n, fps=p.fs) as writer:
            for a in range(t0, t0 + n, _RENDER_FRAMES):
                b = min(a + _RENDER_FRAMES, t0 + n)
                frames = renderer.clean(activity.c[:, first + a : first + b])
                if p.within_motion:
                    frames = _shift_frames(frames, shifts[a:b])
                frames = frames[:, m : m + h, m : m + w]
                frames += (0.2 / (p.pnr + 1)) * rng_noise.standard_normal(frames.shape, dtype=np.float32)
                video = (frames + p.video_offset) * p.video_scale
                writer.write(video if p.format == "tif" else np.clip(np.rint(video), 0, 65535))
                if progress is not None:
                    progress(
                        (first + b) / (p.sessions * p.frames),
                        f"simulating session {ses + 1}/{p.sessions}, frame {b}/{p.frames}",
                    )
        files.append(path)
        t0 += n
    return _Rendered(
        Session(id=f"ses{ses + 1:02d}", files=tuple(files)),
        d[:, m : m + h, m : m + w].astype(np.float32),
        translation.tolist(),
        shifts,
        residual,
    )


def _meta(p: SimulationParams, scene: _Scene, activity: _Activity, rendered: list[_Rendered]) -> dict[str, Any]:
    return {
        **p.as_dict(),
        "frame_formula": "0.8*background + 0.2*signal*pnr/(pnr+1) + 0.2*noise/(pnr+1)",
        "video_encoding": {
            "dtype": "float32" if p.format == "tif" else "uint16",
            "model_value": "video / video_scale - video_offset",
            "video_scale": p.video_scale,
            "video_offset": p.video_offset,
        },
        "session_ids": [r.session.id for r in rendered],
        "session_frames": [p.frames] * p.sessions,
        "active": activity.active.tolist(),
        "spike_rates": activity.rates.tolist(),
        "tau_rise": activity.tau_rise.tolist(),
        "tau_decay": activity.tau_decay.tolist(),
        "centres": scene.centres.tolist(),
        "min_distance_used": scene.distance,
        "translations": [r.translation for r in rendered],
        "field_inversion_error_px": max(r.inversion_error for r in rendered),
        "fields_convention": "backward: aligned[y, x] = session[y + dy[y, x], x + dx[y, x]]",
    }


def _write_ground_truth(
    gt_dir: Path,
    a: np.ndarray,
    c: np.ndarray,
    s: np.ndarray,
    fields: np.ndarray,
    bg: np.ndarray,
    vessels: np.ndarray,
    shifts: np.ndarray | None,
    meta: dict[str, Any],
) -> None:
    np.save(gt_dir / "A.npy", a.astype(np.float32))
    np.save(gt_dir / "C.npy", c.astype(np.float32))
    np.save(gt_dir / "S.npy", s.astype(np.float32))
    np.save(gt_dir / "fields.npy", fields.astype(np.float32))
    np.save(gt_dir / "background.npy", bg.astype(np.float32))
    np.save(gt_dir / "vessels.npy", vessels.astype(np.float32))
    if shifts is not None:
        np.save(gt_dir / "shifts.npy", shifts.astype(np.float32))
    (gt_dir / "session_frames.json").write_text(json.dumps(meta["session_frames"]))
    (gt_dir / "meta.json").write_text(json.dumps(meta, indent=1))
