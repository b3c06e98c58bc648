"""Where the time of `make demo` goes: caliali's stages, and ncaas' share of the total.

Runs the demo's flow (a simulated multi-session experiment, sessions cut into
``_b<k>`` sub-files, submitted with ``ncaas submit caliali ... --wait``, embedded,
sandboxed) at a configurable size, then prints

1. the environment: a cold build from the lock (``--cold``: into a fresh cache)
   and a warm check (verify by hash), each timed on its own;
2. per stage of the analysis: wall seconds and peak RSS so far (the stage table
   of the run's ``summary.json``), next to the task's CPU seconds and peak memory
   as the platform measured them (its status json);
3. submit-to-end wall time split into the analysis' own stage time and the
   platform's share: before the task starts (CLI start, copying the dataset
   into storage, validation), inside the task around the stages (environment
   verification, sandbox, interpreter start-up and exit), and after the task
   (output hashing, certificate, end.json);
4. with ``--bare``, the same ``caliali run`` command in the same environment
   without the platform (no storage copy, no sandbox), side by side.

Usage::

    .venv/bin/python benchmarks/demo_profile.py                       # the demo's size: 4 x 1000 frames
    .venv/bin/python benchmarks/demo_profile.py --sessions 2 --frames 400 --neurons 40 --cold --bare

The machine may be shared: wall times move with its load (printed with the results).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
GROUP = "lab"
CONFIG = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "1GB"}  # the demo's config


def _run(args: list[Any], **kw: Any) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = subprocess.run([str(a) for a in args], text=True, **kw)
    seconds = time.perf_counter() - t0
    if done.returncode:
        tail = (done.stdout or "")[-3000:] + (done.stderr or "")[-3000:]
        raise SystemExit(f"failed ({done.returncode}): {' '.join(str(a) for a in args)}\n{tail}")
    return seconds, done


def _simulate(work: Path, sessions: int, frames: int, neurons: int) -> tuple[Path, Path, float]:
    experiment = work / "experiment"
    seconds, _ = _run(
        [
            BIN / "caliali",
            "simulate",
            experiment,
            "--sessions",
            sessions,
            "--frames",
            frames,
            "--neurons",
            neurons,
            "--max-frames-per-file",
            (frames * 3) // 5,
            "--seed",
            7,
        ],
        capture_output=True,
    )
    truth = work / "ground_truth"
    shutil.move(experiment / "ground_truth", truth)
    return experiment, truth, seconds


def _environment(cold: bool, work: Path) -> dict[str, Any]:
    """Build (cold, into a fresh cache) and/or verify caliali's environment, timed."""
    from ncaas.blueprint import BlueprintRegistry
    from ncaas.isolation import environments

    if cold:
        os.environ["NCAAS_ENVS"] = str(work / "envs")  # inherited by the ncaas commands below
    spec = environments.spec_for_blueprint(BlueprintRegistry.discover().get("caliali"))
    t0 = time.perf_counter()
    env, built = environments.ensure(spec)
    info: dict[str, Any] = {
        "cache": str(environments.envs_dir()),
        "built": built,
        "ensure_s": time.perf_counter() - t0,
        "env": env,
        "packages": environments.pinned_packages(spec.lock_file),
    }
    check = environments.verify(env)
    if not check.ok:
        raise SystemExit(f"the caliali environment fails verification: {check.summary()}")
    info["verify_s"], info["files"] = check.seconds, check.files
    return info


