"""A certificate is a record, never a command.

The attacks: a group member posts a forged certificate whose blueprint points at a package
with a build hook in its own inputs (code execution on the host), names an analysis that is
not installed with a shell command, raises resources, is malformed, or carries framestats'
real sha256 with another command (poisoning the blueprint cache for the next group's job).
Every one is refused before anything is built or run; genuine reruns still work, by job and
from a signed certificate file.
"""

from __future__ import annotations

import copy
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ncaas_testutil import REPO, make_blueprint, ncaas, submit, write_stack

from ncaas.blueprint import BlueprintRegistry
from ncaas.exceptions import CertificateError, CertificateForged
from ncaas.jobs.db import JobDB, default_db_url
from ncaas.jobs.manager import Manager
from ncaas.provenance.rerun import rerun
from ncaas.provenance.signing import CertificateKeys
from ncaas.storage import Storage

from .conftest import finished

HOOK = """
from pathlib import Path
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

class Hook(BuildHookInterface):
    def initialize(self, version, build_data):
        Path("{marker}").write_text("the build hook ran on the host")
"""


def _npy(seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(seed).random((10, 6, 6), dtype=np.float32))
    return buf.getvalue()


@pytest.fixture(scope="module")
def lab_job(site):
    """A finished framestats job of group lab, and its certificate as the API serves it."""
    client = site.clients["lab"]
    for seed, name in enumerate(("a.npy", "b.npy")):
        (site.base / name).write_bytes(_npy(seed))
        client.upload_dataset(site.base / name)
    job = finished(client, client.submit("framestats", ["a.npy", "b.npy"]))
    assert job["state"] == "succeeded", job
    return job, client.certificate(job["id"])


def _hostile_package(site, marker: Path) -> str:
    """A package with a build hook, uploaded by group lab into its own inputs/evil/."""
    folder = site.base / "evil"
    folder.mkdir(exist_ok=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "evil"\nversion = "1"\n[tool.hatch.build.targets.wheel]\nbypass-selection = true\n'
        '[tool.hatch.build.hooks.custom]\npath = "hook.py"\n'
    )
    (folder / "hook.py").write_text(HOOK.format(marker=marker))
    (folder / "blueprint.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "evil",
                "version": "1",
                "environment": {"source": "."},
                "command": ["{python}", "-c", "pass", "{input}", "{output}"],
            }
        )
    )
    site.clients["lab"].upload_dataset(folder)
    return str(site.root / "lab" / "inputs" / "evil")


def _jobs(site, group: str = "lab") -> set[str]:
    return {j["id"] for j in site.clients[group].jobs()}


def _refused(site, cert, *, group: str = "lab") -> dict:
    before = _jobs(site, group)
    with site.http(group) as http:
        resp = http.post("/api/rerun", json=cert)
    assert resp.status_code in (400, 403), resp.text
    assert _jobs(site, group) == before  # nothing was queued
    return resp.json()


def test_a_forged_blueprint_path_never_builds_or_runs(site, lab_job, tmp_path):
    _, cert = lab_job
    marker = tmp_path / "pwned"
    evil = _hostile_package(site, marker)
    forged = copy.deepcopy(cert)
    forged["blueprint"]["path"] = f"{evil}/blueprint.yaml"
    forged["blueprint"]["content"]["environment"] = {"source": "."}
    forged["blueprint"]["content"]["command"] = ["sh", "-c", f"touch {marker}", "{input}", "{output}"]
    body = _refused(site, forged)
    assert "changed after this platform signed it" in body["error"]
    time.sleep(2)  # a build, had one started, would have run its hook by now
    assert not marker.exists()


def test_an_unsigned_certificate_naming_an_analysis_not_installed_is_refused(site, lab_job, tmp_path):
    _, cert = lab_job
    marker = tmp_path / "shell"
    forged = copy.deepcopy(cert)
    forged.pop("signature")
    forged["blueprint"] = {
        "name": "shell",
        "version": "1",
        "sha256": "0" * 64,
        "path": "/tmp/b.yaml",
        "content": {
            "name": "shell",
            "version": "1",
            "command": ["sh", "-c", f"touch {marker}", "{input}", "{output}"],
            "resources": {"memory": "64GiB", "timeout": "30d"},
            "access": {"groups": ["*"]},
        },
    }
    body = _refused(site, forged)
    assert "carries no signature of this platform" in body["error"]
    time.sleep(1)
    assert not marker.exists()


