"""caliali's footprints on a real recording, against minian's own result on it.

The recording is minian's test fixture in ``../shared/data/minian_fixture`` (beside the
repository): ``org.zarr``, 100 frames of 480 x 752, already motion-corrected and
background-suppressed by minian, and minian's 208 units in ``A.zarr``. minian's footprints
sit 1 px down and 2 px right of the movie (the mean of its own motion shifts, ``shifts.zarr``),
so they are moved back by that mean shift, rounded, before any comparison.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/vs_minian_fixture.py
        [--config '{"gSig": 4, "fs": 30, "motion_correction": false}'] [--workdir /tmp/caliali-vs-minian]

Prints, for caliali (run as ``caliali run`` in a subprocess, measured like ``vs_peers.py``)
and for minian's units as the reference:

- units, wall time, CPU time and peak memory of the run;
- agreement with minian: footprints matched one to one by the IoU of their masks (pixels at
  or above 0.2 x each footprint's max), a match needing IoU >= 0.3 (``caliali.score.match_masks``,
  CaImAn's ``register_ROIs`` criterion): precision, recall, F1 and the median IoU of matches;
- the median mask area (px) of each;
- box-clipped outlines: components whose mask runs straight along the edge of the footprint's
  support box (the bounding box of its nonzero pixels) for more than half that side — a
  footprint cut off by the box it was allowed to live in rather than by the cell's edge (box
  edges on the frame's border are left out: there the field of view cuts the cell);
- how far the movie bears out each tool's units, using neither tool's other output: a unit's
  footprint against its *event image*, the mean of the movie over the 10 frames where the unit's
  own trace is highest less each pixel's 20th percentile (`movie_support`): the number of units
  whose footprint correlates with it at 0.5 or more, the median correlation, and the median ratio
  of the footprint's half-max area to the event image's (1: the footprint is the size the unit's
  activity lights up); then caliali's IoU-F1 against minian's borne-out units only, with all of
  caliali's units and with its borne-out ones (a fragment of a cell, or a patch of noise, scores
  low against the whole cell its trace lights up; minian's units include many);
- bright-maxima coverage: local maxima of the Gaussian-smoothed (sigma gSig: the config's, else the
  run's estimate) max projection
  that stand above median + 8 MAD of it (maxima of a (2 gSig + 1)-px square), and how many of them fall
  inside a mask of each;

and writes ``overlay.png`` in ``--workdir``: the max projection with caliali's outlines (orange),
minian's (cyan) and the bright maxima (crosses: white when caliali covers one, red when not).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_peers import measure, tail  # noqa: E402  (a sibling script: the same measurement)

from caliali.score import footprint_masks, match_masks  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
FIXTURE = REPO.parent / "shared" / "data" / "minian_fixture"
DEFAULT_CONFIG = {"gSig": 4, "fs": 30, "motion_correction": False}
MASK_FRACTION = 0.2
IOU_THRESHOLD = 0.3
BRIGHT_MADS = 8.0
EVENT_FRAMES = 10  # frames of a unit's highest trace values averaged into its event image
SUPPORT_HALF = 25  # px: half the side of the window a footprint is compared with its event image in
SUPPORTED = 0.5  # a unit whose footprint correlates at least this well with its event image is borne out


def read_zarr(name: str, array: str) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(FIXTURE / name), mode="r")[array][:])


def minian_footprints(dims: tuple[int, int]) -> tuple[sparse.csc_array, tuple[int, int]]:
    """minian's units as (P, K) footprints on the movie's grid, moved back by its mean motion shift."""
    a = read_zarr("A.zarr", "A")  # (height, width, unit_id)
    shift = np.round(read_zarr("shifts.zarr", "shifts").mean(axis=0)).astype(int)  # (dy, dx) of the units
    a = np.roll(a, (-int(shift[0]), -int(shift[1])), axis=(0, 1))
    if int(shift[0]) > 0:
        a[-int(shift[0]) :] = 0
    if int(shift[1]) > 0:
        a[:, -int(shift[1]) :] = 0
    assert a.shape[:2] == dims, (a.shape, dims)
    return sparse.csc_array(a.reshape(dims[0] * dims[1], -1)), (int(shift[0]), int(shift[1]))


def box_clipped(a: sparse.csc_array, dims: tuple[int, int]) -> int:
    """Components whose mask runs straight along an edge of their support's bounding box for over half the side."""
    masks = footprint_masks(a, fraction=MASK_FRACTION)
    support = sparse.csc_array(a)
    count = 0
    for k in range(a.shape[1]):
        rows = support.indices[support.indptr[k] : support.indptr[k + 1]]
        if len(rows) == 0:
            continue
        ys, xs = np.unravel_index(rows, dims)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        m = np.zeros(dims, bool)
        my, mx = np.unravel_index(masks.indices[masks.indptr[k] : masks.indptr[k + 1]], dims)
        m[my, mx] = True
        box = m[y0 : y1 + 1, x0 : x1 + 1]
        h, w = box.shape
        # an edge on the frame's border is the field of view cutting a cell, not a box
        edges = [
            (box[0], w, y0 > 0),
            (box[-1], w, y1 < dims[0] - 1),
            (box[:, 0], h, x0 > 0),
            (box[:, -1], h, x1 < dims[1] - 1),
        ]
        if any(_longest_run(edge) > side / 2 for edge, side, inside in edges if inside and side >= 4):
            count += 1
    return count


