"""caliali against its peers on one 300x300 one-photon movie: time, CPU, peak memory, F1.

The product's bar: on a 300x300, 2,000-frame one-photon movie on a 2-core
machine, CaImAn's CNMF-E took 431 s with 6.3 GB peak memory and minian took
751 s with 4.6 GB. caliali must be faster and leaner than both, at equal or
better accuracy, and its memory must not grow with the recording's length.

Usage (from the repository root)::

    .venv/bin/python analyses/caliali/benchmarks/vs_peers.py
        [--frames 2000 8000] [--neurons 120] [--pnr 2] [--seed 0]
        [--memory-budget 1GB] [--workdir /tmp/caliali-vs-peers]
        [--minian-venv /tmp/minian-venv] [--minian-frames 2000] [--no-minian]
        [--profile] [--baseline GIT_REF]

What it does:

1. Simulates (``caliali simulate``, one session, 300x300, PNR 2, ground
   truth) a movie of every length in ``--frames``; a simulation already in
   ``--workdir`` with the same parameters is reused.
2. Runs ``caliali run`` on each in a fresh subprocess and measures the wall
   time, the CPU time (user + sys of the whole process tree, from
   ``getrusage(RUSAGE_CHILDREN)`` around the run) and the peak resident
   memory of the whole process tree (sum of RSS over the child and all its
   descendants, polled every 0.1 s with psutil); then scores the neurons
   with ``caliali.score`` (F1 is the strict score: masks matched by IoU >= 0.3
   after the global frame offset, traces correlating >= 0.8; the lenient F1,
   footprint x trace cosine, is printed beside it) and prints the peak-RSS ratio of the
   longest to the shortest movie (should be ~1: memory is set by the chunk
   size, not by the recording's length).
3. Runs minian 2.0.2 (PyPI) side by side on the ``--minian-frames`` movie,
   with the steps and parameters of its own pipeline notebook (background
   removal, motion correction, seed initialisation and refinement, CNMF
   spatial/temporal updates twice with merges) on a dask LocalCluster of 2
   single-threaded workers, measured the same way and scored with the same
   scorer (minian's A/C converted to the result layout the scorer reads).
   minian lives in its own throwaway venv, created when missing with::

       uv venv /tmp/minian-venv --python 3.11
       uv pip install --python /tmp/minian-venv/bin/python minian==2.0.2 "xarray<2025.7" "pandas<3" psutil

   (the pins: minian needs rechunker, which needs zarr<3; newer xarray only
   works with zarr 3; pandas 3 needs the newer xarray)

   If it cannot be installed or fails, the row says why and the published
   figures are still printed. minian reads 8-bit movies (miniscope AVIs); the
   float32 simulation is converted to a uint8 TIFF (robust min-max scaling)
   before its timing starts.
4. Prints CaImAn's and minian's published figures as reference rows: CaImAn
   is not on PyPI (the ``caiman`` name there is another project).
5. With ``--baseline GIT_REF``, also runs caliali as it was at that commit
   (its ``analyses/caliali/src`` exported with ``git archive`` into
   ``--workdir`` and put first on ``PYTHONPATH``) on the same movies, each
   length right before the current code, measured the same way: a before /
   after comparison from one run, under the same load.
6. With ``--profile``, runs caliali once more on the shortest movie under
   cProfile and prints the functions with the most cumulative time.

The machine is shared with other heavy jobs: wall times are inflated by
contention, CPU times less so; compare both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
HEIGHT = WIDTH = 300
MINIAN_VERSION = "2.0.2"
# minian needs rechunker, which needs zarr<3; xarray >= 2025.7 passes zarr-3-only arguments to zarr.
# pandas 3 in turn needs xarray >= 2025.7.1 (DataFrame.to_xarray, used by minian's seed refinement).
MINIAN_PINS = ["xarray<2025.7", "pandas<3"]
PUBLISHED = [  # (name, wall s, peak GB) on 300x300x2000, 2 cores (the product's reference figures)
    ("CaImAn CNMF-E (published)", 431.0, 6.3),
    ("minian (published)", 751.0, 4.6),
]


# -- measuring a process tree -------------------------------------------------------------------


def measure(cmd: list[str], *, log: Path, env: dict[str, str] | None = None, poll: float = 0.1) -> dict[str, Any]:
    """Run ``cmd`` to completion; wall s, CPU s (user+sys of the tree), peak tree RSS (MB), exit code.

    CPU time is the difference of ``getrusage(RUSAGE_CHILDREN)`` around the run,
    which counts every descendant that was waited for (dask workers included,
    they are reaped by their nanny). Peak RSS is the maximum over time of the
    summed RSS of the child and all its live descendants; ``maxrss_single_mb``
    is the largest single process (kernel's ``ru_maxrss``).
    """
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    peak = 0
    seen_cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    total += p.memory_info().rss
                    t = p.cpu_times()
                    seen_cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
            peak = max(peak, total)
            stop.wait(poll)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        # Descendants that were never reaped (killed orphans) are missing from rusage; polled times cover them.
        "cpu_s": max(cpu, sum(seen_cpu.values())),
        "peak_rss_mb": peak / 2**20,
        "maxrss_single_mb": after.ru_maxrss / 1024.0,
        "returncode": code,
        "log": str(log),
    }


def tail(path: str | Path, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# -- data -----------------------------------------------------------------------------------------


def simulate(workdir: Path, frames: int, args: argparse.Namespace) -> Path:
    """The simulated movie with ``frames`` frames (reused when already written with the same parameters)."""
    name = f"sim_{HEIGHT}x{WIDTH}_{frames}f_{args.neurons}n_pnr{args.pnr:g}_s{args.seed}"
    out = workdir / name
    meta = out / "ground_truth" / "meta.json"
    want = {
        "frames": frames,
        "neurons": args.neurons,
        "pnr": args.pnr,
        "seed": args.seed,
        "height": HEIGHT,
        "width": WIDTH,
        "sessions": 1,
    }
    if meta.exists():
        have = json.loads(meta.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            print(f"  reusing simulation {out}")
            return out
        shutil.rmtree(out)
    print(f"  simulating {frames} frames, {args.neurons} neurons, PNR {args.pnr:g} -> {out}", flush=True)
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "caliali",
            "simulate",
            str(out),
            "--sessions",
            "1",
            "--frames",
            str(frames),
            "--neurons",
            str(args.neurons),
            "--pnr",
            str(args.pnr),
            "--seed",
            str(args.seed),
            "--height",
            str(HEIGHT),
            "--width",
            str(WIDTH),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"  simulated in {time.perf_counter() - t0:.0f} s")
    return out


def score_result(result: Path, sim: Path) -> dict[str, Any]:
    from caliali.score import score

    s = score(result, sim)
    st = s.strict
    return {
        "f1": st.f1,
        "precision": st.precision,
        "recall": st.recall,
        "n_found": st.n_found,
        "n_true": st.n_true,
        "iou_f1": s.masks.f1,
        "median_iou": s.masks.median_iou,
        "offset": [s.offset.dy, s.offset.dx],
        "lenient_f1": s.neurons.f1,
    }


# -- caliali --------------------------------------------------------------------------------------


def caliali_config(args: argparse.Namespace, sim: Path) -> dict[str, Any]:
    """The simulation's neuron radius and the demo's seed thresholds; everything else the defaults."""
    gsig = json.loads((sim / "ground_truth" / "meta.json").read_text())["gSig"]
    return {"gSig": gsig, "min_corr": 0.2, "min_pnr": 4.0, "memory_budget": args.memory_budget}


def export_baseline(ref: str, workdir: Path) -> tuple[str, Path]:
    """caliali's source as of git ``ref``, exported into ``workdir``: (short commit, folder to put on PYTHONPATH)."""
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=10", f"{ref}^{{commit}}"], capture_output=True, text=True
    )
    if commit.returncode != 0:
        raise SystemExit(f"--baseline {ref}: not a commit of {REPO} ({commit.stderr.strip()})")
    sha = commit.stdout.strip()
    dest = workdir / f"baseline-{sha}"
    if not (dest / "analyses" / "caliali" / "src" / "caliali").is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", sha, "analyses/caliali/src"], capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return sha, dest / "analyses" / "caliali" / "src"