def test_raised_resources_and_malformed_blueprints_are_refused_cleanly(site, lab_job):
    _, cert = lab_job
    raised = copy.deepcopy(cert)
    raised["blueprint"]["content"]["resources"] = {"memory": "64GiB", "timeout": "30d", "cpus": 64}
    _refused(site, raised)
    for broken in ("not a blueprint", {"name": 3}, None, [1, 2]):
        malformed = copy.deepcopy(cert)
        malformed["blueprint"] = broken
        _refused(site, malformed)
    for body in ("[]", "3", '{"job": 1}', '"text"'):
        with site.http("lab") as http:
            resp = http.post("/api/rerun", content=body, headers={"content-type": "application/json"})
        assert resp.status_code in (400, 403, 422), resp.text


def test_a_forged_certificate_cannot_poison_another_groups_next_job(site, lab_job, tmp_path):
    _, cert = lab_job
    marker = tmp_path / "poisoned"
    forged = copy.deepcopy(cert)  # framestats' real sha256, another command
    forged["blueprint"]["content"]["command"] = [
        "sh",
        "-c",
        f"touch {marker}; mkdir -p {{output}}",
        "{input}",
        "{output}",
    ]
    _refused(site, forged)
    other = site.clients["other"]
    (site.base / "o.npy").write_bytes(_npy(7))
    other.upload_dataset(site.base / "o.npy")
    job = finished(other, other.submit("framestats", ["o.npy"]))
    assert job["state"] == "succeeded", job
    argv = other.certificate(job["id"])["tasks"][0]["argv"]
    assert argv[1:3] == ["-m", "framestats"] and not marker.exists()


def test_the_manager_never_trusts_a_recorded_blueprint_that_does_not_match_its_hash(tmp_path):
    """Defence in depth: a job record carrying a real sha256 with other content is refused."""
    root = tmp_path / "root"
    write_stack(root / "lab" / "inputs" / "a.npy")
    registry = BlueprintRegistry.discover([REPO / "analyses"])
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    manager = Manager(storage, db, registry=registry)
    job = manager.ingest_file("lab", str(submit(root, "s", {"analysis": "framestats", "dataname": "a.npy"})))
    info = job.blueprint
    info["content"]["command"] = ["sh", "-c", "echo poisoned", "{input}", "{output}"]
    db.update_job(job.id, blueprint_json=json.dumps(info))
    for archived in (storage.state_dir() / "blueprints").glob("*.json"):
        archived.chmod(0o644)
        archived.unlink()
    fresh = Manager(storage, db, registry=registry)
    with pytest.raises(Exception, match="does not match its sha256"):
        fresh.loaded_blueprint(db.job(job.id))
    db.close()


def test_genuine_reruns_work_by_job_and_from_the_signed_file(site, lab_job):
    job, cert = lab_job
    lab = site.clients["lab"]
    by_id = finished(lab, lab.rerun(job["id"]))
    from_file = finished(lab, lab.rerun_certificate(cert))
    for new in (by_id, from_file):
        assert new["state"] == "succeeded", new
        rows = lab.compare(new["id"], cert)
        assert rows and all(r["verdict"] == "identical" for r in rows), rows
    with site.http("other") as http:  # another group: neither its job nor its certificate
        assert http.post(f"/api/jobs/{job['id']}/rerun").status_code == 404
        assert http.post("/api/rerun", json=cert).status_code == 403


def test_a_stored_certificate_altered_in_group_storage_is_refused(site, lab_job):
    job, _ = lab_job
    stored = site.root / "lab" / "results" / job["id"] / "certificate.json"
    original = stored.read_text()
    altered = json.loads(original)
    altered["config"]["content"]["cpu_seconds"] = 5
    stored.write_text(json.dumps(altered))
    try:
        with site.http("lab") as http:
            resp = http.post(f"/api/jobs/{job['id']}/rerun")
        assert resp.status_code == 403 and "changed after this platform signed it" in resp.json()["error"]
    finally:
        stored.write_text(original)


