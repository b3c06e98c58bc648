"""What each output file costs to write: seconds and bytes for K neurons x T frames.

Builds an extraction of random traces (memory-mapped, as `caliali.extraction.extract`
returns them) with ``--neurons`` Gaussian footprints on a 200 x 300 grid, two
sessions, then times (CPU seconds of this process: wall time on a shared machine says more
about the other users), in this order: ``arrays/`` without ΔF/F, ``arrays/dff.npy``
alone, ``neurons.nwb`` (with DfOverF) and ``caiman.hdf5``, and prints each file's
size. Decides whether an output needs its own switch (``caiman_hdf5``).

Usage::

    .venv/bin/python analyses/caliali/benchmarks/outputs.py [--neurons 80] [--frames 200000]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse


def synthetic_extraction(k: int, t: int, folder: Path, *, non_negative: bool = False):
    """K Gaussian footprints at random centres on a 200 x 300 grid, random traces of T frames, two sessions.

    The traces are memory-mapped in ``folder``, as `caliali.extraction.extract` returns them;
    ``non_negative`` makes C and S non-negative, as deconvolved traces are.
    """
    from caliali.extraction import Extraction
    from caliali.extraction._traces import TraceFile

    h, w = 200, 300
    rng = np.random.default_rng(0)
    traces = []
    for kind in range(3):
        f = TraceFile((k, t), directory=folder)
        for row in range(k):
            values = rng.standard_normal(t, dtype=np.float32)
            f[row] = np.abs(values) if non_negative and kind else values
        traces.append(f)
    yy, xx = np.mgrid[:h, :w]
    images, centers = [], []
    for _ in range(k):
        cy, cx = rng.uniform(10, h - 10), rng.uniform(10, w - 10)
        im = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0).astype(np.float32)
        im[im < 0.05] = 0
        images.append(im.ravel())
        centers.append((cy, cx))
    return Extraction(
        A=scipy.sparse.csc_array(np.stack(images, axis=1)),
        C_raw=traces[0].view(),
        C=traces[1].view(),
        S=traces[2].view(),
        cn=np.ones((h, w), np.float32),
        pnr=np.ones((h, w), np.float32),
        session_bounds=np.array([0, t // 2, t]),
        dims=(h, w),
        snr=np.linspace(9, 1, k),
        noise=np.ones((k, 2)),
        centers=np.array(centers),
        seeds=np.zeros((k, 2), int),
        f0=np.full((k, 2), 100.0, np.float32),
        b0=np.full((2, h, w), 100.0, np.float32),
    )


def main() -> None:
    from caliali.outputs import write_arrays, write_caiman, write_nwb
    from caliali.outputs._dff import write_dff

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--neurons", type=int, default=80)
    parser.add_argument("--frames", type=int, default=200_000)
    parser.add_argument("--fs", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ex = synthetic_extraction(args.neurons, args.frames, folder)
        timings = {}
        start = time.process_time()
        write_arrays(dataclasses.replace(ex, f0=None), folder / "out", fs=args.fs)  # no f0: no dF/F
        timings["arrays/ (no dF/F)"] = time.process_time() - start
        start = time.process_time()
        write_dff(ex, folder / "out" / "arrays" / "dff.npy", fs=args.fs, window_s=30.0)
        timings["arrays/dff.npy"] = time.process_time() - start
        dff = np.load(folder / "out" / "arrays" / "dff.npy", mmap_mode="r")
        start = time.process_time()
        write_nwb(ex, folder / "out" / "neurons.nwb", fs=args.fs, dff=dff)
        timings["neurons.nwb"] = time.process_time() - start
        start = time.process_time()
        write_caiman(ex, folder / "out" / "caiman.hdf5", fs=args.fs, dff=dff)
        timings["caiman.hdf5"] = time.process_time() - start
        sizes = {p.relative_to(folder / "out").as_posix(): p.stat().st_size for p in (folder / "out").rglob("*.*")}
        print(f"{args.neurons} neurons x {args.frames} frames")
        for name, seconds in timings.items():
            print(f"  {name:<20} {seconds:6.2f} s CPU")
        for name, size in sorted(sizes.items()):
            print(f"  {name:<20} {size / 2**20:8.1f} MiB")


if __name__ == "__main__":
    main()
