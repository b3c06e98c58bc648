"""Platform overhead of ncaas, next to running the same command as a bare subprocess.

Prints:

1. latency from a submit file appearing (plain file write, `ncaas manager` running) to
   the task's first instruction, and from the task's last instruction to ``end.json``;
   the bare-subprocess figures are spawn -> first instruction and last instruction ->
   ``wait()`` returning. Overhead = platform - bare (target: < 0.3 s per job).
2. wall time for 1, 2, 4, 8 datasets of a CPU-bound task (default 5 s) through the
   platform, next to the ideal ``ceil(n / cores) * task`` and to the same commands run as
   bare subprocesses ``cores`` at a time (target: efficiency >= 90% of ideal).

Usage: ``.venv/bin/python benchmarks/platform_overhead.py [--repeats 10] [--cpu-seconds 5]``.
The machine may be shared: the bare-subprocess column measures what the machine gives.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TASK = """\
import time
first = time.time()
import json, sys
inp, cfg, out = sys.argv[-3:]
seconds = json.load(open(cfg)).get("cpu_seconds", 0)
end = time.process_time() + seconds
x = 0
while time.process_time() < end:
    x += 1
import os
os.makedirs(out, exist_ok=True)
last = time.time()
with open(os.path.join(out, "times.json"), "w") as fh:
    json.dump(dict(first=first, last=last), fh)
"""

BLUEPRINT = {
    "name": "overhead",
    "version": "1",
    "description": "trivial task for platform_overhead.py",
    "command": ["{python}", "-c", "TASK", "{input}", "{config}", "{output}"],
    "resources": {"cpus": 1, "memory": "512MB", "timeout": 600},
    "config_schema": {"type": "object", "properties": {"cpu_seconds": {"type": "number"}}},
    "limits": {"max_concurrent_tasks": 64, "max_retries": 0},
}


def cores() -> int:
    return len(os.sched_getaffinity(0))


def setup(workdir: Path) -> tuple[Path, Path, dict[str, str]]:
    task = workdir / "task.py"
    task.write_text(TASK)
    bp_dir = workdir / "blueprints" / "overhead"
    bp_dir.mkdir(parents=True)
    # the code goes inline: a sandboxed task sees only the system, its environment and its inputs
    blueprint = dict(BLUEPRINT, command=[a.replace("TASK", TASK) for a in BLUEPRINT["command"]])
    (bp_dir / "blueprint.json").write_text(json.dumps(blueprint))
    root = workdir / "root"
    for i in range(8):
        (root / "bench" / "inputs").mkdir(parents=True, exist_ok=True)
        (root / "bench" / "inputs" / f"d{i}.txt").write_text(str(i))
    (root / "bench" / "configs").mkdir(parents=True)
    env = {**os.environ, "NCAAS_BLUEPRINTS": str(workdir / "blueprints")}
    return root, task, env


def wait_file(path: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.002)


def submit(root: Path, name: str, datasets: list[str], cpu_seconds: float) -> float:
    (root / "bench" / "configs" / f"{name}.json").write_text(json.dumps({"cpu_seconds": cpu_seconds}))
    sub = root / "bench" / "submissions" / f"{name}.submit.json"
    sub.parent.mkdir(parents=True, exist_ok=True)
    tmp = sub.with_suffix(".tmp")
    tmp.write_text(json.dumps({"analysis": "overhead", "dataname": datasets, "configname": f"{name}.json"}))
    t0 = time.time()
    os.replace(tmp, sub)  # the submit file appears atomically
    return t0


def job_dir_for(root: Path, name: str) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for status in (root / "bench" / "results").glob("*"):
            cfg = status / "config.json"
            if cfg.exists() and status.name not in SEEN:
                SEEN.add(status.name)
                return status
        time.sleep(0.002)
    raise TimeoutError(f"no results folder for {name}")


SEEN: set[str] = set()


def check(job: Path) -> None:
    end = json.loads((job / "end.json").read_text())
    if end["state"] != "succeeded":
        logs = "".join(p.read_text() for p in sorted((job / "logs").glob("*.log")))
        raise SystemExit(f"benchmark job {job.name} {end['state']}: {end.get('cause')}\n{logs[-2000:]}")


def bare(task: Path, workdir: Path, cpu_seconds: float, tag: str) -> tuple[float, float, float]:
    cfg = workdir / f"bare-{tag}.json"
    cfg.write_text(json.dumps({"cpu_seconds": cpu_seconds}))
    out = workdir / f"bare-out-{tag}"
    t0 = time.time()
    # its own session, like an ncaas task: on a shared machine the scheduler shares CPU per session
    # (autogroup), so the comparison is only fair under the same conditions
    subprocess.run([sys.executable, str(task), "in", str(cfg), str(out)], check=True, start_new_session=True)
    t_end = time.time()
    times = json.loads((out / "times.json").read_text())
    return t0, times, t_end


def manager_cpu(pid: int) -> float:
    """CPU seconds used so far by the manager process and its exited children (the task supervisors)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def latency(root: Path, task: Path, workdir: Path, repeats: int, manager_pid: int) -> None:
    start_p, end_p, start_b, end_b = [], [], [], []
    idle0 = manager_cpu(manager_pid)
    time.sleep(3.0)
    idle = (manager_cpu(manager_pid) - idle0) / 3.0
    cpu0, wall0 = manager_cpu(manager_pid), time.time()
    bare_cpu = 0.0
    for i in range(repeats):
        t0 = submit(root, f"lat{i}", ["d0.txt"], 0)
        job = job_dir_for(root, f"lat{i}")
        wait_file(job / "end.json")
        check(job)
        end_mtime = (job / "end.json").stat().st_mtime
        times = json.loads((job / "outputs" / "d0.txt" / "times.json").read_text())
        start_p.append(times["first"] - t0)
        end_p.append(end_mtime - times["last"])
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        b0, btimes, b_end = bare(task, workdir, 0, str(i))
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        bare_cpu += after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        start_b.append(btimes["first"] - b0)
        end_b.append(b_end - btimes["last"])
    busy = manager_cpu(manager_pid) - cpu0 - idle * (time.time() - wall0)
    med = statistics.median
    print(
        f"\nManager CPU: {idle:.1%} of a core while idle (polling); {busy / repeats:.3f} CPU s per job "
        f"above that, of which the bare task itself takes {bare_cpu / repeats:.3f} (CPU time does not "
        "depend on the machine's load)"
    )
    print(f"\nLatency, trivial task, {repeats} jobs (median / max, seconds)")
    print(f"{'':38}{'ncaas':>16}{'bare subprocess':>18}{'overhead':>12}")
    print(
        f"{'submit file -> first instruction':38}{med(start_p):>8.3f} / {max(start_p):5.3f}"
        f"{med(start_b):>10.3f} / {max(start_b):5.3f}{med(start_p) - med(start_b):>10.3f}"
    )
    print(
        f"{'last instruction -> end.json':38}{med(end_p):>8.3f} / {max(end_p):5.3f}"
        f"{med(end_b):>10.3f} / {max(end_b):5.3f}{med(end_p) - med(end_b):>10.3f}"
    )
    total = med(start_p) - med(start_b) + med(end_p) - med(end_b)
    print(f"overhead per job (median): {total:.3f} s  (target < 0.3 s: {'met' if total < 0.3 else 'NOT met'})")