# -- embedded: the CLI, the archive, access, keys ------------------------------------------
@pytest.fixture
def embedded(tmp_path):
    root = tmp_path / "root"
    write_stack(root / "lab" / "inputs" / "a.npy")
    folder = tmp_path / "blueprints"
    make_blueprint(folder, "fs-copy", description="version one")
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    manager = Manager(storage, db, registry=BlueprintRegistry.discover([folder]))
    job = manager.ingest_file("lab", str(submit(root, "s", {"analysis": "fs-copy", "dataname": "a.npy"})))
    job = manager.run_job(job.id)
    assert job.state == "succeeded", job.cause
    yield manager, job, folder, root
    db.close()


def test_the_cli_reruns_by_job_and_refuses_a_forged_file(embedded, tmp_path):
    manager, job, folder, root = embedded
    env = {"NCAAS_BLUEPRINTS": str(folder)}
    done = ncaas("rerun", job.id, "--root", str(root), env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 identical, 0 equal within tolerance, 0 different" in done.stdout, done.stdout
    cert = json.loads((Path(job.results_dir) / "certificate.json").read_text())
    cert["config"]["content"]["fail"] = True
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(cert))
    before = len(manager.db.jobs())
    done = ncaas("rerun", str(forged), "--root", str(root), env=env)
    assert done.returncode == 5 and "changed after this platform signed it" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(manager.db.jobs()) == before


def test_an_upgraded_analysis_reruns_its_archived_version(embedded):
    manager, job, folder, root = embedded
    path = folder / "fs-copy" / "blueprint.yaml"
    data = yaml.safe_load(path.read_text())
    data["description"] = "version two"
    data["resources"]["memory"] = "2GiB"
    path.write_text(yaml.safe_dump(data))
    upgraded = Manager(manager.storage, manager.db, registry=BlueprintRegistry.discover([folder]))
    new, rows = rerun(upgraded, job.id)
    assert new.state == "succeeded" and all(r["verdict"] == "identical" for r in rows)
    assert new.blueprint["sha256"] == job.blueprint["sha256"]  # the version that ran, not the installed one
    assert upgraded.loaded_blueprint(new).blueprint.description == "version one"


def test_a_version_missing_from_the_archive_is_refused(embedded, tmp_path):
    manager, job, folder, root = embedded
    for archived in (manager.state_dir / "blueprints").glob("*.json"):
        archived.chmod(0o644)
        archived.unlink()
    other_db = JobDB(f"sqlite:///{tmp_path / 'other.sqlite'}")  # a database that never saw the job
    stranger = Manager(manager.storage, other_db, registry=BlueprintRegistry.discover([folder]))
    with pytest.raises(CertificateError, match="never ran on this platform"):
        rerun(stranger, str(Path(job.results_dir) / "certificate.json"))
    other_db.close()


def test_access_comes_from_the_installed_analysis(embedded):
    manager, job, folder, root = embedded
    path = folder / "fs-copy" / "blueprint.yaml"
    data = yaml.safe_load(path.read_text())
    data["access"] = {"groups": ["vip"]}
    path.write_text(yaml.safe_dump(data))
    revoked = Manager(manager.storage, manager.db, registry=BlueprintRegistry.discover([folder]))
    with pytest.raises(CertificateError, match="group 'lab' is not allowed to run 'fs-copy'"):
        rerun(revoked, job.id)


def test_keys_are_private_rotate_and_retire(embedded):
    manager, job, folder, root = embedded
    keys = CertificateKeys(manager.state_dir)
    first = keys.current_id()
    assert (keys.dir.stat().st_mode & 0o777) == 0o700
    assert ((keys.dir / f"{first}.key").stat().st_mode & 0o777) == 0o600
    cert = json.loads((Path(job.results_dir) / "certificate.json").read_text())
    done = ncaas("admin", "rotate-key", "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert keys.current_id() != first
    keys.verify(cert)  # signed by the old key, which still verifies
    assert ncaas("admin", "retire-key", first, "--root", str(root)).returncode == 0
    with pytest.raises(CertificateForged, match="key this platform does not hold"):
        keys.verify(cert)
    assert keys.verify(keys.sign(cert))["signature"]["key"] == keys.current_id()
