"""Chaos: a job manager SIGKILLed at random moments while jobs run, and what it left.

The deployment: ``ncaas serve --no-manager`` takes submissions over HTTP on loopback while a
separate ``ncaas manager`` runs them; both share one storage root and job database (the
one-manager lock is the manager's). Only the manager is killed: the server stays up and
keeps taking jobs, as a web page's users would see it.

1. ``--jobs`` framestats jobs (default 15) are submitted through the API over the first
   part of the run, each on 3 or 4 datasets (one a folder of two stacks). Every fifth job
   fails on purpose (``fail: true``: correctly failed), every fifth kills its first attempt
   (``kill_on_attempts: [1]``: retried once, then succeeds); the others take 0.3-1.5 s.
2. The manager is SIGKILLed ``--kills`` times (default 22), stays down a random 0-1.5 s
   (tasks finish meanwhile), and is started again. A share of the kills (``--targeted``,
   default half) is aimed at a task's launch: the moment its spec.json appears, before
   the supervisor's handle is recorded; the others come after a random 0.3-3 s.
3. Once every job has ended (or ``--bound`` seconds passed), the manager and server stop
   and the storage is examined:

   - jobs finished / correctly failed / wrong outcome / stuck (not ended) / lost (unknown
     to the server);
   - tasks run more than once: a run that exited (its supervisor wrote "exited with code
     N" in the log) followed by another run; a retry of an attempt killed by a signal is
     legitimate and not counted. Runs whose supervisor vanished (a start line with no end
     line) are counted too: only the manager is killed here, so there must be none;
   - orphan processes: anything alive whose command line names the storage root;
   - half-written files: status, end and certificate files that do not parse, and
     temporary files left anywhere in the root; run folders (and their sandboxes) left
     behind by finished jobs.

It exits 1 if any job is stuck, lost or ended otherwise than expected, any task ran twice,
or anything is orphaned, half-written or left behind. The random choices are seeded (``--seed``,
printed). Run: ``.venv/bin/python benchmarks/chaos.py --kills 22 --jobs 15``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
from rich.console import Console
from rich.table import Table

from ncaas.client import Client
from ncaas.testing.servers import ServerProcess, storage_with_user

STARTED = re.compile(r"attempt (\d+) started")
EVENT = re.compile(r"^\[ncaas\] (?:attempt (\d+): |(?:exited|timed out|cancelled) with code (-?\d+)$)", re.M)
DATASETS = ["a.npy", "b.npy", "c.npy", "folder"]
out = Console()


@dataclass
class Submitted:
    id: str
    kind: str  # ok | fail | retry
    datasets: list[str]


@dataclass
class Findings:
    finished: int = 0
    correctly_failed: int = 0
    wrong: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    ran_twice: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)
    tasks: int = 0
    runs: int = 0
    legit_retries: int = 0
    unstarted: int = 0  # attempts lost before their supervisor started (the kill came mid-launch)
    cut_short: int = 0  # launches cut short by a kill, started again as the same attempt


# -- the site ------------------------------------------------------------------------------
def make_inputs(root: Path) -> None:
    rng = np.random.default_rng(0)
    inputs = root / "lab" / "inputs"
    for name in ("a.npy", "b.npy", "c.npy", "folder/x.npy", "folder/y.npy"):
        (inputs / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(inputs / name, rng.random((20, 8, 8), dtype=np.float32))


class ManagerProcess:
    """``ncaas manager`` on the root; killed and started again at will."""

    def __init__(self, root: Path, log: Path):
        self.root, self.log = root, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "ncaas", "manager", "--root", str(self.root)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def job_kind(number: int) -> str:
    return {3: "fail", 4: "retry"}.get(number % 5, "ok")


def config_for(kind: str, rng: random.Random) -> dict:
    config = {
        "sleep_per_frame": round(rng.uniform(0.015, 0.075), 3),
        "batch_frames": 2,
        "cpu_seconds": round(rng.uniform(0.0, 0.3), 2),
    }
    if kind == "fail":
        config["fail"] = True
    elif kind == "retry":
        config["kill_on_attempts"] = [1]
    return config


def submit_all(
    client: Client, jobs: int, rng: random.Random, spread: float, into: list[Submitted], errors: list[str]
) -> None:
    for number in range(jobs):
        kind = job_kind(number)
        datasets = rng.sample(DATASETS, rng.choice([3, 4]))
        try:
            job = client.submit("framestats", datasets, config=config_for(kind, rng), name=f"chaos-{number:02d}")
            into.append(Submitted(job["id"], kind, datasets))
        except Exception as exc:  # noqa: BLE001 - a refused submission is a finding, not a crash
            errors.append(f"job {number}: {exc}")
        time.sleep(rng.uniform(0, 2 * spread / max(jobs, 1)))


def launched(root: Path, seen: set[str], timeout: float) -> bool:
    """Wait until the manager writes a new task's spec.json (it is launching it); False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = {str(p) for p in root.glob(".ncaas/runs/*/*/spec.json")} - seen
        if fresh:
            seen |= fresh
            return True
        time.sleep(0.002)
    return False


