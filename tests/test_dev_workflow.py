"""`ncaas dev new/run/publish` on a fresh scaffold, with the real command in subprocesses.

The scaffold runs at once: its own test passes, `dev run` runs it through the manager, the
environment build and the sandbox, and shows status, logs, outputs and certificate; `dev publish`
installs it as a version (diffing against the installed one), refuses to republish a version
number with other content, and a job queued before a new version was installed still runs the
version it was submitted with.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ncaas_testutil import ncaas, submit

from ncaas.blueprint import BlueprintRegistry
from ncaas.jobs.db import JobDB, default_db_url
from ncaas.jobs.manager import Manager
from ncaas.storage import Storage

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_an_empty_folder_to_a_published_analysis(tmp_path: Path):
    env = {"NCAAS_BLUEPRINTS": ""}
    made = _ok(ncaas("dev", "new", "spike-count", "--dir", str(tmp_path), env=env))
    folder = tmp_path / "spike-count"
    assert "blueprint.yaml" in made and "requirements.lock" in made
    for rel in ("pyproject.toml", "src/spike_count/__main__.py", "config.yaml", "tests/test_spike_count.py"):
        assert (folder / rel).is_file(), rel
    assert _ok(ncaas("blueprint", "validate", str(folder / "blueprint.yaml")))
    # its own test passes as it is
    test = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder / "tests")],
        capture_output=True,
        text=True,
        cwd=folder,
    )
    assert test.returncode == 0, test.stdout + test.stderr

    ran = _ok(ncaas("dev", "run", str(folder), str(folder / "sample"), "-c", str(folder / "config.yaml"), env=env))
    assert "done: 2 file(s), 31 bytes" in ran  # the log
    assert "outputs/sample/files.csv" in ran and "outputs/sample/summary.json" in ran
    assert "ncaas certificate for job" in ran and "isolation:" in ran
    results = Path(ran.strip().splitlines()[-1].split("results in ")[-1].strip())
    cert = json.loads((results / "certificate.json").read_text())
    assert cert["blueprint"]["name"] == "spike-count" and cert["environment"]["manifest_hash"]
    assert json.loads((results / "outputs" / "sample" / "summary.json").read_text()) == {"files": 2, "bytes": 31}

    # edited between runs, the sample config is run as it is now
    (folder / "config.yaml").write_text("count_lines: false\nmax_files: 1\n")
    again = _ok(ncaas("dev", "run", str(folder), str(folder / "sample"), "-c", str(folder / "config.yaml"), env=env))
    assert "done: 1 file(s)" in again

    installed = tmp_path / "installed"
    first = _ok(ncaas("dev", "publish", str(folder), "--into", str(installed), env=env))
    assert "new analysis spike-count 0.1.0" in first
    assert (installed / "spike-count").resolve() == installed / ".versions" / "spike-count" / "0.1.0"

    # a job queued now keeps version 0.1.0 whatever is installed later
    root = tmp_path / "root"
    (root / "lab" / "inputs").mkdir(parents=True)
    (root / "lab" / "inputs" / "x.txt").write_text("one\ntwo\n")
    storage = Storage(str(root))
    db = JobDB(default_db_url(storage.root))
    manager = Manager(storage, db, registry=BlueprintRegistry.discover([installed]))
    submit(root, "s", {"analysis": "spike-count", "dataname": "x.txt"})
    (queued,) = manager.scan()

    blueprint = folder / "blueprint.yaml"
    text = blueprint.read_text()
    blueprint.write_text(text.replace("memory: 1GiB", "memory: 2GiB"))
    refused = ncaas("dev", "publish", str(folder), "--into", str(installed), "--no-lock", env=env)
    assert refused.returncode != 0
    assert "version 0.1.0 of spike-count is already published with other content" in refused.stdout + refused.stderr
    blueprint.write_text(
        text.replace("memory: 1GiB", "memory: 2GiB")
        .replace("version: 0.1.0", "version: 0.2.0")
        .replace('"--out", "{output}"]', '"--out", "{output}", "--config", "{config}"]')
    )
    second = _ok(ncaas("dev", "publish", str(folder), "--into", str(installed), "--no-lock", env=env))
    for line in ("version: 0.1.0 -> 0.2.0", "resources: memory: 1073741824 -> 2147483648", "command: + {python}"):
        assert line in second, line
    assert (installed / "spike-count").resolve().name == "0.2.0"
    now = BlueprintRegistry.discover([installed]).get("spike-count")
    assert now is not None and now.blueprint.version == "0.2.0"

    job = manager.run_job(queued.id)
    assert job.state == "succeeded", job.cause
    done = json.loads((Path(job.results_dir) / "certificate.json").read_text())
    assert done["blueprint"]["version"] == "0.1.0"
    assert done["blueprint"]["path"].startswith(str(installed / ".versions" / "spike-count" / "0.1.0"))
    db.close()


def test_dev_new_refuses_a_bad_name_and_an_existing_folder_in_one_line(tmp_path: Path):
    bad = ncaas("dev", "new", "Spike Count", "--dir", str(tmp_path), "--no-lock")
    assert bad.returncode != 0 and "'Spike Count' is not an analysis name" in bad.stdout + bad.stderr
    (tmp_path / "taken").mkdir()
    taken = ncaas("dev", "new", "taken", "--dir", str(tmp_path), "--no-lock")
    assert taken.returncode != 0 and "already exists" in taken.stdout + taken.stderr
    assert "Traceback" not in bad.stdout + bad.stderr + taken.stdout + taken.stderr
