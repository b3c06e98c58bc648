"""Rerun a certified job: same blueprint content, same config, same inputs (verified by sha256)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .blueprint import Blueprint, LoadedBlueprint
from .certificate import compare_outputs, describe_input, load_certificate
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
    token = secrets.token_hex(4)
    job = manager.create_job(request, submission=f"rerun of {cert['job']['id']}",
                             key=f"rerun:{cert['job']['id']}:{token}", content_key=f"rerun:{token}")
    if notify is not None:
        notify(f"job {job.id} started; results in {job.results_dir}")
    job = manager.run_job(job.id)
    new_cert = load_certificate(manager.storage.local_path(job.results_dir))
    return job, compare_outputs(cert, new_cert)
