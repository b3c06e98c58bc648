"""Attacks through submissions: dataset names that collide, submit files too large, too deep or
no files at all, configs that expand or block, group folders the manager cannot use.

Each runs against a real ``ncaas serve`` (its job manager in the same process) or a real
``ncaas manager``, with files written into storage as a plain file copy would.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ncaas_clirunner import flat
from ncaas_testutil import ncaas, start_manager, submit, wait_for, write_stack

from ncaas.exceptions import SubmissionRejected

pytestmark = pytest.mark.timeout(180)


def _db_row(root: Path, job_id: str) -> tuple[str, int]:
    """The job's cause and the total length of its events' causes, read from the database file."""
    with sqlite3.connect(f"file:{root / '.ncaas' / 'jobs.sqlite'}?mode=ro", uri=True) as db:
        cause = db.execute("SELECT cause FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        events = db.execute(
            "SELECT coalesce(sum(length(cause)), 0) FROM events WHERE job_id = ?", (job_id,)
        ).fetchone()[0]
    return cause, events


def _rejected(site, group: str, submission: str, *, timeout: float = 30) -> dict:
    def find():
        return next((j for j in site.clients[group].jobs() if j["submission"] == submission), None)

    return wait_for(find, timeout=timeout, what=f"the job of {submission}")


def _finished_within(client, job: dict, seconds: float) -> dict:
    def over():
        detail = client.job(job["id"])
        return detail if detail["finished"] else None

    return wait_for(
        over, timeout=seconds, what=f"job {job['id']} to finish while another group's submission is checked"
    )


# -- colliding dataset names ----------------------------------------------------------------
def test_colliding_dataset_names_each_run_on_their_own_data(site):
    """``x/y.npy`` and ``x__y.npy`` once both became the key ``x__y.npy``: one run folder, one
    output folder, and a certificate crediting the wrong input. Each now has its own key, its own
    run on its own data, and the certificate maps each key to the right input."""
    inputs = site.root / "lab" / "inputs"
    nested = write_stack(inputs / "x" / "y.npy", frames=20, seed=11)
    flat_ = write_stack(inputs / "x__y.npy", frames=30, seed=12)
    client = site.clients["lab"]
    job = client.wait(client.submit("framestats", ["x/y.npy", "x__y.npy"])["id"])
    assert job["state"] == "succeeded", job
    keys = {t["input"]: t["dataset"] for t in job["tasks"]}
    assert set(keys) == {"x/y.npy", "x__y.npy"} and len(set(keys.values())) == 2, keys
    assert keys["x/y.npy"] == "x__y.npy"  # an ordinary nested name keeps the key it always had

    results = site.root / "lab" / "results" / job["id"]
    rows = {
        rel: (results / "outputs" / key / f"{Path(rel).stem}.stats.csv").read_text().splitlines()
        for rel, key in keys.items()
    }
    assert len(rows["x/y.npy"]) == 1 + 20 and len(rows["x__y.npy"]) == 1 + 30  # each read its own stack
    for rel, key in keys.items():
        assert client.log(job["id"], key).count("[ncaas] exited with code 0") == 1  # one run each
        status = json.loads((results / "status" / f"{key}.json").read_text())
        assert status["input"] == rel and status["state"] == "succeeded"

    embedded = ["--root", str(site.root)]
    status = flat(ncaas("status", job["id"], *embedded, check=True).stdout)
    assert "x%5F%5Fy.npy is dataset x__y.npy" in status
    for rel, frames in (("x/y.npy", 20), ("x__y.npy", 30)):  # logs asked for by the dataset's name
        log = ncaas("logs", job["id"], rel, *embedded, check=True).stdout
        assert f"{frames}/{frames} frames" in log and log.count("[ncaas] exited with code 0") == 1, log

    cert = client.certificate(job["id"])
    by_key = {t["dataset"]: t["input"] for t in cert["tasks"]}
    for rel, local in (("x/y.npy", nested), ("x__y.npy", flat_)):
        assert by_key[keys[rel]]["path"] == rel
        assert by_key[keys[rel]]["sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()


def test_names_differing_only_in_case_are_refused_naming_both(site):
    """``A.npy`` and ``a.npy`` are one file where case is not told apart (macOS, Windows, a
    downloaded results zip): their results would overwrite each other. The submission is refused,
    naming both; naming one dataset three ways is one line."""
    inputs = site.root / "lab" / "inputs"
    write_stack(inputs / "Case.npy", seed=1)
    write_stack(inputs / "case.npy", seed=2)
    with pytest.raises(SubmissionRejected) as caught:
        site.clients["lab"].submit("framestats", ["Case.npy", "case.npy"])
    assert caught.value.problems == [
        "datasets 'Case.npy' and 'case.npy' differ only in letter case; their results would overwrite each "
        "other on file systems that ignore case (macOS, Windows): rename one"
    ]
    with pytest.raises(SubmissionRejected) as caught:
        site.clients["lab"].submit("framestats", ["case.npy", "./case.npy", "lab/inputs/case.npy"])
    assert caught.value.problems == [
        "dataset './case.npy' is listed twice; list each dataset once (and 1 more like it)"
    ]


# -- submissions too large to read ---------------------------------------------------------
def test_a_huge_submit_file_is_refused_unread_while_other_groups_run(site):
    """A 2 MB submit file naming one dataset 200,000 times once wrote 200,000 error lines (11 MB)
    into the database and stalled the manager for minutes. It is now refused unread, in one short
    line, and a job another group submits right after it starts and finishes at once."""
    write_stack(site.root / "lab" / "inputs" / "a.npy", seed=3)
    write_stack(site.root / "other" / "inputs" / "b.npy", seed=4)
    body = {"analysis": "framestats", "dataname": ["./a.npy"] * 200_000, "timestamp": "huge"}
    huge = submit(site.root, "huge", body)
    assert huge.stat().st_size > 2_000_000
    started = time.monotonic()
    other = site.clients["other"]
    job = _finished_within(other, other.submit("framestats", ["b.npy"]), 60)
    assert job["state"] == "succeeded" and time.monotonic() - started < 60, job

    rejected = _rejected(site, "lab", "huge.submit.json")
    assert rejected["state"] == "rejected"
    size = f"{huge.stat().st_size / 2**20:.1f} MiB"
    assert rejected["cause"] == (
        f"huge.submit.json is {size}, more than the 1 MiB a submit file may be; "
        "nothing in it was read: split it into several submissions"
    )
    cause, events = _db_row(site.root, rejected["id"])
    assert len(cause) < 200 and events < 500
    error = (site.root / "lab" / "results" / rejected["id"] / "error.txt").read_text()
    assert len(error) < 400 and f"huge.submit.json is {size}" in error


def test_a_deeply_nested_submit_file_is_one_line_and_the_manager_runs_on(site):
    """``[[[[...`` 50,000 deep made Python's JSON parser raise RecursionError out of the manager's
    scan, at every scan: no job of any group started again. It is one line now."""
    write_stack(site.root / "other" / "inputs" / "c.npy", seed=5)
    deep = site.root / "lab" / "submissions" / "deep.submit.json"
    deep.parent.mkdir(parents=True, exist_ok=True)
    deep.write_text('{"dataname": ' + "[" * 50_000 + "]" * 50_000 + "}")
    started = time.monotonic()
    other = site.clients["other"]
    job = _finished_within(other, other.submit("framestats", ["c.npy"]), 60)
    assert job["state"] == "succeeded" and time.monotonic() - started < 60, job
    rejected = _rejected(site, "lab", "deep.submit.json")
    assert rejected["cause"].startswith("deep.submit.json nests lists or objects too deeply; expected e.g. {")


def test_submit_files_and_configs_that_are_no_files_are_refused_unopened(site):
    """A FIFO named ``x.submit.json`` blocked the manager's scan on open() for good, a folder of that
    name made every scan fail, and a link read another group's submit file as this group's. All
    are refused without being opened, and the other group's job runs meanwhile; a FIFO as config
    is refused the same way."""
    write_stack(site.root / "other" / "inputs" / "d.npy", seed=6)
    write_stack(site.root / "lab" / "inputs" / "a.npy", seed=3)
    submissions = site.root / "lab" / "submissions"
    submissions.mkdir(parents=True, exist_ok=True)
    os.mkfifo(submissions / "pipe.submit.json")
    secret = submit(site.root, "secret", {"analysis": "framestats", "dataname": ["their-secret.npy"]}, group="other")
    (submissions / "link.submit.json").symlink_to(secret)
    (submissions / "folder.submit.json").mkdir()  # read() raised out of every scan: nothing else ran
    started = time.monotonic()
    other = site.clients["other"]
    job = _finished_within(other, other.submit("framestats", ["d.npy"]), 60)
    assert job["state"] == "succeeded" and time.monotonic() - started < 60, job
    pipe = _rejected(site, "lab", "pipe.submit.json")
    assert pipe["cause"] == (
        "pipe.submit.json is a named pipe (FIFO), not a file; write the submit file itself into lab/submissions/"
    )
    link = _rejected(site, "lab", "link.submit.json")
    assert link["cause"].startswith("link.submit.json is a symbolic link, not a file")
    assert "their-secret" not in json.dumps(site.clients["lab"].jobs())
    folder = _rejected(site, "lab", "folder.submit.json")
    assert folder["cause"].startswith("folder.submit.json is a folder, not a file")

    configs = site.root / "lab" / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    os.mkfifo(configs / "pipe.yaml")
    with pytest.raises(SubmissionRejected) as caught:
        site.clients["lab"].submit("framestats", ["a.npy"], configname="pipe.yaml")
    assert caught.value.problems == ["config 'pipe.yaml' is a named pipe (FIFO), not a file; upload the config itself"]


def test_configs_too_large_or_made_of_aliases_are_refused_unexpanded(site):
    """A config is read within the same limit as a submit file; YAML aliases, which let ten lines
    stand for millions of values the manager would check and write out, are refused."""
    write_stack(site.root / "lab" / "inputs" / "a.npy", seed=3)
    configs = site.root / "lab" / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    lines = ["l0: &l0 [1, 2, 3, 4, 5, 6, 7, 8]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 8)}]" for i in range(1, 7)]
    (configs / "bomb.yaml").write_text("\n".join(lines) + "\nkill_on_attempts: *l6\n")
    (configs / "big.yaml").write_text("stats: [mean]\n" + "# padding\n" * 160_000)
    client = site.clients["lab"]
    with pytest.raises(SubmissionRejected) as caught:
        client.submit("framestats", ["a.npy"], configname="bomb.yaml")
    assert caught.value.problems == [
        "config 'bomb.yaml' uses a YAML alias (*name) at line 2; write the value out in full"
    ]
    with pytest.raises(SubmissionRejected) as caught:
        client.submit("framestats", ["a.npy"], configname="big.yaml")
    assert caught.value.problems == [
        "config 'big.yaml' is 1.5 MiB, more than the 1 MiB a config may be; nothing in it was read"
    ]


def test_too_many_datasets_through_the_api_is_one_line(site):
    """A submission over the dataset limit is refused before any name is looked up."""
    with pytest.raises(SubmissionRejected) as caught:
        site.clients["lab"].submit("framestats", [f"d{i}.npy" for i in range(10_001)], name="many")
    assert caught.value.problems == [
        "the submission lists 10,001 datasets, more than the 10,000 a job may have; split it into several submissions"
    ]
    cause, events = _db_row(site.root, caught.value.job["id"])
    assert len(cause) < 200 and events < 500


def test_repeated_problems_are_summarised(site):
    """Hundreds of missing names are one line with a count; beyond 20 distinct problems the
    rest are counted, not listed."""
    names = [f"gone{i}.npy" for i in range(300)] + ["/etc/passwd", "/etc/shadow"]
    with pytest.raises(SubmissionRejected) as caught:
        site.clients["lab"].submit("framestats", names, config={f"opt{i}": 1 for i in range(25)})
    problems = caught.value.problems
    assert problems[0] == ("dataset 'gone0.npy' not found in lab/inputs/; upload it there first (and 299 more like it)")
    assert problems[1].startswith("dataname: '/etc/passwd' is an absolute path") and problems[1].endswith(
        "(and 1 more like it)"
    )
    assert len(problems) == 21 and problems[-1] == "... and 7 more problems"
    cause, events = _db_row(site.root, caught.value.job["id"])
    assert len(cause) < 8000  # 21 lines, each unknown-option line naming all of framestats' ~20 options


def test_limits_are_configurable_for_the_manager_and_the_cli(tmp_path):
    """``ncaas manager --max-submit-size`` refuses a larger submit file by a plain file copy;
    ``NCAAS_MAX_DATASETS`` caps ``ncaas submit``."""
    root = tmp_path / "root"
    for name in ("a.npy", "b.npy"):
        write_stack(root / "lab" / "inputs" / name)
    env = {"NCAAS_ROOT": str(root)}
    done = ncaas("submit", "framestats", "a.npy", "b.npy", "--group", "lab", env={**env, "NCAAS_MAX_DATASETS": "1"})
    assert done.returncode == 2, done.stderr
    assert "the submission lists 2 datasets, more than the 1 a job may have" in flat(done.stderr)
    assert "Traceback" not in done.stderr

    path = submit(root, "padded", {"analysis": "framestats", "dataname": ["a.npy"], "timestamp": "x" * 3000})
    log = tmp_path / "manager.log"
    with open(log, "wb") as fh:
        manager = subprocess.Popen(
            [sys.executable, "-m", "ncaas", "manager", "--root", str(root), "--max-submit-size", "2KiB"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: "padded.submit.json is 3 KiB, more than the 2 KiB" in flat(log.read_text()),
            timeout=60,
            what="the rejection in the manager's log",
        )
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=30)
    assert path.exists()  # nothing a user wrote is removed


# -- group folders the manager skips --------------------------------------------------------
def test_folders_that_are_no_group_are_reported_once(tmp_path):
    """``bad group/`` and ``.hidden/`` hold submissions the manager never runs: its log says so
    once per folder (not at every scan), and ``ncaas status`` shows a note. The manager's own
    ``.ncaas`` folder is no group and is not reported."""
    root = tmp_path / "root"
    write_stack(root / "lab" / "inputs" / "a.npy")
    for folder in ("bad group", ".hidden"):
        submit(root, "s", {"analysis": "framestats", "dataname": ["a.npy"]}, group=folder)
    (root / "lost+found").mkdir()  # a folder without submissions/ is none of the manager's business
    log = tmp_path / "manager.log"
    manager = start_manager(root, log)
    try:
        wait_for(
            lambda: log.read_text().count("holds submissions/") >= 2,
            timeout=60,
            what="the skipped folders in the manager's log",
        )
        time.sleep(1.0)  # twenty scans more
    finally:
        manager.send_signal(signal.SIGTERM)
        manager.wait(timeout=30)
    text = flat(log.read_text())
    assert text.count("'bad group' holds submissions/") == 1, text
    assert text.count("'.hidden' holds submissions/") == 1, text
    assert (
        "folder 'bad group' holds submissions/ but its name is not a valid group name, so they are not run; "
        "rename it: group names use letters, digits" in text
    )
    assert "folder '.hidden' holds submissions/ but its name is hidden (its name starts with '.')" in text
    assert ".ncaas" not in text.replace(str(root / ".ncaas"), "") and "lost+found" not in text

    status = flat(ncaas("status", "--root", str(root), check=True).stdout)
    assert "note: folder 'bad group' holds submissions/" in status
    assert "note: folder '.hidden' holds submissions/" in status
    assert "lost+found" not in status and "'.ncaas'" not in status