def parallel(root: Path, task: Path, workdir: Path, cpu_seconds: float, counts: list[int]) -> None:
    n_cores = cores()
    print(f"\nParallel wall time, {cpu_seconds:g} s CPU task, {n_cores} cores (seconds)")
    print(
        f"{'datasets':>8}{'ideal':>9}{'ncaas':>9}{'eff.':>8}{'bare x' + str(n_cores):>10}{'eff.':>8}{'ncaas/bare':>12}"
    )
    for n in counts:
        ideal = math.ceil(n / n_cores) * cpu_seconds
        t0 = submit(root, f"par{n}", [f"d{i}.txt" for i in range(n)], cpu_seconds)
        job = job_dir_for(root, f"par{n}")
        wait_file(job / "end.json")
        check(job)
        wall = (job / "end.json").stat().st_mtime - t0
        b0 = time.time()
        with ThreadPoolExecutor(n_cores) as pool:
            list(pool.map(lambda i, n=n: bare(task, workdir, cpu_seconds, f"p{n}-{i}"), range(n)))
        bare_wall = time.time() - b0
        print(
            f"{n:>8}{ideal:>9.2f}{wall:>9.2f}{ideal / wall:>8.0%}{bare_wall:>10.2f}{ideal / bare_wall:>8.0%}"
            f"{bare_wall / wall:>12.0%}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cpu-seconds", type=float, default=5.0)
    parser.add_argument("--counts", default="1,2,4,8")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up (manager, tasks) when stopped
    with tempfile.TemporaryDirectory(prefix="ncaas-bench-") as tmp:
        workdir = Path(tmp)
        root, task, env = setup(workdir)
        log = open(workdir / "manager.log", "w")
        manager = subprocess.Popen(
            [sys.executable, "-m", "ncaas", "manager", "--root", str(root)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_file(root / ".ncaas" / "manager.lock", timeout=60)
            time.sleep(1.0)
            print(f"ncaas platform overhead; host load average {os.getloadavg()[0]:.1f} on {cores()} cores")
            latency(root, task, workdir, args.repeats, manager.pid)
            parallel(root, task, workdir, args.cpu_seconds, [int(c) for c in args.counts.split(",")])
            print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
        finally:
            manager.terminate()
            manager.wait(timeout=30)
            log.close()
            for job in (root / "bench" / "results").glob("*"):  # tasks outlive the manager by design
                if not (job / "end.json").exists():
                    subprocess.run(
                        [sys.executable, "-m", "ncaas", "cancel", job.name, "--root", str(root)],
                        env=env,
                        capture_output=True,
                        check=False,
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