def run_caliali(
    sim: Path, workdir: Path, args: argparse.Namespace, *, source: tuple[str, Path] | None = None
) -> dict[str, Any]:
    """``caliali run`` on ``sim``, measured; ``source`` (commit, src folder) runs that version instead."""
    frames = json.loads((sim / "ground_truth" / "meta.json").read_text())["frames"]
    name = "caliali" if source is None else f"caliali @ {source[0]}"
    tag = f"{frames}f" if source is None else f"{frames}f_{source[0]}"
    out = workdir / f"caliali_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    config = out.parent / f"caliali_{tag}_config.json"
    config.write_text(json.dumps(caliali_config(args, sim)))
    print(f"  {name} run on {frames} frames ...", flush=True)
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source[1]), env.get("PYTHONPATH")]))
    m = measure(
        [sys.executable, "-m", "caliali", "run", "--input", str(sim), "--output", str(out), "--config", str(config)],
        log=workdir / f"caliali_{tag}.log",
        env=env,
    )
    m.update(name=name, frames=frames)
    if m["returncode"] != 0:
        m["error"] = f"caliali run exited {m['returncode']}:\n{tail(m['log'])}"
        return m
    m.update(score_result(out, sim))
    summary = json.loads((out / "summary.json").read_text())
    m["stages"] = summary["run"]["stages"]  # timings live in the run section
    return m