def _longest_run(line: np.ndarray) -> int:
    best = run = 0
    for v in line:
        run = run + 1 if v else 0
        best = max(best, run)
    return best


def bright_maxima(maxproj: np.ndarray, gsig: float) -> np.ndarray:
    """(n, 2) pixel positions of the bright local maxima of the smoothed max projection."""
    smooth = ndi.gaussian_filter(maxproj.astype(np.float64), gsig)
    med = np.median(smooth)
    mad = np.median(np.abs(smooth - med))
    size = int(2 * round(gsig) + 1)
    peaks = (smooth == ndi.maximum_filter(smooth, size=size)) & (smooth > med + BRIGHT_MADS * mad)
    return np.argwhere(peaks)


def coverage(a: sparse.csc_array, dims: tuple[int, int], points: np.ndarray) -> np.ndarray:
    """For each point, whether it lies inside some footprint's mask."""
    covered = np.asarray(footprint_masks(a, fraction=MASK_FRACTION).sum(axis=1)).ravel().reshape(dims) > 0
    return covered[points[:, 0], points[:, 1]] if len(points) else np.zeros(0, bool)


def movie_support(
    a: sparse.csc_array, traces: np.ndarray, movie: np.ndarray, baseline: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """How well the movie itself bears out each unit: (support, half-max area ratio), one value per unit.

    A unit's *event image* is the movie's mean over the `EVENT_FRAMES` frames where its own trace
    is highest, less the per-pixel `baseline` (the 20th percentile of each pixel over the movie).
    Its *support* is the correlation of the footprint with that image over a `SUPPORT_HALF`-px
    window around the footprint's peak: a footprint that is a whole cell's shape scores high; a
    fragment of a cell, or a patch of noise, low. The *area ratio* is the footprint's area at half
    its maximum over the area of the event image's connected region at half its peak (the peak
    taken within 3 px of the footprint's): 1 when the footprint is the size the unit's activity
    lights up in the movie, under 1 when it is smaller. Nothing here uses the other tool's units.
    """
    dims = movie.shape[1:]
    frames = movie.reshape(len(movie), -1)
    support = np.full(a.shape[1], np.nan)
    ratio = np.full(a.shape[1], np.nan)
    for k in range(a.shape[1]):
        fp = a[:, [k]].toarray().reshape(dims)
        if fp.max() <= 0:
            continue
        top = np.argsort(-np.asarray(traces[k], np.float64), kind="stable")[:EVENT_FRAMES]
        cy, cx = np.unravel_index(int(np.argmax(fp)), dims)
        y0, y1 = max(0, cy - SUPPORT_HALF), min(dims[0], cy + SUPPORT_HALF + 1)
        x0, x1 = max(0, cx - SUPPORT_HALF), min(dims[1], cx + SUPPORT_HALF + 1)
        image = frames[top].mean(axis=0).reshape(dims)[y0:y1, x0:x1] - baseline[y0:y1, x0:x1]
        window = fp[y0:y1, x0:x1]
        support[k] = float(np.corrcoef(window.ravel(), image.ravel())[0, 1])
        ly, lx = cy - y0, cx - x0
        peak = float(image[max(0, ly - 3) : ly + 4, max(0, lx - 3) : lx + 4].max())
        if peak <= 0:
            continue
        labels, _ = ndi.label(image >= 0.5 * peak)
        near = labels[max(0, ly - 3) : ly + 4, max(0, lx - 3) : lx + 4]
        label = np.bincount(near[near > 0]).argmax() if (near > 0).any() else 0
        if label:
            ratio[k] = float((window >= 0.5 * fp.max()).sum()) / float((labels == label).sum())
    return support, ratio


def mask_areas(a: sparse.csc_array) -> np.ndarray:
    return np.asarray(footprint_masks(a, fraction=MASK_FRACTION).sum(axis=0)).ravel()


def overlay(path: Path, maxproj: np.ndarray, ours: sparse.csc_array, theirs: sparse.csc_array, dims, points, hit):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(15, 9.6), dpi=100)
    ax.imshow(maxproj, cmap="gray", vmin=np.percentile(maxproj, 1), vmax=np.percentile(maxproj, 99.8))
    for a, colour in ((theirs, "cyan"), (ours, "orange")):
        masks = footprint_masks(a, fraction=MASK_FRACTION)
        for k in range(a.shape[1]):
            m = np.zeros(dims, float)
            m.ravel()[masks.indices[masks.indptr[k] : masks.indptr[k + 1]]] = 1
            ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)
    if len(points):
        ax.scatter(points[hit, 1], points[hit, 0], marker="x", c="white", s=40)
        ax.scatter(points[~hit, 1], points[~hit, 0], marker="x", c="red", s=60)
    ax.set_title("max projection; caliali (orange), minian (cyan), bright maxima (x: white covered, red missed)")
    ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=json.dumps(DEFAULT_CONFIG), help="caliali config (JSON).")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caliali-vs-minian"))
    args = parser.parse_args()
    if not (FIXTURE / "org.zarr").is_dir():
        raise SystemExit(f"the fixture is not on this machine: {FIXTURE} (../shared/data beside the repository)")
    config = json.loads(args.config)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "config.json").write_text(json.dumps(config))
    out = args.workdir / "caliali"
    cmd = [sys.executable, "-m", "caliali", "run", "--input", str(FIXTURE / "org.zarr"), "--output", str(out)]
    cmd += ["--config", str(args.workdir / "config.json"), "--work", str(args.workdir / "work")]
    print(f"caliali on {FIXTURE / 'org.zarr'} with {config} ...", flush=True)
    run = measure(cmd, log=args.workdir / "caliali.log")
    if run["returncode"] != 0:
        raise SystemExit(f"caliali run exited {run['returncode']}:\n{tail(run['log'])}")

    movie = read_zarr("org.zarr", "org")
    dims = movie.shape[1:]
    maxproj = movie.max(axis=0).astype(np.float32)
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    if tuple(meta["dims"]) != dims:
        raise SystemExit(f"caliali's dims {meta['dims']} differ from the movie's {dims}: run with spatial_ds 1")
    ours = sparse.load_npz(out / "arrays" / "A.npz").tocsc()
    theirs, shift = minian_footprints(dims)
    given = config.get("gSig", "auto")
    gsig = float(meta["gSig"] if given == "auto" else given)  # the run's estimate when gSig is not set
    points = bright_maxima(maxproj, gsig)
    agreement = match_masks(ours, theirs, iou_threshold=IOU_THRESHOLD, fraction=MASK_FRACTION)
    baseline = np.percentile(movie, 20, axis=0).astype(np.float32)
    frames = movie.astype(np.float32)
    supports = {
        "caliali": movie_support(ours, np.load(out / "arrays" / "C.npy"), frames, baseline),
        "minian": movie_support(theirs, read_zarr("C.zarr", "C"), frames, baseline),
    }
    borne = np.flatnonzero(supports["minian"][0] >= SUPPORTED)
    ours_borne = np.flatnonzero(supports["caliali"][0] >= SUPPORTED)
    against_borne = match_masks(ours, theirs[:, borne], iou_threshold=IOU_THRESHOLD, fraction=MASK_FRACTION)
    both_borne = match_masks(ours[:, ours_borne], theirs[:, borne], iou_threshold=IOU_THRESHOLD, fraction=MASK_FRACTION)
    rows: list[dict[str, Any]] = []
    for name, a, m in (("caliali", ours, run), ("minian (reference)", theirs, None)):
        hit = coverage(a, dims, points)
        support, ratio = supports[name.split()[0]]
        rows.append(
            {
                "tool": name,
                "units": int(a.shape[1]),
                "wall_s": None if m is None else round(m["wall_s"], 1),
                "cpu_s": None if m is None else round(m["cpu_s"], 1),
                "peak_rss_mb": None if m is None else round(m["peak_rss_mb"], 0),
                "median_mask_area_px": float(np.median(mask_areas(a))) if a.shape[1] else 0.0,
                "box_clipped": box_clipped(a, dims),
                "bright_maxima_covered": int(hit.sum()),
                "bright_maxima": len(points),
                "supported": int((support >= SUPPORTED).sum()),
                "median_support": round(float(np.nanmedian(support)), 2),
                "median_half_max_area_ratio": round(float(np.nanmedian(ratio)), 2),
            }
        )
    rows[0].update(
        f1=round(agreement.f1, 3),
        precision=round(agreement.precision, 3),
        recall=round(agreement.recall, 3),
        median_iou=round(agreement.median_iou, 3),
        f1_borne_out=round(against_borne.f1, 3),
        precision_borne_out=round(against_borne.precision, 3),
        recall_borne_out=round(against_borne.recall, 3),
        f1_both_borne_out=round(both_borne.f1, 3),
        precision_both_borne_out=round(both_borne.precision, 3),
        recall_both_borne_out=round(both_borne.recall, 3),
    )
    overlay(args.workdir / "overlay.png", maxproj, ours, theirs, dims, points, coverage(ours, dims, points))

    print(f"\nminian's units moved by {(-shift[0], -shift[1])} px (its mean motion shift) before comparing")
    print(
        f"{'tool':20s} {'units':>5s} {'wall s':>7s} {'CPU s':>6s} {'peak MB':>8s} {'IoU-F1':>6s} {'P':>5s} {'R':>5s} "
        f"{'med IoU':>7s} {'med area':>8s} {'clipped':>7s} {'bright':>7s}"
    )
    for r in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"{r['tool']:20s} {r['units']:>5d} {fmt(r['wall_s'], '.0f'):>7s} {fmt(r['cpu_s'], '.0f'):>6s} "
            f"{fmt(r['peak_rss_mb'], '.0f'):>8s} {fmt(r.get('f1'), '.2f'):>6s} {fmt(r.get('precision'), '.2f'):>5s} "
            f"{fmt(r.get('recall'), '.2f'):>5s} {fmt(r.get('median_iou'), '.2f'):>7s} "
            f"{r['median_mask_area_px']:>8.0f} {r['box_clipped']:>7d} "
            f"{r['bright_maxima_covered']:>3d}/{r['bright_maxima']:<3d}"
        )
    print(
        f"\nborne out by the movie (footprint vs the mean of its unit's {EVENT_FRAMES} highest-trace frames, "
        f"less each pixel's 20th percentile: correlation >= {SUPPORTED} over {2 * SUPPORT_HALF + 1} px)"
    )
    print(f"{'tool':20s} {'units':>5s} {'borne out':>9s} {'median r':>8s} {'half-max area / event':>22s}")
    for r in rows:
        print(
            f"{r['tool']:20s} {r['units']:>5d} {r['supported']:>9d} {r['median_support']:>8.2f} "
            f"{r['median_half_max_area_ratio']:>22.2f}"
        )
    print(
        f"caliali against the {len(borne)} minian units the movie bears out: IoU-F1 {against_borne.f1:.2f} "
        f"(P {against_borne.precision:.2f}, R {against_borne.recall:.2f}); caliali's {len(ours_borne)} borne out "
        f"against them: IoU-F1 {both_borne.f1:.2f} (P {both_borne.precision:.2f}, R {both_borne.recall:.2f})"
    )
    ratio = rows[0]["median_mask_area_px"] / max(rows[1]["median_mask_area_px"], 1)
    print(f"median mask area caliali / minian: {ratio:.2f}")
    if agreement.matches:  # the same cells found by both: is the shape or the population different?
        ours_area, theirs_area = mask_areas(ours), mask_areas(theirs)
        pair = np.median([ours_area[i] / max(theirs_area[j], 1) for i, j, _ in agreement.matches])
        rows[0]["matched_area_ratio"] = round(float(pair), 2)
        print(f"median area ratio caliali / minian over the {len(agreement.matches)} matched pairs: {pair:.2f}")
    (args.workdir / "figures.json").write_text(json.dumps({"config": config, "rows": rows}, indent=2))
    print(f"overlay: {args.workdir / 'overlay.png'}; figures: {args.workdir / 'figures.json'}")


if __name__ == "__main__":
    main()
