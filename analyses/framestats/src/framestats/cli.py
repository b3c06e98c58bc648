"""Command line of the framestats analysis: reads a stack, writes stats.csv per stack.

Besides statistics, the config can make the run misbehave on purpose so the platform's
tests exercise every path for real: ``fail``, ``hang``, ``memory_mb`` (allocate and touch
that much), ``write_mb`` (write a file that large), ``log_lines``, ``cpu_seconds`` (burn
CPU), ``sleep_per_frame``, ``kill_on_attempts`` (SIGKILL itself on those attempts,
read from ``NCAAS_ATTEMPT``), ``leave_fifo`` / ``leave_symlink`` (leave a FIFO
``outputs/pipe.fifo``, or a link ``outputs/link`` to the given path, among its outputs)
and ``leave_sparse_gib`` (leave ``outputs/sparse.bin``, that many GiB of zeros taking no
disk space). ``record_hashes`` writes the content hashes the platform gave the task
(``NCAAS_*_SHA256``) to ``outputs/hashes.json``. ``fail_reason`` exits with code 3 after
telling the platform that reason, the way any analysis may: written to the file
``NCAAS_ERROR_FILE`` names, or (``fail_reason_line``) printed as an ``NCAAS_ERROR`` line;
``fail_reason_link`` makes that file a link to the given path instead (which the platform must
not follow).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

from .stats import STATS, frame_stats, iter_stacks

DEFAULTS = {
    "stats": ["mean", "std", "min", "max"],
    "batch_frames": 64,
    "sleep_per_frame": 0.0,
    "cpu_seconds": 0.0,
    "fail": False,
    "hang": False,
    "memory_mb": 0,
    "write_mb": 0,
    "log_lines": 0,
    "kill_on_attempts": [],
    "leave_fifo": False,
    "leave_symlink": None,
    "leave_sparse_gib": 0,
    "record_hashes": False,
    "fail_reason": None,
    "fail_reason_line": False,
    "fail_reason_link": None,
    "keep_frames": False,
}


def progress(fraction: float, message: str) -> None:
    print(f"NCAAS_PROGRESS {fraction:.3f} {message}", flush=True)


def tell_failure(reason: str, *, line: bool) -> None:
    """Say why the run fails, through the platform's contract (README: "Writing an analysis")."""
    if line:
        print(f"NCAAS_ERROR {reason}", file=sys.stderr, flush=True)
    else:
        Path(os.environ["NCAAS_ERROR_FILE"]).write_text(reason)


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        for i in range(10_000):
            x += i * i


def misbehave(config: dict, out: Path) -> None:
    attempt = int(os.environ.get("NCAAS_ATTEMPT", "1"))
    if attempt in config["kill_on_attempts"]:
        print(f"killing myself with SIGKILL on attempt {attempt}, as configured", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    for i in range(config["log_lines"]):
        print(f"log line {i}: " + "x" * 100)
    if config["memory_mb"]:
        block = np.ones(int(config["memory_mb"]) * 2**20 // 8)  # touches every page
        print(f"allocated {block.nbytes / 2**20:.0f} MiB", flush=True)
    if config["write_mb"]:
        chunk = bytes(range(256)) * 4096
        with open(out / "bulk.bin", "wb") as fh:
            for _ in range(int(config["write_mb"] * 2**20) // len(chunk)):
                fh.write(chunk)
    if config["leave_fifo"]:  # nobody ever writes into it: whoever opens it to read waits forever
        os.mkfifo(out / "pipe.fifo")
    if config["leave_symlink"]:
        os.symlink(config["leave_symlink"], out / "link")
    if config["leave_sparse_gib"]:  # a hole: costs no disk, yet reads as that many zeros
        with open(out / "sparse.bin", "wb") as fh:
            fh.truncate(int(config["leave_sparse_gib"] * 2**30))
    if config["cpu_seconds"]:
        burn(float(config["cpu_seconds"]))
    if config["hang"]:
        print("hanging as configured (hang: true)", flush=True)
        while True:
            time.sleep(3600)
    if config["fail_reason_link"] is not None:
        os.symlink(config["fail_reason_link"], os.environ["NCAAS_ERROR_FILE"])
        sys.exit(3)
    if config["fail_reason"] is not None:
        tell_failure(config["fail_reason"], line=config["fail_reason_line"])
        sys.exit(3)
    if config["fail"]:
        print("failing as configured (fail: true)", file=sys.stderr, flush=True)
        sys.exit(3)


def run(input_path: Path, config: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    misbehave(config, out)
    if config["record_hashes"]:
        hashes = {k: v for k, v in os.environ.items() if k.startswith("NCAAS_") and k.endswith("_SHA256")}
        (out / "hashes.json").write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    stacks = list(iter_stacks(input_path))
    total = sum(s.shape[0] for _, s in stacks)
    done = 0
    summary = {}
    for name, stack in stacks:
        rows = []
        for block in frame_stats(stack, stats=config["stats"], batch_frames=config["batch_frames"]):
            rows.append(block)
            done += block.shape[0]
            if config["sleep_per_frame"]:
                time.sleep(config["sleep_per_frame"] * block.shape[0])
            progress(done / total, f"{done}/{total} frames")
        table = np.concatenate(rows)
        stem = Path(name).stem
        header = "frame," + ",".join(config["stats"])
        lines = [header] + [f"{i}," + ",".join(repr(float(v)) for v in row) for i, row in enumerate(table)]
        (out / f"{stem}.stats.csv").write_text("\n".join(lines) + "\n")
        if config["keep_frames"]:  # the stack itself, for a next step of a chain to read
            (out / "frames").mkdir(exist_ok=True)
            np.save(out / "frames" / f"{stem}.npy", stack)
        summary[name] = {
            "frames": int(stack.shape[0]),
            "height": int(stack.shape[1]),
            "width": int(stack.shape[2]),
            "dtype": str(stack.dtype),
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="framestats", description="Per-frame statistics of image stacks.")
    parser.add_argument("input", type=Path, help="a .npy stack (t, h, w) or a folder of them")
    parser.add_argument("--config", type=Path, help="JSON or YAML config")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args(argv)
    config = dict(DEFAULTS)
    if args.config is not None:
        config.update(json.loads(args.config.read_text()))
    unknown = [s for s in config["stats"] if s not in STATS]
    if unknown:
        print(f"framestats: unknown statistic(s) {unknown}; allowed: {sorted(STATS)}", file=sys.stderr)
        return 2
    progress(0.0, "starting")
    try:
        run(args.input, config, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"framestats: {exc}", file=sys.stderr)
        return 2
    progress(1.0, "done")
    return 0
