"""Links, FIFOs and devices in datasets and outputs: recorded as what they are, never followed or opened.

A folder dataset holding ``z.npy -> /dev/zero``, or a task leaving a FIFO in its
outputs, once made the certificate's hashing block the manager for every group
(SIGTERM ignored, and the same hang after a restart); a link to another group's
input put that file's size and sha256 into the certificate, with the cause "tried
to modify its input". Each test runs a real ``ncaas manager`` subprocess or a real
server; a regression fails on a timeout instead of hanging.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest
from ncaas_testutil import make_blueprint, read_json, start_manager, submit, wait_for, write_stack

from ncaas.isolation.sandbox import SandboxSpec, run

pytestmark = pytest.mark.timeout(240)

SECRET = b"\x93NUMPY other group's unpublished data " * 300  # 11,400 bytes, a size of its own
SECRET_SHA = hashlib.sha256(SECRET).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for name, seed in (("a.npy", 1), ("ds/x.npy", 2), ("ds/y.npy", 3)):
        write_stack(root / "lab" / "inputs" / name, seed=seed)
    write_stack(root / "other" / "inputs" / "b.npy", seed=4)
    (root / "other" / "inputs" / "secret.npy").write_bytes(SECRET)
    return root


class Manager:
    """A real `ncaas manager` over ``root``, stopped (and, if it hangs, killed) at the end."""

    def __init__(self, root: Path, log: Path, env: dict[str, str] | None = None):
        self.root, self.log = root, log
        self.proc = start_manager(root, log, env=env)

    def stop(self, sig: int = signal.SIGTERM, *, within: float = 15.0) -> float:
        """Send ``sig``; the seconds it took to exit. A manager that does not is killed, and the test fails."""
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the manager ignored {signal.Signals(sig).name} for {within} s:\n{self.text()}")
        return time.monotonic() - started

    def text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def manager(root: Path, tmp_path: Path):
    started = Manager(root, tmp_path / "manager.log")
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()


def _ended(folder: Path, *, timeout: float = 60) -> dict:
    end = folder / "end.json"
    return wait_for(lambda: end.exists() and read_json(end), timeout=timeout, what=f"{end}")


def _results(root: Path, group: str) -> list[Path]:
    folder = root / group / "results"
    return sorted(folder.iterdir()) if folder.exists() else []


def _one_job(root: Path, group: str, before: list[Path]) -> Path:
    return wait_for(
        lambda: [d for d in _results(root, group) if d not in before], timeout=60, what=f"a job of {group}"
    )[0]


def _files_text(folder: Path) -> str:
    """Everything the platform wrote into a results folder, as text (for leak checks)."""
    return "\n".join(
        p.read_text(errors="replace")
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink() and "outputs" not in p.parts
    )


# -- a dataset with /dev/zero, a FIFO, another group's file --------------------------------------------
def test_a_dataset_linking_to_dev_zero_or_another_group_is_refused_and_the_manager_serves_on(root, manager):
    ds = root / "lab" / "inputs" / "ds"
    (ds / "z.npy").symlink_to("/dev/zero")
    (ds / "peek.npy").symlink_to(root / "other" / "inputs" / "secret.npy")
    os.mkfifo(root / "lab" / "inputs" / "pipe.npy")
    submit(root, "zero", {"analysis": "framestats", "dataname": ["ds"]})
    lab = _one_job(root, "lab", [])
    submit(root, "pipe", {"analysis": "framestats", "dataname": ["pipe.npy"]})
    submit(root, "theirs", {"analysis": "framestats", "dataname": ["b.npy"]}, group="other")
    other = _one_job(root, "other", [])
    assert _ended(other)["state"] == "succeeded", manager.text()
    assert read_json(lab / "end.json")["state"] == "rejected"
    error = (lab / "error.txt").read_text()
    assert "dataset 'ds' holds what no analysis can read" in error
    assert "peek.npy (a symbolic link to " in error and "z.npy (a symbolic link to /dev/zero)" in error
    assert "copy the linked files into the dataset" in error
    piped = wait_for(
        lambda: [d for d in _results(root, "lab") if d != lab and (d / "error.txt").exists()],
        timeout=30,
        what="the FIFO submission's rejection",
    )[0]
    assert "dataset 'pipe.npy' is a FIFO (named pipe), not a file or folder" in (piped / "error.txt").read_text()
    assert SECRET_SHA not in _files_text(root / "lab" / "results") and "11400" not in _files_text(lab)
    assert manager.stop() < 10


def test_links_and_fifos_planted_in_a_running_dataset_are_never_read(root, manager):
    """The dataset is described once, before its task starts; what is planted in it while the task
    runs is not read by the certificate (it records what the task was told), nor does it stall anything."""
    submit(
        root,
        "slow",
        {"analysis": "framestats", "dataname": ["ds"]},
        config={"sleep_per_frame": 0.15, "batch_frames": 2},
    )  # 40 frames: 3 s
    lab = _one_job(root, "lab", [])
    status = lab / "status" / "ds.json"
    wait_for(lambda: status.exists() and read_json(status).get("progress", 0) > 0, what="the task running")
    ds = root / "lab" / "inputs" / "ds"
    (ds / "z.npy").symlink_to("/dev/zero")  # after the checks: nothing may read it and block
    (ds / "peek.npy").symlink_to(root / "other" / "inputs" / "secret.npy")
    os.mkfifo(ds / "pipe.fifo")
    end = _ended(lab)
    submit(root, "theirs", {"analysis": "framestats", "dataname": ["b.npy"]}, group="other")
    assert _ended(_one_job(root, "other", []))["state"] == "succeeded", manager.text()
    assert end["state"] == "succeeded", manager.text()
    cert = read_json(lab / "certificate.json")
    files = {f["path"]: f for f in cert["tasks"][0]["input"]["files"]}
    assert sorted(files) == ["x.npy", "y.npy"]  # as the task started
    assert files["x.npy"]["sha256"] == hashlib.sha256((ds / "x.npy").read_bytes()).hexdigest()
    assert SECRET_SHA not in (lab / "certificate.json").read_text()
    assert manager.stop() < 10


def test_fifo_or_linked_submit_files_and_configs_are_rejected_unopened(root, manager):
    submissions = root / "lab" / "submissions"
    submissions.mkdir(parents=True)
    os.mkfifo(submissions / "pipe.submit.json")
    theirs = root / "other" / "inputs" / "plan.submit.json"  # another group's file, named like a submission
    theirs.write_text(json.dumps({"analysis": "framestats", "dataname": ["b.npy"]}))
    (submissions / "borrowed.submit.json").symlink_to(theirs)
    (root / "lab" / "configs").mkdir(parents=True)
    os.mkfifo(root / "lab" / "configs" / "cfg.yaml")
    submit(root, "cfgpipe", {"analysis": "framestats", "dataname": ["a.npy"], "configname": "cfg.yaml"})
    errors = wait_for(
        lambda: (
            len(list((root / "lab" / "results").glob("*/error.txt"))) == 3
            and [p.read_text() for p in (root / "lab" / "results").glob("*/error.txt")]
        ),
        what="three rejections",
    )
    text = "\n".join(errors)
    assert "pipe.submit.json is a named pipe (FIFO), not a file; write the submit file itself into lab/" in text
    assert "borrowed.submit.json is a symbolic link, not a file" in text and "b.npy" not in text
    assert "config 'cfg.yaml' is a named pipe (FIFO), not a file" in text
    submit(root, "theirs", {"analysis": "framestats", "dataname": ["b.npy"]}, group="other")
    assert _ended(_one_job(root, "other", []))["state"] == "succeeded", manager.text()
    assert manager.stop() < 10


def test_a_link_planted_before_its_task_starts_is_refused_at_launch(root, tmp_path):
    blueprints = tmp_path / "blueprints"
    make_blueprint(blueprints, "fs-serial", limits={"max_concurrent_tasks": 1})  # ds waits for a.npy
    manager = Manager(root, tmp_path / "manager.log", env={"NCAAS_BLUEPRINTS": str(blueprints)})
    try:
        submit(
            root,
            "serial",
            {"analysis": "fs-serial", "dataname": ["a.npy", "ds"]},
            config={"sleep_per_frame": 0.1, "batch_frames": 2},
        )
        lab = _one_job(root, "lab", [])
        first = lab / "status" / "a.npy.json"
        wait_for(lambda: first.exists() and read_json(first).get("state") == "running", what="a.npy running")
        (root / "lab" / "inputs" / "ds" / "z.npy").symlink_to("/dev/zero")  # accepted at submission, not at launch
        end = _ended(lab)
        cause = read_json(lab / "status" / "ds.json")["cause"]
        assert end["tasks"] == {"a.npy": "succeeded", "ds": "failed"}, manager.text()
        assert cause.startswith(
            "could not start: dataset 'ds' holds what no analysis can read: z.npy (a symbolic link to /dev/zero)"
        ), cause
        assert manager.stop() < 10
    finally:
        if manager.proc.poll() is None:
            manager.proc.kill()


# -- a task leaving a FIFO and links in its outputs ----------------------------------------------------
def test_a_fifo_and_links_left_in_outputs_are_recorded_and_the_manager_serves_on(root, manager):
    secret = str(root / "other" / "inputs" / "secret.npy")
    submit(root, "fifo", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"leave_fifo": True})
    submit(root, "links", {"analysis": "framestats", "dataname": ["ds"]}, config={"leave_symlink": secret})
    submit(
        root,
        "zero",
        {"analysis": "framestats", "dataname": ["a.npy"]},
        config={"leave_symlink": "/dev/zero", "batch_frames": 3},
    )
    jobs = wait_for(lambda: len(_results(root, "lab")) == 3 and _results(root, "lab"), what="three jobs")
    ends = {d: _ended(d) for d in jobs}
    submit(root, "theirs", {"analysis": "framestats", "dataname": ["b.npy"]}, group="other")
    assert _ended(_one_job(root, "other", []))["state"] == "succeeded", manager.text()
    assert all(e["state"] == "succeeded" for e in ends.values()), (ends, manager.text())
    outputs = {}
    for folder in jobs:
        cert = read_json(folder / "certificate.json")
        task = cert["tasks"][0]
        assert task["cause"] == "exited with code 0", task["cause"]
        outputs.update({o["path"]: o for o in task["outputs"]})
        assert SECRET_SHA not in (folder / "certificate.json").read_text()
        assert "modify its input" not in _files_text(folder)
    assert outputs["pipe.fifo"] == {"path": "pipe.fifo", "kind": "fifo"}
    assert any("(fifo, not read)" in (f / "certificate.txt").read_text() for f in jobs)
    assert {"path": "link", "kind": "symlink", "target": secret} in [
        o for f in jobs for o in read_json(f / "certificate.json")["tasks"][0]["outputs"]
    ]
    assert {"path": "link", "kind": "symlink", "target": "/dev/zero"} in [
        o for f in jobs for o in read_json(f / "certificate.json")["tasks"][0]["outputs"]
    ]
    assert manager.stop() < 10


def test_hashing_a_huge_output_holds_up_no_other_job_and_no_stop(root, manager):
    submit(
        root, "sparse", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"leave_sparse_gib": 4096}
    )  # 4 TiB of zeros on no disk: an hour of hashing
    lab = _one_job(root, "lab", [])
    status = lab / "status" / "a.npy.json"
    wait_for(
        lambda: status.exists() and read_json(status).get("state") == "succeeded", timeout=60, what="the task done"
    )
    submit(root, "theirs", {"analysis": "framestats", "dataname": ["b.npy"]}, group="other")
    assert _ended(_one_job(root, "other", []), timeout=45)["state"] == "succeeded", manager.text()
    assert not (lab / "end.json").exists()  # still hashing, beside the loop
    assert manager.stop() < 10


def test_a_manager_killed_on_a_job_that_leaves_a_fifo_finishes_it_after_a_restart(root, tmp_path):
    first = Manager(root, tmp_path / "manager.log")
    try:
        submit(
            root,
            "fifo",
            {"analysis": "framestats", "dataname": ["a.npy"]},
            config={"leave_fifo": True, "sleep_per_frame": 0.1, "batch_frames": 2},
        )
        lab = _one_job(root, "lab", [])
        fifo = lab / "outputs" / "a.npy" / "pipe.fifo"
        wait_for(fifo.exists, what="the FIFO in the outputs")
        first.stop(signal.SIGKILL)
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
    second = Manager(root, tmp_path / "manager.log")
    try:
        assert _ended(lab)["state"] == "succeeded", second.text()
        outputs = read_json(lab / "certificate.json")["tasks"][0]["outputs"]
        assert {"path": "pipe.fifo", "kind": "fifo"} in outputs
        assert second.stop() < 10
    finally:
        if second.proc.poll() is None:
            second.proc.kill()


# -- the sandbox: a link inside a dataset never shows its target -----------------------------------------
def test_a_task_cannot_read_through_a_link_leading_out_of_its_dataset(root, tmp_path):
    ds = root / "lab" / "inputs" / "ds"
    (ds / "peek.npy").symlink_to(root / "other" / "inputs" / "secret.npy")
    out = tmp_path / "out"
    out.mkdir()
    code = f"import sys; sys.stdout.write(open({str(ds / 'peek.npy')!r}, 'rb').read().decode('latin-1'))"
    result = run(["/usr/bin/python3", "-c", code], SandboxSpec(readonly=[ds], writable=[out]), timeout=60)
    assert not result.verdict.ok
    assert "unpublished" not in result.output
    assert result.verdict.reason == "link_outside", result.verdict
    assert "modify its input" not in result.verdict.message
    assert "a symbolic link to" in result.verdict.message and "copy the file into the dataset" in result.verdict.message


# -- reading results and inputs through the API ------------------------------------------------------------
def _other_secret(site) -> Path:
    folder = site.root / "other" / "inputs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "secret.npy").write_bytes(SECRET)
    return folder / "secret.npy"


def test_the_api_serves_no_link_or_fifo_from_results(site):
    client = site.clients["lab"]
    secret = _other_secret(site)
    write_stack(site.root / "lab" / "inputs" / "a.npy", seed=1)
    detail = client.submit("framestats", ["a.npy"], config={"leave_fifo": True, "leave_symlink": str(secret)})
    final = client.wait(detail["id"])
    assert final["state"] == "succeeded", final
    job = final["id"]
    with site.http("lab") as http:
        http.timeout = httpx.Timeout(20)
        listed = {f["path"] for f in http.get(f"/api/jobs/{job}/files").json()}
        assert "outputs/a.npy/a.stats.csv" in listed
        assert not {"outputs/a.npy/pipe.fifo", "outputs/a.npy/link"} & listed
        for name in ("pipe.fifo", "link"):
            assert http.get(f"/api/jobs/{job}/files/outputs/a.npy/{name}").status_code in (400, 404)
        names = zipfile.ZipFile(io.BytesIO(http.get(f"/api/jobs/{job}/results.zip").content)).namelist()
        assert "outputs/a.npy/a.stats.csv" in names and "outputs/a.npy/pipe.fifo" not in names
        csv = http.get(f"/api/jobs/{job}/files/outputs/a.npy/a.stats.csv")
        assert csv.status_code == 200 and csv.text.startswith("frame,")
        part = http.get(f"/api/jobs/{job}/files/outputs/a.npy/a.stats.csv", headers={"Range": "bytes=0-4"})
        assert part.status_code == 206 and part.text == "frame"
        assert SECRET_SHA not in json.dumps(http.get(f"/api/jobs/{job}/certificate").json())


def test_the_api_describes_fifos_and_links_among_inputs_without_opening_them(site):
    inputs = site.root / "lab" / "inputs"
    write_stack(inputs / "ds" / "x.npy", seed=2)
    (inputs / "ds" / "z.npy").symlink_to("/dev/zero")
    (inputs / "ds" / "peek.npy").symlink_to(_other_secret(site))
    (inputs / "mine.npy").symlink_to(inputs / "ds" / "x.npy")
    os.mkfifo(inputs / "pipe.npy")
    with site.http("lab") as http:
        http.timeout = httpx.Timeout(20)  # a FIFO opened, or /dev/zero hashed, would never answer
        pipe = http.get("/api/inputs/pipe.npy")
        assert pipe.status_code == 200 and pipe.json()["kind"] == "fifo", pipe.text
        folder = http.get("/api/inputs/ds", params={"checksums": "true"}).json()
        contents = {c["path"]: c for c in folder["contents"]}
        assert contents["z.npy"] == {"path": "z.npy", "kind": "symlink", "target": "/dev/zero"}
        assert "sha256" not in contents["peek.npy"] and SECRET_SHA not in json.dumps(folder)
        assert folder["size"] == (inputs / "ds" / "x.npy").stat().st_size
        listing = {d["name"]: d for d in http.get("/api/inputs").json()}
        assert listing["pipe.npy"]["kind"] == "fifo" and listing["mine.npy"]["kind"] == "symlink"
        assert listing["ds"] == {
            "name": "ds",
            "kind": "folder",
            "files": 1,
            "size": (inputs / "ds" / "x.npy").stat().st_size,
        }


# -- a zero-byte input --------------------------------------------------------------------------------
def test_an_empty_input_fails_with_one_line_and_no_traceback(site):
    client = site.clients["lab"]
    (site.root / "lab" / "inputs").mkdir(parents=True, exist_ok=True)
    (site.root / "lab" / "inputs" / "empty.npy").write_bytes(b"")
    final = client.wait(client.submit("framestats", ["empty.npy"])["id"])
    assert final["state"] == "failed"
    log = client.log(final["id"], "empty.npy")
    assert "input empty.npy is empty (0 bytes); upload it again" in log
    assert "Traceback" not in log and "EOFError" not in log


@pytest.mark.parametrize("name", ["movie.h5", "movie.tif"])
def test_caliali_says_an_empty_input_is_empty(tmp_path, name):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / name).write_bytes(b"")
    done = subprocess.run(
        [sys.executable, "-m", "caliali", "run", "--input", str(tmp_path / "exp"), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert f"input {name} is empty (0 bytes); upload it again" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout
