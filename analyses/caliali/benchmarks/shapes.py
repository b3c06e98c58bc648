"""Large and elongated cells, over several draws of the noise: does each come out whole, as one component?

The movie is the shape tests' (``tests/test_extraction_shapes.py``: soft-edged cells on a smooth
background, gSig 3, 1,000 frames of 72 x 96): an elongated cell (3.5 x 16 px half-axes), a round
cell of each ``--radii`` value in turn, and two small cells. For every radius and draw, caliali's
``extract`` runs in-process and the table gives the round cell's best mask IoU with its truth (masks
at 0.2 x each footprint's max) and, in brackets, how many components overlap it (IoU > 0.1) when
more than one: a split cell. The elongated cell's IoU is in the last row.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/shapes.py [--radii 8 9 10 12] [--draws 6] [--ring-factor 1.5]

A cell wider than the ring (``ring_factor`` x 4 gSig; 18 px by default) has pixels whose ring runs
through the cell itself: ``--ring-factor 2.5`` shows what a ring that clears a 12 px cell gives.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path.insert(0, str(TESTS))
from test_extraction_shapes import CELLS, GSIG, OTHERS, _movie  # noqa: E402  (the tests' movie, not a copy)

from caliali.extraction import extract  # noqa: E402
from caliali.score import footprint_masks, iou_matrix  # noqa: E402


def best_iou(a_est, truth: np.ndarray) -> tuple[float, int]:
    """The best mask IoU of any component with ``truth`` (h, w) and how many components overlap it."""
    iou = iou_matrix(footprint_masks(a_est), footprint_masks(truth.reshape(-1, 1)))[:, 0]
    return float(iou.max()) if iou.size else 0.0, int((iou > 0.1).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--radii", nargs="+", type=float, default=[8.0, 9.0, 10.0, 12.0])
    parser.add_argument("--draws", type=int, default=6, help="Draws of the noise and spikes (seeds 0..N-1).")
    parser.add_argument("--ring-factor", type=float, default=1.5)
    args = parser.parse_args()
    print(f"gSig {GSIG}, ring_factor {args.ring_factor} (ring radius {args.ring_factor * 4 * GSIG:g} px)")
    print("| cell | " + " | ".join(f"draw {d}" for d in range(args.draws)) + " |")
    print("|---|" + "---|" * args.draws)
    elongated = []
    for radius in args.radii:
        row = []
        for draw in range(args.draws):
            y, a = _movie([CELLS["elongated"], ((30, 72), (radius, radius), 0.0), *OTHERS], seed=draw)
            out = extract(y, gSig=GSIG, min_corr=0.4, min_pnr=6, batch_frames=500, ring_factor=args.ring_factor)
            iou, n = best_iou(out.A, a[1])
            row.append(f"{iou:.2f}" + (f" ({n})" if n > 1 else ""))
            elongated.append(best_iou(out.A, a[0])[0])
        print(f"| round, radius {radius:g} px | " + " | ".join(row) + " |", flush=True)
    per_draw = np.array(elongated).reshape(len(args.radii), args.draws).min(axis=0)
    print("| elongated (lowest over the radii) | " + " | ".join(f"{v:.2f}" for v in per_draw) + " |")


if __name__ == "__main__":
    main()
