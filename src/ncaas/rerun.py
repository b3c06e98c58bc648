"""Rerun a certified job: same blueprint content, same config, same inputs (verified by sha256)."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .blueprint import Blueprint, LoadedBlueprint
from .certificate import compare_outputs, describe_input, load_certificate
from .environments import rerun_mismatch, spec_for_blueprint
from .exceptions import CertificateError
from .jobs.db import Job
from .jobs.manager import Manager
from .storage import check_user_path
from .submission import Dataset, JobRequest, dataset_key

__all__ = ["rerun_certificate"]


def _request(manager: Manager, cert: dict[str, Any]) -> JobRequest:
    bp = cert["blueprint"]
    if "content" not in bp:
        raise CertificateError("the certificate does not hold its blueprint's content; it cannot be rerun")
    loaded = LoadedBlueprint(Blueprint.model_validate(bp["content"]), Path(bp["path"]), bp["sha256"],
                             bp.get("git_commit"), bool(bp.get("git_dirty")))
    group = cert["job"]["group"]
    storage = manager.storage
    datasets, problems = [], []
    for task in cert["tasks"]:
        recorded = task["input"]
        rel = check_user_path(recorded["path"])
        path = storage.resolve(group, "inputs", rel)
        if not storage.exists(path):
            problems.append(f"input {group}/inputs/{rel} no longer exists")
            continue
        now = describe_input(storage, path, rel)
        if now["sha256"] != recorded.get("sha256"):
            problems.append(f"input {group}/inputs/{rel} changed since the certified run "
                            f"(sha256 {recorded.get('sha256', '?')[:12]}… then, {now['sha256'][:12]}… now)")
            continue
        datasets.append(Dataset(dataset_key(rel), rel, path))
    if problems:
        raise CertificateError("cannot rerun on the same inputs:\n  " + "\n  ".join(problems))
    return JobRequest(group, loaded, datasets, cert["config"]["content"], cert["config"].get("name"),
                      {"rerun_of": cert["job"]["id"]})


def rerun_certificate(manager: Manager, cert: dict[str, Any] | str | Path,
                      *, notify: Callable[[str], None] | None = None) -> tuple[Job, list[dict[str, str]]]:
    """Run the certified analysis again, embedded; return the new job and the file-by-file verdicts."""
    if not isinstance(cert, dict):
        cert = load_certificate(cert)
    request = _request(manager, cert)
    # The environment must be the certified one: same lock and analysis source (checked before
    # anything is built), then built from that lock if needed and verified on disk.
    recorded = cert.get("environment") or {}
    spec = spec_for_blueprint(request.blueprint)
    key = spec.key() if spec is not None else {}
    problem, _ = rerun_mismatch(recorded, {"lock_hash": key.get("lock_sha256"),
                                           "source_hash": key.get("source_sha256") or None})
    if problem is not None:
        raise CertificateError(f"cannot rerun job {cert['job']['id']}: {problem}")
    current = dataclasses.asdict(manager.ensure_environment(request.blueprint))
    _, note = rerun_mismatch(recorded, current)
    if note is not None and notify is not None:
        notify(note)
    token = secrets.token_hex(4)
    job = manager.create_job(request, submission=f"rerun of {cert['job']['id']}",
                             key=f"rerun:{cert['job']['id']}:{token}", content_key=f"rerun:{token}")
    if notify is not None:
        notify(f"job {job.id} started; results in {job.results_dir}")
    job = manager.run_job(job.id)
    new_cert = load_certificate(manager.storage.local_path(job.results_dir))
    return job, compare_outputs(cert, new_cert)
