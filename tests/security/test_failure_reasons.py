"""A task's failure reason is read by the platform, outside the sandbox: it must never be a way
to read what the task cannot.

The supervisor reads the file ``NCAAS_ERROR_FILE`` names after the task ends, with the
platform's rights. A task that makes that file a link to one of the platform's files (here
another group's input, which the task's sandbox does not show) would otherwise have that
file's text shown as its failure reason, in the API, the status files and the certificate.
(A supervisor that opened the reason file with a plain ``open`` fails this test.)

What a task says (its reason, its progress messages) is shown by ``ncaas status`` too: rich
markup in it (``[/x]``) once stopped the command with a MarkupError, and `ncaas manager`, which
prints every task's end with its cause, with it.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from ncaas_clirunner import cli, flat
from ncaas_testutil import start_manager, stop, submit, wait_for, write_stack

from .conftest import finished

pytestmark = pytest.mark.timeout(120)

SECRET = "other group's unpublished result: 42 place cells"


def test_a_reason_file_linked_to_another_groups_input_is_not_read(site):
    secret = site.root / "other" / "inputs" / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text(SECRET)
    client = site.clients["lab"]
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 6, 6), np.float32))
    (site.base / "a.npy").write_bytes(buf.getvalue())
    client.upload_dataset(site.base / "a.npy")
    job = finished(client, client.submit("framestats", ["a.npy"], config={"fail_reason_link": str(secret)}))
    assert job["state"] == "failed", job
    [task] = client.job(job["id"])["tasks"]
    assert task["cause"] == "exited with code 3" and task["reason"] is None
    results = site.root / "lab" / "results" / job["id"]
    shown = [json.dumps(client.job(job["id"])), json.dumps(client.certificate(job["id"]))]
    shown += [p.read_text() for p in results.rglob("*.json")] + [client.log(job["id"], "a.npy")]
    assert not [text for text in shown if "place cells" in text]


def test_markup_in_a_tasks_words_is_shown_as_text_by_ncaas_status(site):
    client = site.clients["lab"]
    buf = io.BytesIO()
    np.save(buf, np.zeros((4, 6, 6), np.float32))
    (site.base / "b.npy").write_bytes(buf.getvalue())
    client.upload_dataset(site.base / "b.npy")
    said = "[/x] [bold red]not bold[/] [link=file:///etc]x[/link]"
    job = finished(client, client.submit("framestats", ["b.npy"], config={"fail_reason": said}))
    assert job["state"] == "failed", job
    shown = cli("status", job["id"], "--root", str(site.root))
    assert shown.exit_code == 0, shown.output
    assert f"b.npy: exited with code 3: {said}" in flat(shown.stdout)
    assert f"running -> failed (exited with code 3: {said})" in flat(shown.stdout)


def test_markup_in_a_tasks_reason_does_not_stop_ncaas_manager(tmp_path):
    """`ncaas manager` prints every task's end with its cause; a reason with `[/x]` once raised there."""
    root = tmp_path / "root"
    write_stack(root / "lab" / "inputs" / "a.npy")
    log = tmp_path / "manager.log"
    manager = start_manager(root, log)
    try:
        said = "[/x] closes nothing"
        submit(root, "first", {"analysis": "framestats", "dataname": ["a.npy"]}, config={"fail_reason": said})
        wait_for(lambda: list((root / "lab" / "results").glob("*/end.json")), timeout=60, what="the first job")
        submit(root, "second", {"analysis": "framestats", "dataname": ["a.npy"]})
        wait_for(lambda: len(list((root / "lab" / "results").glob("*/end.json"))) == 2, timeout=60, what="the next")
        assert manager.poll() is None, log.read_text()
        assert f"a.npy failed (exited with code 3: {said})" in " ".join(log.read_text().split())
    finally:
        stop(manager)
