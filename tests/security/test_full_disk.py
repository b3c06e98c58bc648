"""A full disk: the task that filled it fails with that reason and is not retried; jobs end.

Real disks: a small tmpfs is mounted for each test (root only; skipped elsewhere, with the
reason) and the storage root, job database and run folders all live on it, as a deployment
with everything on one disk. A real ``ncaas manager`` process runs the jobs.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import read_json, small_tmpfs, start_manager, stop, submit, wait_for, write_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs, unmounted afterwards."""
    with small_tmpfs(tmp_path / "disk", "24m") as mount:
        yield mount


def _fill(disk: Path) -> Path:
    """Write a file until the disk has no space left; returns it."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return filler


def _no_half_written_files(root: Path) -> None:
    assert not [p for p in root.rglob("*.tmp")], "temporary files left behind"
    for path in [
        *root.glob("lab/results/*/status/*.json"),
        *root.glob("lab/results/*/end.json"),
        *root.glob("lab/results/*/certificate.json"),
    ]:
        json.loads(path.read_text())


def test_a_task_that_fills_the_disk_fails_with_that_reason_and_is_not_retried(disk: Path, tmp_path: Path):
    root = disk / "root"
    write_stack(root / "lab" / "inputs" / "a.npy", seed=1)
    submit(root, "big", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"write_mb": 64})
    manager = start_manager(root, tmp_path / "manager.log", env={"NCAAS_DISK_RESERVE": "4MiB"})
    try:
        results = root / "lab" / "results"
        job_dir = wait_for(lambda: results.exists() and next(results.iterdir(), None), what="a results folder")
        end = wait_for(
            lambda: (job_dir / "end.json").exists() and read_json(job_dir / "end.json"), timeout=60, what="end.json"
        )
        assert manager.poll() is None, "the manager died"
    finally:
        stop(manager)
    log = (tmp_path / "manager.log").read_text()
    story = flat(cli("status", job_dir.name, "--root", str(root)).stdout)
    assert end["state"] == "failed", story + log
    status = read_json(job_dir / "status" / "a.npy.json")
    assert status["state"] == "failed" and status["attempt"] == 1
    assert status["cause"].startswith(f"the disk is full: {job_dir / 'outputs' / 'a.npy'} has no space left (wrote ")
    assert "retrying" not in story and "vanished" not in story
    assert read_json(job_dir / "certificate.json")["tasks"][0]["state"] == "failed"
    _no_half_written_files(root)


@pytest.mark.parametrize("reserve", ["2MiB", "0"])
def test_the_manager_survives_a_full_disk_and_ends_the_job(disk: Path, tmp_path: Path, reserve: str):
    """The task ended well, then the disk filled: the manager's own records find no space.

    The manager is paused (SIGSTOP) while its task ends and the disk fills, so its next
    database, status and certificate writes are the ones that find no space. With a reserve
    it gives it up and ends the job at once; without, it says so once, waits, and ends the
    job when space returns.
    """
    root = disk / "root"
    write_stack(root / "lab" / "inputs" / "a.npy", seed=1)
    log = tmp_path / "manager.log"
    submit(
        root,
        "slow",
        {"analysis": "framestats", "dataname": ["a.npy"]},
        config={"sleep_per_frame": 0.1, "batch_frames": 2},
    )
    manager = start_manager(root, log, env={"NCAAS_DISK_RESERVE": reserve})
    try:
        results = root / "lab" / "results"
        job_dir = wait_for(lambda: results.exists() and next(results.iterdir(), None), what="a results folder")
        status = job_dir / "status" / "a.npy.json"
        wait_for(lambda: status.exists() and read_json(status).get("pid"), what="the task running")
        manager.send_signal(signal.SIGSTOP)
        wait_for(lambda: list(root.glob(".ncaas/runs/*/a.npy.1/exit.json")), what="the task's exit record")
        filler = _fill(disk)
        manager.send_signal(signal.SIGCONT)
        if reserve == "0":
            wait_for(lambda: "is full" in log.read_text(), what="the manager saying the disk is full")
            time.sleep(3)
            assert manager.poll() is None, log.read_text()
            assert log.read_text().count("retrying every second") == 1, log.read_text()  # said once
            assert not (job_dir / "end.json").exists()
            filler.unlink()  # space returns
        end = wait_for(
            lambda: (job_dir / "end.json").exists() and read_json(job_dir / "end.json"), timeout=60, what="end.json"
        )
        assert manager.poll() is None, log.read_text()
    finally:
        manager.send_signal(signal.SIGCONT)
        stop(manager)
    text = log.read_text()
    assert end["state"] == "succeeded", text
    assert read_json(status)["attempt"] == 1
    if reserve != "0":
        assert "gave up the 2 MB reserved for this" in text and filler.exists()
    _no_half_written_files(root)
