"""The job manager embedded, with the local executor: every way a task can end, for real."""

import threading
import time

import pytest
from ncaas_testutil import read_json, submit, wait_for

from ncaas.jobs.db import JobDB
from ncaas.jobs.manager import Manager
from ncaas.jobs.states import JobState

pytestmark = pytest.mark.timeout(90)


def _run(manager, root, analysis, config, datasets=("a.npy",), name="j"):
    path = submit(root, name, {"analysis": analysis, "dataname": list(datasets)}, config=config)
    job = manager.ingest_file("lab", str(path))
    assert job.state == JobState.QUEUED, job.cause
    job = manager.run_job(job.id)
    results = root / "lab" / "results" / job.id
    return job, results, {t.dataset: t for t in manager.db.tasks(job.id)}


def test_success_writes_status_logs_outputs_certificate_and_end(manager, root):
    job, results, tasks = _run(manager, root, "framestats", {"stats": ["mean", "max"]}, ["a.npy", "b.npy"])
    assert job.state == JobState.SUCCEEDED
    status = read_json(results / "status" / "a.npy.json")
    assert {k: status[k] for k in ("state", "progress", "exit_code", "attempt")} == {
        "state": "succeeded",
        "progress": 1.0,
        "exit_code": 0,
        "attempt": 1,
    }
    assert status["end_ms"] >= status["start_ms"] > 0
    assert (results / "outputs" / "a.npy" / "a.stats.csv").read_text().splitlines()[0] == "frame,mean,max"
    assert read_json(results / "end.json")["tasks"] == {"a.npy": "succeeded", "b.npy": "succeeded"}
    cert = read_json(results / "certificate.json")
    assert cert["blueprint"]["name"] == "framestats" and len(cert["blueprint"]["sha256"]) == 64
    assert cert["tasks"][0]["input"]["size"] == (root / "lab" / "inputs" / "a.npy").stat().st_size
    assert cert["environment"]["python"] and cert["isolation"] == manager.executor.isolation
    assert [e.to_state for e in manager.db.events(job.id) if e.dataset == "a.npy"] == ["queued", "running", "succeeded"]
    assert not (root / ".ncaas" / "runs" / job.id).exists()  # executor bookkeeping dissolved


def test_failure_is_reported_with_exit_code_and_log(manager, root):
    job, results, tasks = _run(manager, root, "framestats", {"fail": True})
    assert job.state == JobState.FAILED
    assert tasks["a.npy"].exit_code == 3 and tasks["a.npy"].attempt == 1  # no retry for an error exit
    assert tasks["a.npy"].cause == "exited with code 3"
    assert "failing as configured (fail: true)" in (results / "logs" / "a.npy.log").read_text()
    assert read_json(results / "end.json")["state"] == "failed"


def test_timeout_stops_a_hanging_task(manager, root):
    started = time.monotonic()
    job, results, tasks = _run(manager, root, "fs-short", {"hang": True})
    assert job.state == JobState.TIMED_OUT
    assert time.monotonic() - started < 15
    assert tasks["a.npy"].cause == "exceeded its time limit of 2.0 s"
    assert "hanging as configured" in (results / "logs" / "a.npy.log").read_text()


def test_exceeding_memory_fails_and_says_so(manager, root):
    job, results, tasks = _run(manager, root, "fs-small", {"memory_mb": 800})
    assert job.state == JobState.FAILED
    assert tasks["a.npy"].attempt == 1  # stopped by the sandbox's memory limit: not retried
    assert tasks["a.npy"].cause.startswith("stopped: it needed more than its memory limit of 381.5 MiB")


def test_task_killed_by_a_signal_is_retried(manager, root):
    job, results, tasks = _run(manager, root, "framestats", {"kill_on_attempts": [1]})
    assert job.state == JobState.SUCCEEDED
    assert tasks["a.npy"].attempt == 2
    causes = [e.cause for e in manager.db.events(job.id) if e.dataset == "a.npy"]
    assert "killed by SIGKILL; retrying (attempt 2 of 3)" in causes
    log = (results / "logs" / "a.npy.log").read_text()
    assert "[ncaas] attempt 1" in log and "[ncaas] attempt 2" in log
    cert_task = read_json(results / "certificate.json")["tasks"][0]
    assert cert_task["attempts"] == 2
    # Both attempts are kept, with how each ended, in the status file and the certificate.
    first, second = read_json(results / "status" / "a.npy.json")["attempts"]
    assert (first["number"], first["outcome"], first["cause"]) == (
        1,
        "queued",
        "killed by SIGKILL; retrying (attempt 2 of 3)",
    )
    assert (second["number"], second["outcome"]) == (2, "succeeded")
    assert first["launched_ms"] <= first["ended_ms"] <= second["launched_ms"] <= second["ended_ms"]
    assert cert_task["attempt_history"] == [first, second]
    assert "  attempt 1  " in (results / "certificate.txt").read_text()


