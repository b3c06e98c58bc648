"""Benchmark of inter-session alignment: scaling with sessions, groupwise vs all-pairs, demons engines.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/alignment.py [--sizes 2 4 8 16] [--frames 200]
        [--variant ideal] [--seed 0] [--repeats 2] [--workdir DIR] [--skip-engines] [--skip-pairs]

It simulates 16 sessions (deformation 5 px + translation 5 px between
sessions, ``caliali.simulate``) once, computes each session's projections with
``caliali.projections.session_projections`` (BV, and Cn * PNR as the neuron
image), caches them in the work folder, then prints:

1. **scaling** -- wall time of :func:`caliali.registration.align_sessions` for
   the first 2, 4, 8 and 16 sessions, time per session, and
   time(16) / time(8) (linear growth gives ~2; target <= 2.3);
2. **groupwise vs all-pairs** -- accuracy (median / 95th percentile error
   inside the valid mask, per-pixel mean over sessions removed) and time of
   our groupwise registration next to the original's scheme: every pair of
   sessions registered with the same demons pyramid (n(n-1) single-image
   demons runs), each session then moved to the mean of its pairwise fields;
3. **engines** -- one pair of sessions registered through the same pyramid
   with our numpy log-domain demons and with SimpleITK's
   ``DiffeomorphicDemonsRegistrationFilter`` and
   ``FastSymmetricForcesDemonsRegistrationFilter``: error and time.
   SimpleITK is not a dependency of caliali, only of this comparison:
   ``.tools/bin/uv pip install --python .venv/bin/python -e 'analyses/caliali[bench]'``
   (``make setup`` installs it); without it the SimpleITK rows say so.

The machine is shared by several engineers: timings are noisy; run twice.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from itertools import combinations
from pathlib import Path

import numpy as np


def _prepare(workdir: Path, n: int, frames: int, variant: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from caliali.experiment import load_experiment
    from caliali.io import open_video
    from caliali.projections.session import session_projections
    from caliali.simulate import simulate

    cache = workdir / f"projections_{variant}_{n}x{frames}_s{seed}.npz"
    sim = workdir / f"sim_{variant}_{n}x{frames}_s{seed}"
    if not cache.exists():
        t0 = time.perf_counter()
        simulate(sim, sessions=n, frames=frames, variant=variant, deform_px=5.0, translation_px=5.0, seed=seed)
        print(f"simulated {n} sessions x {frames} frames in {time.perf_counter() - t0:.0f} s", flush=True)
        bv, neuron = [], []
        for session in load_experiment(sim).sessions:
            with open_video(session.files[0]) as video:
                p = session_projections(video.read(0, video.n_frames), gSig=3.0, fs=10.0)
            bv.append(p.bv)
            neuron.append(p.cn * p.pnr)
        np.savez(cache, bv=np.stack(bv), neuron=np.stack(neuron), true=np.load(sim / "ground_truth" / "fields.npy"))
    with np.load(cache) as z:
        return z["bv"], z["neuron"], z["true"]


def _error(est: np.ndarray, true: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    e = est - est.mean(axis=0)
    t = true - true.mean(axis=0)
    d = np.sqrt(((e - t) ** 2).sum(axis=1))[:, mask]
    return float(np.median(d)), float(np.percentile(d, 95))


def scaling(bv, neuron, true, sizes, repeats: int) -> dict:
    from caliali.registration import align_sessions

    print(
        "\n== 1. scaling: align_sessions on the first n sessions (source='bv', no fallback rerun);"
        f" best of {repeats}: wall time and this process' CPU time (less disturbed by other users)"
    )
    print(f"{'n':>4} {'wall s':>8} {'cpu s':>8} {'cpu s/session':>14} {'median px':>10} {'p95 px':>8} {'BV score':>9}")
    times: dict[int, tuple[float, float]] = {}
    for n in sizes:
        best = (np.inf, np.inf)
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            al = align_sessions(list(bv[:n]), neuron_images=list(neuron[:n]), gSig=3.0, source="bv")
            best = (min(best[0], time.perf_counter() - w0), min(best[1], time.process_time() - c0))
        times[n] = best
        med, p95 = _error(al.total_fields, true[:n], al.valid_mask)
        print(
            f"{n:>4} {best[0]:>8.2f} {best[1]:>8.2f} {best[1] / n:>14.2f} {med:>10.3f} {p95:>8.3f} "
            f"{al.reliability:>9.2f}",
            flush=True,
        )
    if 8 in times and 16 in times:
        print(
            f"time(16)/time(8): wall {times[16][0] / times[8][0]:.2f}, cpu {times[16][1] / times[8][1]:.2f}"
            f"  (target <= 2.3; all-pairs would be {16 * 15 / (8 * 7):.2f})"
        )
    return times


def all_pairs(bv: list, neuron: list, translations: np.ndarray) -> np.ndarray:
    """The original's scheme on our demons: register every pair symmetrically,
    then move each session to the mean of its pairwise fields.

    For small deformations the pair (i, j) registered to its midpoint gives
    fields F_i ~ (u_i - u_j) / 2 and F_j ~ (u_j - u_i) / 2, so
    (n-1)/n * mean_i (F_j - F_i) ~ u_j - mean(u): the centred field.
    """
    from caliali.registration._groupwise import groupwise_register

    n = len(bv)
    acc = np.zeros((n, 2, *bv[0].shape), dtype=np.float64)
    for i, j in combinations(range(n), 2):
        f = groupwise_register([bv[i], bv[j]], [neuron[i], neuron[j]], translations[[i, j]])
        acc[j] += f[1] - f[0]
        acc[i] += f[0] - f[1]
    fields = (acc / (n - 1)) * ((n - 1) / n)
    return (fields + translations[:, :, None, None]).astype(np.float32)


def groupwise_vs_pairs(bv, neuron, true, sizes) -> None:
    from caliali.registration import align_sessions
    from caliali.registration._fields import in_bounds
    from caliali.registration._groupwise import normalise
    from caliali.registration._translation import estimate_translations

    print("\n== 2. groupwise (ours) vs all-pairs (original's scheme, same demons)")
    print(f"{'n':>4} {'scheme':>10} {'time s':>8} {'median px':>10} {'p95 px':>8}")
    for n in sizes:
        t0 = time.perf_counter()
        al = align_sessions(list(bv[:n]), neuron_images=list(neuron[:n]), gSig=3.0, source="bv")
        tg = time.perf_counter() - t0
        t0 = time.perf_counter()
        tr = estimate_translations([normalise(b) for b in bv[:n]])
        pairs = all_pairs(list(bv[:n]), list(neuron[:n]), tr)
        tp = time.perf_counter() - t0
        mask = al.valid_mask & np.all([in_bounds(f, pairs.shape[2:]) for f in pairs], axis=0)
        for name, est, t in (("groupwise", al.total_fields, tg), ("all-pairs", pairs, tp)):
            med, p95 = _error(est, true[:n], mask)
            print(f"{n:>4} {name:>10} {t:>8.2f} {med:>10.3f} {p95:>8.3f}", flush=True)


def _sitk_engine(kind: str):
    import SimpleITK as sitk

    def run(moving, fixed, field, iterations, params):
        f = (
            sitk.DiffeomorphicDemonsRegistrationFilter()
            if kind == "diffeomorphic"
            else sitk.FastSymmetricForcesDemonsRegistrationFilter()
        )
        f.SetNumberOfIterations(int(iterations))
        f.SetSmoothDisplacementField(True)
        f.SetStandardDeviations(float(params.diffusion_sigma))
        f.SetSmoothUpdateField(params.fluid_sigma > 0)
        f.SetUpdateFieldStandardDeviations(float(max(params.fluid_sigma, 0.5)))
        f.SetMaximumUpdateStepLength(float(params.max_step))
        if kind == "diffeomorphic":
            f.SetUseGradientType(f.Symmetric)
        init = sitk.GetImageFromArray(np.stack([field[1], field[0]], axis=-1).astype(np.float64), isVector=True)
        out = f.Execute(
            sitk.GetImageFromArray(fixed.astype(np.float32)), sitk.GetImageFromArray(moving.astype(np.float32)), init
        )
        arr = sitk.GetArrayFromImage(out)  # (H, W, 2) as (dx, dy)
        return np.stack([arr[..., 1], arr[..., 0]]).astype(np.float32)

    return run


def _pair_pyramid(fixed: tuple, moving: tuple, offset: np.ndarray, engine: str) -> np.ndarray:
    """Register one session to another through the default pyramid; returns
    the backward field fixed frame -> moving session (translation included)."""
    from caliali.registration._demons import demons
    from caliali.registration._fields import exp_field, resize_field
    from caliali.registration._groupwise import DEFAULT_PYRAMID, _level_images, level_shapes

    shape = fixed[0].shape
    shapes = level_shapes(shape, DEFAULT_PYRAMID)
    state = None
    for lv, ls in zip(DEFAULT_PYRAMID, shapes, strict=True):
        if ls is None:
            continue
        fix, mov = _level_images([fixed[0], moving[0]], [fixed[1], moving[1]], lv, ls)
        scale = np.array([ls[0] / shape[0], ls[1] / shape[1]], dtype=np.float32)
        off = offset.astype(np.float32) * scale
        state = np.zeros((2, *ls), np.float32) if state is None else resize_field(state, ls)
        if engine == "numpy":
            state = demons(mov, fix, state, offset=off, iterations=lv.iterations, params=lv.params)
        else:
            total = _sitk_engine(engine)(mov, fix, state + off.reshape(2, 1, 1), lv.iterations, lv.params)
            state = total - off.reshape(2, 1, 1)
    state = resize_field(state, shape)
    field = exp_field(state) if engine == "numpy" else state
    return field + offset.astype(np.float32).reshape(2, 1, 1)


def engines(bv, neuron, true) -> None:
    from caliali.registration._fields import in_bounds, warp_replicate
    from caliali.registration._groupwise import normalise
    from caliali.registration._translation import estimate_translations

    print("\n== 3. demons engines on one pair of sessions (session 1 -> session 0), same pyramid and sigmas")
    tr = estimate_translations([normalise(bv[0]), normalise(bv[1])])
    offset = tr[1] - tr[0]
    # Truth in session 0's frame: p = r + t0(r); f(p) = t1(r) - t0(r).
    t0f, t1f = true[0], true[1]
    r = -t0f.copy()
    for _ in range(30):  # r(p) = -t0(p + r(p)), i.e. the inverse of t0
        r = -np.stack([warp_replicate(t0f[0], r), warp_replicate(t0f[1], r)])
    diff = t1f - t0f
    truth = np.stack([warp_replicate(diff[0], r), warp_replicate(diff[1], r)])
    print(f"{'engine':>34} {'time s':>8} {'median px':>10} {'p95 px':>8}")
    for name, engine in (
        ("numpy log-domain demons (ours)", "numpy"),
        ("SimpleITK DiffeomorphicDemons", "diffeomorphic"),
        ("SimpleITK FastSymmetricForces", "fastsymmetric"),
    ):
        if engine != "numpy" and importlib.util.find_spec("SimpleITK") is None:
            print(f"{name:>34} skipped: SimpleITK is not installed (the caliali[bench] extra)", flush=True)
            continue
        t0 = time.perf_counter()
        field = _pair_pyramid((bv[0], neuron[0]), (bv[1], neuron[1]), offset, engine)
        dt = time.perf_counter() - t0
        mask = in_bounds(field, field.shape[1:]) & in_bounds(r, field.shape[1:])
        d = np.sqrt(((field - truth) ** 2).sum(axis=0))[mask]
        print(f"{name:>34} {dt:>8.2f} {np.median(d):>10.3f} {np.percentile(d, 95):>8.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--pair-sizes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--variant", default="ideal")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("bench-data/alignment"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-engines", action="store_true")
    ap.add_argument("--skip-pairs", action="store_true")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    n = max(args.sizes + args.pair_sizes + [2])
    bv, neuron, true = _prepare(args.workdir, n, args.frames, args.variant, args.seed)
    times = scaling(bv, neuron, true, args.sizes, args.repeats)
    if not args.skip_pairs:
        groupwise_vs_pairs(bv, neuron, true, args.pair_sizes)
    if not args.skip_engines:
        engines(bv, neuron, true)
    print("\n" + json.dumps({"scaling_wall_cpu_seconds": times}))


if __name__ == "__main__":
    main()