def kill_loop(manager: ManagerProcess, kills: int, rng: random.Random, targeted: float) -> int:
    """Kill and restart the manager ``kills`` times; returns how many kills hit a launch."""
    seen: set[str] = set()
    hits = 0
    for number in range(kills):
        aim = rng.random() < targeted
        if aim:  # at a launch: between starting a supervisor and recording its handle
            hit = launched(manager.root, seen, timeout=4.0)
            hits += hit
            what = "at a task's launch" if hit else "(no launch came)"
        else:
            time.sleep(rng.uniform(0.3, 3.0))
            what = "at a random moment"
        manager.kill()
        out.print(f"[dim]{time.strftime('%H:%M:%S')} kill {number + 1}/{kills} {what}[/dim]")
        time.sleep(rng.uniform(0.0, 1.5))
        manager.start()
    return hits


def wait_all(client: Client, submitted: list[Submitted], bound: float) -> dict[str, dict]:
    deadline = time.monotonic() + bound
    final: dict[str, dict] = {}
    while time.monotonic() < deadline:
        for job in submitted:
            if job.id in final:
                continue
            try:
                detail = client.job(job.id)
            except Exception:  # noqa: BLE001 - unknown to the server: lost, decided below
                continue
            if detail.get("finished"):  # ended, and its certificate and end.json written
                final[job.id] = detail
        if len(final) == len(submitted):
            break
        time.sleep(0.5)
    return final


# -- the examination -----------------------------------------------------------------------
def outcomes(story: list[dict], dataset: str) -> dict[int, str]:
    """What the manager decided about each attempt of a task: attempt -> cause."""
    decided: dict[int, str] = {}
    attempt = 0
    for event in story:
        if event.get("dataset") != dataset:
            continue
        started = STARTED.match(event.get("cause") or "")
        if started and event.get("to_state") == "running":
            attempt = int(started.group(1))
        elif event.get("from_state") == "running" and attempt:
            decided[attempt] = event.get("cause") or ""
    return decided


def examine_runs(log_text: str, decided: dict[int, str], where: str, findings: Findings) -> None:
    """Count runs in a task's log (each supervisor writes one start line and one end line).

    A run that ended and was followed by another is legitimate only if the manager decided
    that attempt was killed by a signal; anything else is a task run again after it exited.
    """
    runs: list[list] = []  # [attempt, end code or None]
    for match in EVENT.finditer(log_text):
        attempt, code = match.group(1), match.group(2)
        if attempt is not None:
            runs.append([int(attempt), None])
        elif runs:
            runs[-1][1] = int(code)
    findings.runs += len(runs)
    attempts = [run[0] for run in runs]
    findings.unstarted += sum(
        1 for attempt, cause in decided.items() if cause.startswith("its process vanished") and attempt not in attempts
    )
    for number in {a for a in attempts if attempts.count(a) > 1}:
        findings.ran_twice.append(f"{where}: attempt {number} started {attempts.count(number)} times")
    for index, (attempt, code) in enumerate(runs):
        last = index == len(runs) - 1
        if code is None:
            findings.vanished.append(f"{where}: attempt {attempt} has no end line")
        elif not last and decided.get(attempt, "").startswith("killed by"):
            findings.legit_retries += 1
        elif not last:
            findings.ran_twice.append(
                f"{where}: attempt {attempt} exited with code {code}, the manager decided "
                f"{decided.get(attempt)!r}, and it ran again"
            )


def examine_job(client: Client, root: Path, job: Submitted, detail: dict | None, findings: Findings) -> None:
    if detail is None:
        return
    expected = "failed" if job.kind == "fail" else "succeeded"
    if detail["state"] != expected:
        findings.wrong.append(f"{job.id} ({job.kind}): {detail['state']} - {detail.get('cause')}")
    elif expected == "failed":
        findings.correctly_failed += 1
    else:
        findings.finished += 1
    results = root / "lab" / "results" / job.id
    story = client.story(job.id)
    findings.cut_short += sum(1 for e in story if (e.get("cause") or "").startswith("its launch was cut short"))
    for task in detail.get("tasks", []):
        findings.tasks += 1
        log = results / "logs" / f"{task['dataset']}.log"
        examine_runs(
            log.read_text(errors="replace") if log.exists() else "",
            outcomes(story, task["dataset"]),
            f"{job.id}/{task['dataset']}",
            findings,
        )


def examine_files(root: Path, findings: Findings) -> None:
    results = root / "lab" / "results"
    for path in [*results.glob("*/status/*.json"), *results.glob("*/end.json"), *results.glob("*/certificate.json")]:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            findings.half_written.append(f"{path.relative_to(root)}: {exc}")
    for path in root.rglob("*"):
        if path.is_file() and (path.name.endswith(".tmp") or ".tmp." in path.name):
            findings.half_written.append(f"{path.relative_to(root)}: temporary file left")


