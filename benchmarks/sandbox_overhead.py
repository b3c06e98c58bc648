"""What isolation costs: sandboxed task start-up, and building an analysis environment.

1. Start-up: the same command run as a bare subprocess and inside a full
   sandbox (scratch folder, memory and pids cgroups, bubblewrap namespaces,
   teardown), median and 90th percentile over ``--repeat`` runs.
   Target: under 150 ms extra.
2. Environment build for the largest analysis in the repository (caliali):
   cold (empty uv cache and environment cache: every wheel downloaded),
   warm (uv's download cache filled, environment rebuilt), cached (already
   built: only verified), and a full verification on its own.

Run::

    .venv/bin/python benchmarks/sandbox_overhead.py [--repeat 30] [--skip-cold] [--analysis caliali]

The machine is shared, so figures are noisy; the median is the one to read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ncaas.isolation import environments, sandbox

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def _row(label: str, times: list[float], base: list[float] | None = None) -> str:
    median = statistics.median(times)
    p90 = sorted(times)[int(0.9 * (len(times) - 1))]
    extra = f"{median - statistics.median(base):+8.1f}" if base else " " * 8
    return f"  {label:<38} {median:9.1f} {p90:9.1f} {extra}"


def startup(env: environments.Environment, repeat: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="ncaas-bench-out-"))
    spec = sandbox.SandboxSpec(writable=[out], environment=env.path, memory=2**30, processes=256)
    python = str(env.python)
    print(f"\nTask start-up, {repeat} runs each (ms)      median       p90  extra vs bare")
    results = {}
    for label, argv in (
        ("/bin/true", ["/bin/true"]),
        ("python -c pass", [python, "-c", "pass"]),
        ("python -c 'import numpy'", [python, "-c", "import numpy"]),
    ):
        bare = _timed(lambda a=argv: subprocess.run(a, check=True, env={"PATH": "/usr/bin:/bin"}, cwd=out), repeat)

        def boxed(a=argv):
            result = sandbox.run(a, spec)
            assert result.verdict.ok, result.output

        boxed()  # warm the bwrap probe and the page cache
        inside = _timed(boxed, repeat)
        print(_row(f"{label}, bare subprocess", bare))
        print(_row(f"{label}, sandboxed", inside, bare))
        results[label] = statistics.median(inside) - statistics.median(bare)
    shutil.rmtree(out)
    worst = max(results.values())
    print(
        f"  sandbox overhead (worst median): {worst:.1f} ms  -> target < 150 ms: {'met' if worst < 150 else 'NOT met'}"
    )
    return worst


def builds(name: str, skip_cold: bool, work: Path) -> environments.Environment:
    # A snapshot of the analysis, so edits made to it meanwhile do not change the environment key.
    source = work / name
    shutil.copytree(
        ROOT / "analyses" / name, source, ignore=shutil.ignore_patterns("tests", "benchmarks", "__pycache__", "*.pyc")
    )
    spec = environments.EnvironmentSpec(name, source / environments.LOCK_NAME, source)
    print(f"\nEnvironment build of {name} ({environments.pinned_packages(spec.lock_file)} locked packages)")
    timings = {}
    try:
        if not skip_cold:
            os.environ["UV_CACHE_DIR"] = str(work / "uv-cache")
            os.environ["NCAAS_ENVS"] = str(work / "cold")
            started = time.perf_counter()
            environments.ensure(spec)
            timings["cold (empty uv cache: downloads every wheel)"] = time.perf_counter() - started
            os.environ["NCAAS_ENVS"] = str(work / "warm")
        else:
            os.environ.pop("UV_CACHE_DIR", None)
            os.environ["NCAAS_ENVS"] = str(work / "warm")
            environments.ensure(spec)  # fill the user's uv cache if it is not yet
            environments.remove(environments.find(spec))
        started = time.perf_counter()
        env, _ = environments.ensure(spec)
        timings["warm (uv cache filled, environment rebuilt)"] = time.perf_counter() - started
        started = time.perf_counter()
        env, built = environments.ensure(spec)
        assert not built
        timings["cached (already built: key + full verification)"] = time.perf_counter() - started
        check = environments.verify(env)
        timings[f"verification alone ({check.files} files)"] = check.seconds
        size = sum(p.stat().st_size for p in env.path.rglob("*") if p.is_file() and not p.is_symlink())
        for label, seconds in timings.items():
            print(f"  {label:<52} {seconds:8.2f} s")
        print(f"  environment size: {size / 2**20:.0f} MiB")
        return env
    finally:
        os.environ.pop("UV_CACHE_DIR", None)


def cleanup(work: Path) -> None:
    for envs in work.iterdir():
        if envs.is_dir() and envs.name in ("cold", "warm"):
            for path in envs.iterdir():
                if path.is_dir():
                    environments._remove_tree(path)
    shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--skip-cold", action="store_true", help="do not download every wheel again")
    parser.add_argument("--analysis", default="caliali")
    args = parser.parse_args(argv)
    print(
        f"bubblewrap: {sandbox.bwrap_binary()[1]}; python {sys.version.split()[0]}; "
        f"{os.cpu_count()} cores (shared machine: figures are noisy)"
    )
    work = Path(tempfile.mkdtemp(prefix="ncaas-bench-envs-"))
    try:
        env = builds(args.analysis, args.skip_cold, work)
        startup(env, args.repeat)
    finally:
        cleanup(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