def profile_caliali(sim: Path, workdir: Path, args: argparse.Namespace, top: int = 30) -> None:
    """Run caliali once under cProfile and print the top functions by cumulative and own time."""
    import pstats

    out = workdir / "caliali_profile"
    shutil.rmtree(out, ignore_errors=True)
    config = workdir / "caliali_profile_config.json"
    config.write_text(json.dumps(caliali_config(args, sim)))
    prof = workdir / "caliali.prof"
    print(f"\nProfiling caliali run (cProfile) on {sim.name} ...", flush=True)
    m = measure(
        [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(prof),
            "-m",
            "caliali",
            "run",
            "--input",
            str(sim),
            "--output",
            str(out),
            "--config",
            str(config),
        ],
        log=workdir / "caliali_profile.log",
    )
    print(f"  (profiled run: wall {m['wall_s']:.0f} s, CPU {m['cpu_s']:.0f} s, exit {m['returncode']})")
    if not prof.exists():
        print(tail(m["log"]))
        return
    stats = pstats.Stats(str(prof))
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)


# -- minian ---------------------------------------------------------------------------------------


def find_uv() -> str | None:
    for candidate in (shutil.which("uv"), REPO / ".tools" / "bin" / "uv"):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def ensure_minian(venv: Path) -> tuple[Path | None, str]:
    """The minian venv's python (created when missing), or None and the reason it is unavailable."""
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        f"import minian, psutil, xarray, importlib.metadata as m; "
        f"assert m.version('minian') == '{MINIAN_VERSION}', m.version('minian'); "
        f"assert tuple(map(int, xarray.__version__.split('.')[:2])) < (2025, 7); "
        f"assert int(m.version('pandas').split('.')[0]) < 3",
    ]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python, ""
    uv = find_uv()
    if uv is None:
        return None, "no `uv` found (PATH or .tools/bin/uv) to create the minian venv"
    print(f"  creating {venv} with minian {MINIAN_VERSION} (uv venv + uv pip install) ...", flush=True)
    steps = [
        [uv, "venv", str(venv), "--python", "3.11"],
        [uv, "pip", "install", "--python", str(python), f"minian=={MINIAN_VERSION}", *MINIAN_PINS, "psutil"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            return None, f"`{' '.join(step)}` failed: {done.stderr.strip()[-500:]}"
    done = subprocess.run(check, capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"minian {MINIAN_VERSION} installed but does not import: {done.stderr.strip()[-500:]}"
    return python, ""


def movie_to_uint8(sim: Path, dest: Path) -> Path:
    """The simulation's float32 movie as an 8-bit TIFF (one page per frame), as miniscopes record."""
    import numpy as np
    import tifffile

    dest.mkdir(parents=True, exist_ok=True)
    path = dest / "msCam1.tif"
    if path.exists():
        return path
    (movie,) = sorted(sim.glob("*.tif"))
    with tifffile.TiffFile(movie) as tif:
        pages = tif.pages
        n = len(pages)
        sample = np.stack([pages[i].asarray() for i in range(0, n, max(1, n // 100))])
        lo, hi = np.percentile(sample, [0.01, 99.99])
        scale = 255.0 / max(hi - lo, 1e-12)
        with tifffile.TiffWriter(path) as out:
            for i in range(n):
                frame = np.clip((pages[i].asarray() - lo) * scale, 0, 255).round().astype(np.uint8)
                out.write(frame, contiguous=True)
    return path


def run_minian(sim: Path, workdir: Path, python: Path, args: argparse.Namespace) -> dict[str, Any]:
    frames = json.loads((sim / "ground_truth" / "meta.json").read_text())["frames"]
    movie_dir = workdir / f"minian_input_{frames}f"
    print(f"  converting the movie to uint8 for minian -> {movie_dir}", flush=True)
    movie_to_uint8(sim, movie_dir)
    out = workdir / f"minian_{frames}f"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        MINIAN_INTERMEDIATE=str(out / "intermediate"),
        PYTHONWARNINGS="ignore",
    )
    env.pop("PYTHONPATH", None)
    print(
        f"  minian {MINIAN_VERSION} on {frames} frames ({args.minian_workers} workers x {args.minian_mem}) ...",
        flush=True,
    )
    m = measure(
        [
            str(python),
            str(Path(__file__).resolve()),
            "--minian-worker",
            str(movie_dir),
            str(out),
            "--minian-workers",
            str(args.minian_workers),
            "--minian-mem",
            args.minian_mem,
        ],
        log=workdir / f"minian_{frames}f.log",
        env=env,
    )
    m.update(name=f"minian {MINIAN_VERSION}", frames=frames)
    if m["returncode"] != 0:
        m["error"] = f"minian exited {m['returncode']}:\n{tail(m['log'])}"
        return m
    m.update(score_result(out, sim))
    return m


def minian_worker(movie_dir: str, out: str, n_workers: int, memory_limit: str) -> None:
    """minian's pipeline notebook, non-interactive, with its default parameters (runs in minian's venv).

    Writes ``<out>/arrays/{A.npz, C.npy, S.npy, meta.json}`` in the layout
    ``caliali score`` reads, and prints each step's time.
    """
    import dask
    import numpy as np
    import xarray as xr
    from dask.distributed import Client, LocalCluster
    from minian.cnmf import compute_trace, get_noise_fft, unit_merge, update_background, update_spatial, update_temporal
    from minian.initialization import initA, initC, ks_refine, pnr_refine, seeds_init, seeds_merge
    from minian.io import load_videos
    from minian.motion_correction import apply_transform, estimate_motion
    from minian.preprocessing import denoise, remove_background
    from minian.utilities import get_optimal_chk, save_minian
    from scipy import sparse

    intpath = os.environ["MINIAN_INTERMEDIATE"]
    t_all = time.perf_counter()
    clock = [time.perf_counter()]

    def step(name: str) -> None:
        now = time.perf_counter()
        print(f"minian step {name}: {now - clock[0]:.1f} s", flush=True)
        clock[0] = now

    dask.config.set({"distributed.worker.memory.terminate": False})
    cluster = LocalCluster(
        n_workers=n_workers,
        memory_limit=memory_limit,
        resources={"MEM": 1},
        threads_per_worker=1,
        dashboard_address=None,
    )
    # The notebook also adds minian's TaskAnnotation scheduler plugin; with the current dask it raises on
    # every graph (it expects string task keys) and annotates nothing, so it is left out: same behaviour.
    client = Client(cluster)
    rechunk = "1GB"
    try:
        varr = load_videos(
            movie_dir,
            pattern=r"msCam[0-9]+\.tif$",
            dtype=np.uint8,
            downsample=dict(frame=1, height=1, width=1),
            downsample_strategy="subset",
        )
        chk, _ = get_optimal_chk(varr, dtype=float)
        varr = save_minian(
            varr.chunk({"frame": chk["frame"], "height": -1, "width": -1}).rename("varr"), intpath, overwrite=True
        )
        step("load")
        varr_ref = varr - varr.min("frame").compute()
        varr_ref = denoise(varr_ref, method="median", ksize=7)
        varr_ref = remove_background(varr_ref, method="tophat", wnd=15)
        varr_ref = save_minian(varr_ref.rename("varr_ref"), dpath=intpath, overwrite=True)
        step("preprocess")
        motion = estimate_motion(varr_ref, dim="frame")
        motion = save_minian(motion.rename("motion").chunk({"frame": chk["frame"]}), intpath, overwrite=True)
        y = apply_transform(varr_ref, motion, fill=0)
        y_fm = save_minian(y.astype(np.float32).rename("Y_fm_chk"), intpath, overwrite=True)
        y_hw = save_minian(
            y_fm.rename("Y_hw_chk"),
            intpath,
            overwrite=True,
            mem_limit=rechunk,
            chunks={"frame": -1, "height": chk["height"], "width": chk["width"]},
        )
        step("motion correction")
        max_proj = save_minian(y_fm.max("frame").rename("max_proj"), intpath, overwrite=True).compute()
        seeds = seeds_init(y_fm, wnd_size=1000, method="rolling", stp_size=500, max_wnd=15, diff_thres=3)
        seeds, _, _ = pnr_refine(y_hw, seeds, noise_freq=0.06, thres=1)
        seeds = ks_refine(y_hw, seeds, sig=0.05)
        seeds = seeds[seeds["mask_ks"] & seeds["mask_pnr"]].reset_index(drop=True)
        seeds = seeds_merge(y_hw, max_proj, seeds, thres_dist=10, thres_corr=0.8, noise_freq=0.06, chunk=600)
        a = initA(y_hw, seeds[seeds["mask_mrg"]], thres_corr=0.8, wnd=10, noise_freq=0.06, chunk=600)
        a = save_minian(a.rename("A_init"), intpath, overwrite=True)
        c = initC(y_fm, a)
        c = save_minian(
            c.rename("C_init"), intpath, overwrite=True, mem_limit=rechunk, chunks={"unit_id": 1, "frame": -1}
        )
        a, c = unit_merge(a, c, thres_corr=0.8, chunk=600)
        a = save_minian(a.rename("A"), intpath, overwrite=True)
        c = save_minian(c.rename("C"), intpath, overwrite=True)
        c_chk = save_minian(
            c.rename("C_chk"), intpath, overwrite=True, mem_limit=rechunk, chunks={"unit_id": -1, "frame": chk["frame"]}
        )
        b, f = update_background(y_fm, a, c_chk)
        f = save_minian(f.rename("f"), intpath, overwrite=True)
        b = save_minian(b.rename("b"), intpath, overwrite=True)
        sn = save_minian(get_noise_fft(y_hw, noise_range=(0.06, 0.5)).rename("sn_spatial"), intpath, overwrite=True)
        step(f"initialisation ({a.sizes['unit_id']} units)")
        s = None
        for round_, jac in ((1, 0.2), (2, 0.4)):
            a_new, mask, norm = update_spatial(y_hw, a, c, sn, dl_wnd=10, sparse_penal=0.01, size_thres=(25, None))
            c_new = save_minian((c.sel(unit_id=mask) * norm).rename("C_new"), intpath, overwrite=True)
            c_chk_new = save_minian((c_chk.sel(unit_id=mask) * norm).rename("C_chk_new"), intpath, overwrite=True)
            b_new, f_new = update_background(y_fm, a_new, c_chk_new)
            a = save_minian(
                a_new.rename("A"),
                intpath,
                overwrite=True,
                mem_limit=rechunk,
                chunks={"unit_id": 1, "height": -1, "width": -1},
            )
            b = save_minian(b_new.rename("b"), intpath, overwrite=True)
            f = save_minian(f_new.chunk({"frame": chk["frame"]}).rename("f"), intpath, overwrite=True)
            c = save_minian(c_new.rename("C"), intpath, overwrite=True)
            c_chk = save_minian(c_chk_new.rename("C_chk"), intpath, overwrite=True)
            step(f"spatial update {round_}")
            yra = save_minian(
                compute_trace(y_fm, a, b, c_chk, f).rename("YrA"),
                intpath,
                overwrite=True,
                mem_limit=rechunk,
                chunks={"unit_id": 1, "frame": -1},
            )
            c_new, s_new, b0_new, c0_new, _, mask = update_temporal(
                a, c, YrA=yra, noise_freq=0.06, sparse_penal=1, p=1, add_lag=20, jac_thres=jac
            )
            c = save_minian(c_new.rename("C").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            c_chk = save_minian(
                c.rename("C_chk"),
                intpath,
                overwrite=True,
                mem_limit=rechunk,
                chunks={"unit_id": -1, "frame": chk["frame"]},
            )
            s = save_minian(s_new.rename("S").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            b0 = save_minian(b0_new.rename("b0").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            c0 = save_minian(c0_new.rename("c0").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            a = a.sel(unit_id=c.coords["unit_id"].values)
            step(f"temporal update {round_} ({a.sizes['unit_id']} units)")
            if round_ == 1:
                a_mrg, c_mrg, [sig] = unit_merge(a, c, [c + b0 + c0], thres_corr=0.8, chunk=600)
                a = save_minian(a_mrg.rename("A_mrg"), intpath, overwrite=True)
                c = save_minian(c_mrg.rename("C_mrg"), intpath, overwrite=True)
                c_chk = save_minian(
                    c.rename("C_mrg_chk"),
                    intpath,
                    overwrite=True,
                    mem_limit=rechunk,
                    chunks={"unit_id": -1, "frame": chk["frame"]},
                )
                step(f"merge ({a.sizes['unit_id']} units)")
        a_np = np.asarray(a.transpose("unit_id", "height", "width").compute().fillna(0).values, dtype=np.float32)
        c_np = np.asarray(c.transpose("unit_id", "frame").compute().values, dtype=np.float32)
        s_np = np.asarray(xr.DataArray(s).transpose("unit_id", "frame").compute().values, dtype=np.float32)
    finally:
        client.close()
        cluster.close()
    arrays = Path(out) / "arrays"
    arrays.mkdir(parents=True, exist_ok=True)
    k, h, w = a_np.shape
    sparse.save_npz(arrays / "A.npz", sparse.csc_matrix(a_np.reshape(k, h * w).T))
    np.save(arrays / "C.npy", c_np)
    np.save(arrays / "S.npy", s_np)
    (arrays / "meta.json").write_text(json.dumps({"dims": [h, w], "spatial_ds": 1, "source": "minian"}))
    shutil.rmtree(intpath, ignore_errors=True)
    print(f"minian done: {k} units, {time.perf_counter() - t_all:.1f} s", flush=True)


# -- report ---------------------------------------------------------------------------------------


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'run':34s} {'frames':>6s} {'wall s':>8s} {'CPU s':>8s} {'peak RSS':>9s} {'F1':>5s} {'P':>5s} "
        f"{'R':>5s} {'found/true':>10s} {'lenient F1':>10s} {'offset':>8s}"
    )
    for r in rows:
        name = f"{r['name']}"
        if "error" in r or r.get("skipped"):
            why = (r.get("error") or r.get("skipped")).strip().splitlines()
            print(f"{name:34s} {r.get('frames', ''):>6} not run: {why[0]} {why[-1] if len(why) > 1 else ''}")
            continue
        rss = f"{r['peak_rss_mb'] / 1024:.2f} GB"
        if r.get("reference"):
            print(f"{name:34s} {r['frames']:>6d} {r['wall_s']:>8.0f} {'-':>8s} {rss:>9s} {'-':>5s}")
            continue
        print(
            f"{name:34s} {r['frames']:>6d} {r['wall_s']:>8.0f} {r['cpu_s']:>8.0f} {rss:>9s} {r['f1']:>5.2f} "
            f"{r['precision']:>5.2f} {r['recall']:>5.2f} {r['n_found']:>4d}/{r['n_true']:<5d} "
            f"{r['lenient_f1']:>10.2f} {str(tuple(r['offset'])):>8s}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--frames",
        type=int,
        nargs="*",
        default=[2000, 8000],
        help="Movie lengths to run caliali on (memory vs length); none to run only minian.",
    )
    parser.add_argument("--neurons", type=int, default=120)
    parser.add_argument("--pnr", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-budget", default="1GB", help="caliali's memory_budget.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/caliali-vs-peers"))
    parser.add_argument("--minian-venv", type=Path, default=Path("/tmp/minian-venv"))
    parser.add_argument("--minian-frames", type=int, default=2000, help="Movie length minian runs on.")
    parser.add_argument("--minian-workers", type=int, default=2, help="dask workers (1 thread each).")
    parser.add_argument("--minian-mem", default="4GB", help="dask memory limit per worker.")
    parser.add_argument("--no-minian", action="store_true", help="Skip the minian run (reference rows only).")
    parser.add_argument("--profile", action="store_true", help="Also profile caliali with cProfile.")
    parser.add_argument(
        "--baseline", metavar="GIT_REF", help="Also run caliali as of this commit, side by side (before / after)."
    )
    parser.add_argument("--minian-worker", nargs=2, metavar=("MOVIE_DIR", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.minian_worker:
        minian_worker(*args.minian_worker, n_workers=args.minian_workers, memory_limit=args.minian_mem)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(
        f"caliali vs peers: {HEIGHT}x{WIDTH}, frames {args.frames}, {args.neurons} neurons, PNR {args.pnr:g}, "
        f"memory_budget {args.memory_budget}; {os.cpu_count()} cores, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (shared machine: wall times are noisy)"
    )
    sims = {frames: simulate(args.workdir, frames, args) for frames in sorted(set(args.frames))}
    baseline = export_baseline(args.baseline, args.workdir) if args.baseline else None
    rows: list[dict[str, Any]] = []
    runs = [(sim, source) for sim in sims.values() for source in ([baseline] if baseline else []) + [None]]
    for sim, source in runs:
        row = run_caliali(sim, args.workdir, args, source=source)
        rows.append(row)
        print(
            f"    -> wall {row['wall_s']:.0f} s, CPU {row['cpu_s']:.0f} s, peak RSS {row['peak_rss_mb']:.0f} MB"
            + (f", F1 {row['f1']:.2f}" if "f1" in row else f"\n{row.get('error', '')}"),
            flush=True,
        )
        for stage, info in row.get("stages", {}).items():
            print(f"       {stage:12s} {info['seconds']:>8.1f} s   peak RSS so far {info['peak_rss_mb']:>7.0f} MB")

    if args.no_minian:
        rows.append({"name": f"minian {MINIAN_VERSION}", "frames": args.minian_frames, "skipped": "--no-minian"})
    else:
        python, why = ensure_minian(args.minian_venv)
        if python is None:
            print(f"  minian skipped: {why}")
            rows.append({"name": f"minian {MINIAN_VERSION}", "frames": args.minian_frames, "skipped": why})
        else:
            sim = sims.get(args.minian_frames) or simulate(args.workdir, args.minian_frames, args)
            row = run_minian(sim, args.workdir, python, args)
            rows.append(row)
            if "error" in row:
                print(f"  minian failed: {row['error']}")
            else:
                print(
                    f"    -> wall {row['wall_s']:.0f} s, CPU {row['cpu_s']:.0f} s, peak RSS "
                    f"{row['peak_rss_mb']:.0f} MB, F1 {row['f1']:.2f}"
                )
    for name, wall, gb in PUBLISHED:
        rows.append({"name": name, "frames": 2000, "wall_s": wall, "peak_rss_mb": gb * 1024, "reference": True})

    print_table(rows)
    ok = [r for r in rows if r["name"] == "caliali" and "error" not in r]
    if len(ok) >= 2:
        short, long = ok[0], ok[-1]
        print(
            f"\ncaliali peak RSS {long['frames']} / {short['frames']} frames: "
            f"{long['peak_rss_mb']:.0f} / {short['peak_rss_mb']:.0f} MB = "
            f"{long['peak_rss_mb'] / short['peak_rss_mb']:.2f}x for {long['frames'] / short['frames']:.0f}x "
            f"the frames (target ~1.0)"
        )
    if baseline is not None:
        for before in (r for r in rows if r["name"] == f"caliali @ {baseline[0]}" and "error" not in r):
            after = next((r for r in ok if r["frames"] == before["frames"]), None)
            if after is None:
                continue
            print(
                f"caliali {before['frames']} frames, {baseline[0]} -> now: wall {before['wall_s']:.0f} -> "
                f"{after['wall_s']:.0f} s, CPU {before['cpu_s']:.0f} -> {after['cpu_s']:.0f} s, peak RSS "
                f"{before['peak_rss_mb']:.0f} -> {after['peak_rss_mb']:.0f} MB, "
                f"F1 {before.get('f1', float('nan')):.3f} -> {after.get('f1', float('nan')):.3f}"
            )
    tag = "_".join(str(f) for f in sorted(set(args.frames))) or "none"
    figures = args.workdir / f"vs_peers_{tag}{'' if args.no_minian else '_minian'}.json"
    figures.write_text(json.dumps(rows, indent=2, default=str))
    print(f"figures written to {figures}")
    if args.profile and sims:
        profile_caliali(sims[min(sims)], args.workdir, args)


if __name__ == "__main__":
    main()