def test_retries_are_bounded(manager, root):
    job, _, tasks = _run(manager, root, "framestats", {"kill_on_attempts": [1, 2, 3]})
    assert job.state == JobState.FAILED
    assert tasks["a.npy"].attempt == 3
    assert tasks["a.npy"].cause == "killed by SIGKILL; gave up after 3 attempts"


def test_writing_a_lot_streams_into_the_log(manager, root):
    job, results, _ = _run(manager, root, "framestats", {"log_lines": 50_000, "write_mb": 30})
    assert job.state == JobState.SUCCEEDED
    log = (results / "logs" / "a.npy.log").read_text()
    assert "log line 49999: " in log and log.count("\n") > 50_000
    assert (results / "outputs" / "a.npy" / "bulk.bin").stat().st_size == 30 * 2**20


def test_cancel_stops_running_and_queued_tasks_within_seconds(manager, root):
    path = submit(root, "c", {"analysis": "fs-serial", "dataname": ["a.npy", "b.npy"]}, config={"hang": True})
    job = manager.ingest_file("lab", str(path))
    runner = threading.Thread(target=manager.run_job, args=(job.id,))
    runner.start()
    status = root / "lab" / "results" / job.id / "status" / "a.npy.json"
    wait_for(lambda: status.exists() and read_json(status).get("pid"), what="task a running")
    other = Manager(manager.storage, JobDB(manager.db.url), registry=manager.registry)  # as `ncaas cancel` does
    asked = time.monotonic()
    other.cancel(job.id[:12])
    runner.join(timeout=30)
    assert not runner.is_alive()
    assert time.monotonic() - asked < 8
    tasks = {t.dataset: t for t in manager.db.tasks(job.id)}
    assert manager.db.job(job.id).state == JobState.CANCELLED
    assert tasks["a.npy"].state == "cancelled" and tasks["a.npy"].cause == "cancelled by request"
    assert tasks["b.npy"].state == "cancelled" and tasks["b.npy"].attempt == 0  # never started
    assert read_json(root / "lab" / "results" / job.id / "end.json")["state"] == "cancelled"


def test_blueprint_limit_bounds_concurrency(manager, root):
    job, _, tasks = _run(manager, root, "fs-serial", {"sleep_per_frame": 0.02}, ["a.npy", "b.npy"])
    assert job.state == JobState.SUCCEEDED
    a, b = sorted(tasks.values(), key=lambda t: t.started_ms)
    assert b.started_ms >= a.ended_ms


def test_logs_stream_while_the_task_runs(manager, root):
    path = submit(
        root, "s", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"sleep_per_frame": 0.1, "batch_frames": 1}
    )
    job = manager.ingest_file("lab", str(path))
    runner = threading.Thread(target=manager.run_job, args=(job.id,))
    runner.start()
    log = root / "lab" / "results" / job.id / "logs" / "a.npy.log"
    status = log.parent.parent / "status" / "a.npy.json"
    wait_for(lambda: log.exists() and "NCAAS_PROGRESS 0.250 5/20 frames" in log.read_text(), what="progress")
    assert read_json(status)["state"] == "running"
    wait_for(lambda: 0.25 <= read_json(status).get("progress", 0) < 1, what="progress in status")
    runner.join(timeout=30)
    assert manager.db.job(job.id).state == JobState.SUCCEEDED


def test_other_threads_hand_their_work_to_the_running_loop(manager):
    """A server's request threads never touch the manager while its loop runs: the loop runs their work."""
    stop = threading.Event()
    loop = threading.Thread(target=manager.run, kwargs={"scan": False, "should_stop": stop.is_set})
    loop.start()
    try:
        wait_for(lambda: manager._loop_thread is loop, what="the loop to start")
        assert manager.call(threading.current_thread) is loop
        with pytest.raises(ZeroDivisionError):  # a failure is the caller's, raised on its own thread
            manager.call(lambda: 1 / 0)
        assert loop.is_alive()
    finally:
        stop.set()
        loop.join(timeout=30)
    assert manager.call(threading.current_thread) is threading.current_thread()  # no loop: at once
