"""Peak memory and throughput of streaming a video through a reader into the zarr writer.

Simulates a 300 x 300 video of 3,000 and of 30,000 frames, then, each in a
fresh subprocess (so peak RSS is the stage's own):

- ``plain``: a plain sequential read of the file with the format's own
  library (tifffile page by page / OpenCV ``read`` / isx ``get_frame_data``),
  nothing else: the floor;
- ``reader``: ``caliali.io.open_video(...).iter_chunks(batch_frames)``;
- ``stream``: the shared chunk loop ``caliali.chunking.run_chunks`` from the
  reader into a resumable float32 zarr ``FrameStore`` (the real intermediate path);
- ``copy`` (TIFF only): the plain read plus writing the same frames as raw
  float32 bytes with ``ndarray.tofile``: what the disk allows any writer.

``--format isxd`` converts the simulated TIFF to an Inscopix movie with isx
(the ``caliali[isxd]`` extra) before measuring.

Prints peak RSS (MiB) and frames per second for each, the RSS growth from
3k to 30k frames (target < 10%) and stream fps as a fraction of the plain
read (target >= 70%). Figures are noisy on a shared machine.

Usage::

    .venv/bin/python analyses/caliali/benchmarks/io_memory.py [--format tif|avi|isxd]
        [--frames 3000 30000] [--memory-budget 256MB] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _child(mode: str, video: Path, out: Path, batch_frames: int) -> dict[str, float]:
    """Run one measurement in this (fresh) process; return frames, seconds, peak RSS."""
    start = time.perf_counter()
    frames = 0
    if mode == "plain" and video.suffix == ".tif":
        import tifffile

        with tifffile.TiffFile(video) as tif:
            for page in tif.pages:
                page.asarray()
                frames += 1
    elif mode == "plain" and video.suffix == ".isxd":
        import isx

        movie = isx.Movie.read(str(video))
        for index in range(movie.timing.num_samples):
            movie.get_frame_data(index)
            frames += 1
    elif mode == "plain":
        import cv2

        cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_CONVERT_RGB, 0])
        try:  # a capture is released, not closed: no context manager of its own
            while cap.read()[0]:
                frames += 1
        finally:
            cap.release()
    elif mode == "copy":
        # The disk's floor for any writer: read with the plain library, write raw float32 bytes.
        import tifffile

        out.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffFile(video) as tif, open(out / "frames.raw", "wb") as sink:
            for page in tif.pages:
                page.asarray().astype("float32").tofile(sink)
                frames += 1
    elif mode == "reader":
        from caliali.io import open_video

        with open_video(video) as reader:
            for chunk in reader.iter_chunks(batch_frames):
                frames += len(chunk)
    else:
        from caliali.chunking import run_chunks

        store = run_chunks(video, lambda chunk: chunk.data, batch_frames=batch_frames, out=out)
        frames = store.n_frames
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "peak_rss_mib": _peak_rss_mib()}


def _peak_rss_mib() -> float:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would include the parent's before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure(mode: str, video: Path, out: Path, batch_frames: int) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    run = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(video), str(out), str(batch_frames)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def _simulate(workdir: Path, frames: int, fmt: str) -> Path:
    out = workdir / f"sim_{frames}"
    video = out / f"ses01.{fmt}"
    if not video.exists():
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
                "100",
                "--height",
                "300",
                "--width",
                "300",
                "--seed",
                "1",
                "--format",
                fmt,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        print(
            f"  simulated {frames} frames of 300x300 in {time.perf_counter() - t0:.0f} s -> {video} "
            f"({video.stat().st_size / 2**30:.2f} GiB)",
            flush=True,
        )
    return video


def _to_isxd(tif: Path) -> Path:
    """The same frames as an Inscopix float32 movie, written by isx's own library.

    ``isx.Movie.set_frame_data`` copies each frame through a Python argument
    list (about 100 times slower than the library call it makes), so the frames
    go to that same call with a pointer to the numpy buffer.
    """

    import isx
    import numpy as np
    import tifffile

    out = tif.with_suffix(".isxd")
    if out.exists():
        return out
    t0 = time.perf_counter()
    with tifffile.TiffFile(tif) as handle:
        pages = handle.pages
        shape = pages[0].shape
        timing = isx.Timing(num_samples=len(pages), period=isx.Duration.from_msecs(100))
        movie = isx.Movie.write(str(out), timing, isx.Spacing(num_pixels=shape), np.float32)
        for index, page in enumerate(pages):
            frame = np.ascontiguousarray(page.asarray(), dtype=np.float32)
            isx._internal.c_api.isx_movie_write_frame_f32(
                movie._ptr, index, frame.ctypes.data_as(isx._internal.FloatPtr)
            )
        movie.flush()
        del movie
    print(f"  wrote {out} with isx in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", choices=["tif", "avi", "isxd"], default="tif")
    parser.add_argument("--frames", type=int, nargs="+", default=[3000, 30000])
    parser.add_argument("--memory-budget", default="256MB")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the simulated videos")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "VIDEO", "OUT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, video, out, batch = args.child
        print(json.dumps(_child(mode, Path(video), Path(out), int(batch))))
        return

    from caliali.chunking import batch_frames_for

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="caliali-io-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    batch = batch_frames_for(args.memory_budget, (300, 300), copies=4)
    print(f"caliali io_memory: 300x300 {args.format}, memory_budget {args.memory_budget} -> batch_frames {batch}")
    rows = {}
    try:
        for frames in args.frames:
            video = _simulate(workdir, frames, "tif" if args.format == "isxd" else args.format)
            if args.format == "isxd":
                video = _to_isxd(video)
            # plain first: it also warms the page cache equally for the two that follow
            modes = ("plain", "reader", "stream") + (("copy",) if args.format == "tif" else ())
            rows[frames] = {mode: _measure(mode, video, workdir / f"out_{frames}.zarr", batch) for mode in modes}
            shutil.rmtree(workdir / f"out_{frames}.zarr", ignore_errors=True)
            if not args.keep:
                shutil.rmtree(video.parent)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'frames':>7} {'mode':<8} {'peak RSS MiB':>13} {'fps':>9} {'vs plain':>9}")
    for frames, modes in rows.items():
        for mode, m in modes.items():
            print(
                f"{frames:>7} {mode:<8} {m['peak_rss_mib']:>13.0f} {m['fps']:>9.0f} "
                f"{m['fps'] / modes['plain']['fps']:>8.0%}"
            )
    if len(rows) >= 2:
        small, large = min(rows), max(rows)
        for mode in ("reader", "stream"):
            growth = rows[large][mode]["peak_rss_mib"] / rows[small][mode]["peak_rss_mib"] - 1
            print(f"peak RSS growth {small} -> {large} frames ({mode}): {growth:+.1%} (target < +10%)")
    for frames, modes in rows.items():
        line = (
            f"{frames} frames: stream at {modes['stream']['fps'] / modes['plain']['fps']:.0%} of the plain read "
            f"(target >= 70%); reader alone {modes['reader']['fps'] / modes['plain']['fps']:.0%}"
        )
        if "copy" in modes:
            line += f"; stream at {modes['stream']['fps'] / modes['copy']['fps']:.0%} of a raw read+write copy"
        print(line)


if __name__ == "__main__":
    main()
