"""A task tells the platform why it failed (NCAAS_ERROR_FILE, or an NCAAS_ERROR line), and
`ncaas status`, the API, the status files and the certificate say it; a task that says
nothing still shows its exit code. Real server on loopback, real manager, real tasks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import read_json

from ncaas.client import Client
from ncaas.executors import _runner
from ncaas.executors.local import ERROR_FILE
from ncaas.testing.servers import ServerProcess, storage_with_user

pytestmark = pytest.mark.timeout(120)

REASON = "recording m.tif is empty (0 bytes): upload it again"


class Site:
    def __init__(self, root: Path, server: ServerProcess, client: Client):
        self.root, self.server, self.client = root, server, client


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A real server on loopback (its manager in the same process) with group lab and a.npy."""
    base = tmp_path_factory.mktemp("reasons")
    root = base / "root"
    token = storage_with_user(root)
    with ServerProcess(root) as server:
        client = Client(server.url, token)
        buf = io.BytesIO()
        np.save(buf, np.random.default_rng(0).random((10, 6, 6), dtype=np.float32))
        (base / "a.npy").write_bytes(buf.getvalue())
        client.upload_dataset(base / "a.npy")
        yield Site(root, server, client)
        client.close()
        assert "Traceback" not in server.log(), server.log()


def _failed(site, config):
    job_id = site.client.submit("framestats", ["a.npy"], config=config)["id"]
    site.client.wait(job_id)
    job = site.client.job(job_id)
    assert job["state"] == "failed", job
    [task] = job["tasks"]
    status = read_json(site.root / "lab" / "results" / job["id"] / "status" / "a.npy.json")
    return job, task, status


def test_the_reason_a_task_gives_is_shown_everywhere(site):
    job, task, status = _failed(site, {"fail_reason": REASON})
    cause = f"exited with code 3: {REASON}"
    assert (task["cause"], task["reason"], task["message"], task["exit_code"]) == (cause, REASON, cause, 3)
    assert (status["cause"], status["reason"]) == (cause, REASON)
    [entry] = site.client.certificate(job["id"])["tasks"]
    assert entry["cause"] == cause
    shown = flat(cli("status", job["id"], "--root", str(site.root)).stdout)
    assert f"a.npy: {cause}" in shown  # in full, below the table that cuts messages short
    assert f"running -> failed ({cause})" in shown
    log = site.client.log(job["id"], "a.npy")
    assert f"[ncaas] the task's reason: {REASON}" in log


def test_an_ncaas_error_line_on_stderr_is_a_reason_too(site):
    _, task, status = _failed(site, {"fail_reason": "no frames in a.npy", "fail_reason_line": True})
    assert task["cause"] == status["cause"] == "exited with code 3: no frames in a.npy"


def test_a_task_that_gives_no_reason_shows_its_exit_code(site):
    job, task, status = _failed(site, {"fail": True})
    assert task["cause"] == status["cause"] == "exited with code 3"
    assert task["reason"] is None and "reason" not in status
    assert "a.npy: exited with code 3" in flat(cli("status", job["id"], "--root", str(site.root)).stdout)


def test_a_long_reason_with_control_characters_is_cleaned_and_capped(site):
    hostile = "\x1b[31mred\x1b[0m\r\nsecond line\t\u202eevil\x00 " + "x" * 5000
    _, task, status = _failed(site, {"fail_reason": hostile})
    reason = task["reason"]
    assert reason == status["reason"] and len(reason) == _runner.REASON_CHARS and reason.endswith("\u2026")
    assert reason.startswith("[31mred [0m second line evil x")  # escapes, bidi override, NUL gone
    assert all(ch.isprintable() for ch in task["cause"])


# -- the supervisor alone: what it refuses to read ------------------------------------------
def _supervise(tmp_path: Path, script: str) -> dict:
    """Run one task under the real supervisor; its exit record."""
    run, scratch = tmp_path / "run", tmp_path / "run" / "scratch"
    scratch.mkdir(parents=True)
    error_file = scratch / ERROR_FILE
    spec = {
        "run_dir": str(run),
        "progress_path": str(run / "progress.json"),
        "log_path": str(tmp_path / "task.log"),
        "output_dir": str(tmp_path / "out"),
        "cwd": str(scratch),
        "env": {**os.environ, "NCAAS_ERROR_FILE": str(error_file)},
        "argv": [sys.executable, "-c", script],
        "timeout": 30,
        "error_file": str(error_file),
    }
    (run / "spec.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, _runner.__file__, str(run / "spec.json")], check=True, timeout=60)
    return read_json(run / "exit.json")


def test_a_reason_file_that_is_a_link_or_a_fifo_is_not_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the platform's secret")
    link = f"import os, sys; os.symlink({str(secret)!r}, os.environ['NCAAS_ERROR_FILE']); sys.exit(2)"
    record = _supervise(tmp_path / "link", link)
    assert record["returncode"] == 2 and "reason" not in record
    fifo = "import os, sys; os.mkfifo(os.environ['NCAAS_ERROR_FILE']); print('NCAAS_ERROR said instead'); sys.exit(2)"
    record = _supervise(tmp_path / "fifo", fifo)  # never opened for a blocking read: the line is used
    assert record["reason"] == "said instead"


def test_a_task_that_succeeds_has_no_reason(tmp_path):
    script = "import os; open(os.environ['NCAAS_ERROR_FILE'], 'w').write('stale')"
    record = _supervise(tmp_path, script)
    assert record["returncode"] == 0 and "reason" not in record


def test_submit_wait_ends_with_the_reason(tmp_path):
    data = tmp_path / "a.npy"
    np.save(data, np.zeros((4, 6, 6), np.float32))
    config = tmp_path / "config.yaml"
    config.write_text(f"fail_reason: '{REASON}'\n")
    env = {"NCAAS_ROOT": str(tmp_path / "root")}
    done = cli("submit", "framestats", str(data), "--config", str(config), "--group", "lab", "--wait", env=env)
    assert done.exit_code == 1
    assert f"a.npy: exited with code 3: {REASON} failed: results in" in flat(done.stdout)