def find_orphans(root: Path) -> list[str]:
    mine = {os.getpid()}
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if proc.pid in mine or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            cmdline = " ".join(proc.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(root) in cmdline:
            found.append(f"pid {proc.pid}: {cmdline[:160]}")
    return found


# -- the report ----------------------------------------------------------------------------
def report(
    findings: Findings, submitted: int, kills: int, hits: int, starts: int, wall: float, leftover_runs: int
) -> bool:
    table = Table(title=f"chaos: {kills} manager SIGKILLs over {submitted} jobs ({wall:.0f} s)")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("must be", justify="right")
    rows = [
        ("jobs finished (succeeded as expected)", findings.finished, ""),
        ("jobs correctly failed (fail: true)", findings.correctly_failed, ""),
        ("jobs ended otherwise than expected", len(findings.wrong), "0"),
        ("jobs stuck (not ended within the bound)", len(findings.stuck), "0"),
        ("jobs lost (unknown to the server)", len(findings.lost), "0"),
        ("tasks", findings.tasks, ""),
        ("task runs (supervisor starts)", findings.runs, ""),
        ("legitimate retries (after a kill by signal)", findings.legit_retries, ""),
        ("launches cut short by a kill (started again, same attempt)", findings.cut_short, ""),
        ("attempts lost before their supervisor started (retried)", findings.unstarted, ""),
        ("tasks run again after they exited", len(findings.ran_twice), "0"),
        ("runs whose supervisor vanished", len(findings.vanished), "0"),
        ("orphan processes", len(findings.orphans), "0"),
        ("half-written or temporary files", len(findings.half_written), "0"),
        ("run folders left behind (finished jobs)", leftover_runs, "0"),
        ("kills that hit a task's launch", hits, ""),
        ("manager starts", starts, ""),
    ]
    ok = True
    for what, count, must in rows:
        bad = must == "0" and count != 0
        ok = ok and not bad
        table.add_row(what, f"[red]{count}[/red]" if bad else str(count), must)
    out.print(table)
    for name in ("wrong", "stuck", "lost", "ran_twice", "vanished", "orphans", "half_written"):
        for line in getattr(findings, name)[:10]:
            out.print(f"[red]{name}[/red]: {line}")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=22, help="manager SIGKILLs (default 22)")
    parser.add_argument("--jobs", type=int, default=15, help="jobs submitted (default 15)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    parser.add_argument(
        "--targeted", type=float, default=0.5, help="share of kills aimed at a task's launch (default 0.5)"
    )
    parser.add_argument("--bound", type=float, default=300.0, help="seconds to wait for jobs after the kills")
    parser.add_argument("--keep", action="store_true", help="keep the storage root for a look afterwards")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    out.print(f"seed {seed} (--seed {seed} repeats the random choices; timings still vary)")
    rng = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="ncaas-chaos-"))
    root = base / "root"
    token = storage_with_user(root)
    make_inputs(root)
    started = time.monotonic()
    server = ServerProcess(root, extra=["--no-manager"]).start()
    manager = ManagerProcess(root, base / "manager.log")
    manager.start()
    client = Client(server.url, token)
    submitted: list[Submitted] = []
    errors: list[str] = []
    findings = Findings()
    hits = 0
    try:
        spread = args.kills * 1.5  # submissions go on during the first part of the kills
        submitter = threading.Thread(
            target=submit_all, args=(client, args.jobs, random.Random(rng.random()), spread, submitted, errors)
        )
        submitter.start()
        hits = kill_loop(manager, args.kills, random.Random(rng.random()), args.targeted)
        submitter.join()
        final = wait_all(client, submitted, args.bound)
        for job in submitted:
            if job.id not in final:
                try:
                    client.job(job.id)
                    findings.stuck.append(job.id)
                except Exception:  # noqa: BLE001
                    findings.lost.append(job.id)
            examine_job(client, root, job, final.get(job.id), findings)
        findings.lost += errors
    finally:
        manager.stop()
        client.close()
        server.stop()
    time.sleep(1.0)  # supervisors finishing their last writes
    findings.orphans = find_orphans(root)
    for line in findings.orphans:  # ours: stop them once counted
        try:
            psutil.Process(int(line.split()[1].rstrip(":"))).kill()
        except psutil.Error:
            pass
    examine_files(root, findings)
    leftover = sum(
        1 for job in submitted if job.id not in findings.stuck and (root / ".ncaas" / "runs" / job.id).exists()
    )
    ok = report(
        findings, len(submitted) + len(errors), args.kills, hits, manager.starts, time.monotonic() - started, leftover
    )
    out.print(f"manager log: {manager.log}" if args.keep else "")
    if not args.keep:
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