def _submit(experiment: Path, config: Path, root: Path, log: Path) -> tuple[float, float, Path]:
    """`ncaas submit caliali ... --wait`: wall seconds, epoch at the submit, the job's results folder."""
    started = time.time()
    with open(log, "w") as out:
        seconds, _ = _run(
            [
                BIN / "ncaas",
                "submit",
                "caliali",
                experiment,
                "--config",
                config,
                "--group",
                GROUP,
                "--root",
                root,
                "--wait",
                "--name",
                f"profile-{int(started)}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "COLUMNS": "120"},
        )
    [end] = (root / GROUP / "results").glob("*/end.json")
    return seconds, started, end.parent


def _bare(env: Any, experiment: Path, config: Path, out: Path) -> float:
    seconds, _ = _run(
        [env.python, "-m", "caliali", "run", "--input", experiment, "--config", config, "--output", out],
        capture_output=True,
    )
    return seconds


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def report(
    *,
    sim_s: float,
    env: dict[str, Any],
    submit_s: float,
    submitted: float,
    results: Path,
    bare_s: float | None,
    bare_out: Path,
    score: dict[str, Any] | None,
    args: argparse.Namespace,
) -> str:
    dataset = "experiment"
    summary = _read(results / "outputs" / dataset / "summary.json")
    status = _read(results / "status" / f"{dataset}.json")
    cert = _read(results / "certificate.json")
    stages = summary["run"]["stages"]
    analysis_s = sum(s["seconds"] for s in stages.values())
    task_s = (status["end_ms"] - status["start_ms"]) / 1000
    before_s = status["start_ms"] / 1000 - submitted
    after_s = cert["job"]["ended_ms"] / 1000 - status["end_ms"] / 1000
    platform_s = submit_s - analysis_s
    n_out = len(cert["tasks"][0]["outputs"])
    out = [
        f"demo profile: {args.sessions} sessions x {args.frames} frames, {args.neurons} neurons "
        f"({summary['neurons']} found), {len(os.sched_getaffinity(0))} cores, "
        f"load average {os.getloadavg()[0]:.1f} at the end",
        "",
    ]
    out.append(f"simulation (not part of the job): {sim_s:.1f} s")
    verb = "built (cold; packages from uv's cache)" if env["built"] else "already built (warm)"
    out.append(
        f"environment ({env['packages']} pinned packages, {env['files']} files, cache {env['cache']}): "
        f"{verb} in {env['ensure_s']:.1f} s; a full verify by hash (each job does one) "
        f"{env['verify_s']:.1f} s"
    )
    out.append("")
    rows = [
        (name, f"{s['seconds']:.1f}", f"{100 * s['seconds'] / analysis_s:.0f}%", f"{s['peak_rss_mb']:.0f}")
        for name, s in stages.items()
    ]
    rows.append(("analysis total (stages)", f"{analysis_s:.1f}", "100%", f"{summary['run']['peak_rss_mb']:.0f}"))
    out.append(_table(rows, ("stage", "wall s", "share", "peak RSS MB so far")))
    out.append(
        f"task as measured by the platform: wall {task_s:.1f} s, CPU {status['cpu_seconds']:.1f} s, "
        f"peak memory {status['peak_memory_bytes'] / 2**20:.0f} MiB"
    )
    out.append("")
    rows = [
        ("submit -> end (ncaas submit --wait)", f"{submit_s:.1f}", "100%"),
        ("  analysis stages", f"{analysis_s:.1f}", f"{100 * analysis_s / submit_s:.1f}%"),
        ("  platform share", f"{platform_s:.1f}", f"{100 * platform_s / submit_s:.1f}%"),
        ("    before the task: CLI, copy-in, validation", f"{before_s:.1f}", f"{100 * before_s / submit_s:.1f}%"),
        (
            "    in the task, around the stages: env verify, sandbox, analysis start-up",
            f"{task_s - analysis_s:.1f}",
            f"{100 * (task_s - analysis_s) / submit_s:.1f}%",
        ),
        (
            f"    after the task: hashing {n_out} outputs, certificate",
            f"{after_s:.1f}",
            f"{100 * after_s / submit_s:.1f}%",
        ),
        (
            "    CLI exit",
            f"{submit_s - before_s - task_s - after_s:.1f}",
            f"{100 * (submit_s - before_s - task_s - after_s) / submit_s:.1f}%",
        ),
    ]
    out.append(_table(rows, ("where the time went", "wall s", "share")))
    if bare_s is not None:
        out.append("")
        bare = _read(bare_out / "summary.json")
        bare_stages = sum(s["seconds"] for s in bare["run"]["stages"].values())
        out.append(
            _table(
                [
                    (
                        "caliali run, same environment, no platform",
                        f"{bare_s:.1f}",
                        f"{bare_stages:.1f}",
                        f"{bare_s - bare_stages:.1f}",
                    ),
                    ("through ncaas (submit -> end)", f"{submit_s:.1f}", f"{analysis_s:.1f}", f"{platform_s:.1f}"),
                    (
                        "difference",
                        f"{submit_s - bare_s:+.1f}",
                        f"{analysis_s - bare_stages:+.1f}",
                        f"{platform_s - (bare_s - bare_stages):+.1f}",
                    ),
                ],
                ("side by side", "wall s", "stages s", "outside stages s"),
            )
        )
        out.append("(outside stages without the platform: interpreter start-up, imports, reading the experiment)")
    if score is not None:
        n = score["neurons"]
        out.append("")
        out.append(f"F1 {n['f1']:.3f} (precision {n['precision']:.3f}, recall {n['recall']:.3f}); results in {results}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--frames", type=int, default=1000, help="frames per session")
    parser.add_argument("--neurons", type=int, default=100)
    parser.add_argument(
        "--cold", action="store_true", help="build the environment into a fresh cache first and time it (then removed)"
    )
    parser.add_argument("--bare", action="store_true", help="also run caliali without the platform")
    parser.add_argument("--workdir", help="keep everything here (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve() if args.workdir else Path(tempfile.mkdtemp(prefix="demo-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    env = None
    try:
        print(f"working in {work}", flush=True)
        experiment, truth, sim_s = _simulate(work / "sim", args.sessions, args.frames, args.neurons)
        config = work / "caliali-demo.json"
        config.write_text(json.dumps(CONFIG))
        print("environment ...", flush=True)
        env = _environment(args.cold, work)
        print("submitting through ncaas ...", flush=True)
        submit_s, submitted, results = _submit(experiment, config, work / "root", work / "submit.log")
        _run(
            [BIN / "caliali", "score", results / "outputs" / "experiment", truth, "--json", work / "score.json"],
            capture_output=True,
        )
        bare_s = None
        if args.bare:
            print("the same run without the platform ...", flush=True)
            bare_s = _bare(env["env"], experiment, config, work / "bare")
        print()
        print(
            report(
                sim_s=sim_s,
                env=env,
                submit_s=submit_s,
                submitted=submitted,
                results=results,
                bare_s=bare_s,
                bare_out=work / "bare",
                score=_read(work / "score.json"),
                args=args,
            )
        )
    finally:
        if args.cold and env is not None:
            from ncaas.isolation import environments

            environments.remove(env["env"])  # its files are read-only
            shutil.rmtree(work / "envs", ignore_errors=True)
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
