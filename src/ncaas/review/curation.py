"""The curation job: the analysis' ``review.curate`` command on a reviewed dataset and its decisions.

It is an ordinary job of the reviewed job's analysis, in the same blueprint version and
environment. Its dataset is the reviewed dataset's outputs, read where they lie (like a chain
step's input); the decisions file is written once into the reviewed job's results
(``reviews/<dataset>/decisions-<seq>-<time>.json``) and never overwritten. Its certificate's
``review`` block names the reviewed job's certificate and the decisions file, both by sha256,
and a rerun checks both before running again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import TYPE_CHECKING, Any

from ..blueprint import LoadedBlueprint
from ..exceptions import CertificateError, NcaasError
from ..jobs.db import Job
from ..submission import Dataset, JobRequest, submission_timestamp
from .decisions import Entry

if TYPE_CHECKING:
    from ..jobs.manager import Manager

__all__ = ["reviewable", "review_request", "start_curation"]


def reviewable(manager: Manager, job: Job) -> LoadedBlueprint:
    """The blueprint version ``job`` ran, when it declares ``review``; else a NcaasError saying why not."""
    if job.state == "rejected" or not job.analysis:
        raise NcaasError(f"job {job.id} was rejected; it has no neurons to review")
    loaded = manager.loaded_blueprint(job)
    if loaded.blueprint.review is None:
        raise NcaasError(
            f"analysis {loaded.name} {loaded.blueprint.version} declares no review block; "
            "its results cannot be reviewed in the web page"
        )
    return loaded


def _reviewers(log: list[Entry]) -> list[dict[str, Any]]:
    by: dict[str, dict[str, Any]] = {}
    for entry in log:
        seen = by.setdefault(entry.user, {"user": entry.user, "actions": 0, "first": entry.at, "last": entry.at})
        seen["actions"] += 1
        seen["last"] = entry.at
    return sorted(by.values(), key=lambda r: r["first"])


def start_curation(manager: Manager, job: Job, dataset: str, *, user: str, document: bytes, log: list[Entry]) -> Job:
    """Write the decisions file ``document`` and queue the curation of ``job``'s ``dataset``."""
    storage = manager.storage
    loaded = reviewable(manager, job)
    if job.state != "succeeded" or not job.finalized:
        raise NcaasError(f"job {job.id} is {job.state}; review it once it has succeeded and its certificate is written")
    cert_path = f"{job.results_dir}/certificate.json"
    certificate = storage.read_bytes(cert_path)
    rel = f"{job.id}/outputs/{dataset}"
    seq = log[-1].seq if log else 0
    decisions = f"{job.results_dir}/reviews/{dataset}/decisions-{seq:05d}-{submission_timestamp()}.json"
    if storage.exists(decisions):
        raise NcaasError(f"{storage.relative(decisions)} already exists; finish the review again in a moment")
    storage.write_bytes(decisions, document)
    review = {
        "job": job.id,
        "dataset": dataset,
        "analysis": loaded.name,
        "certificate": storage.relative(cert_path),
        "certificate_sha256": hashlib.sha256(certificate).hexdigest(),
        "outputs": rel,
        "neurons": loaded.blueprint.review.neurons if loaded.blueprint.review else None,
        "decisions": {
            "path": storage.relative(decisions),
            "sha256": hashlib.sha256(document).hexdigest(),
            "seq": seq,
            "reviewers": _reviewers(log),
        },
    }
    request = JobRequest(
        job.group,
        loaded,
        [Dataset(dataset, rel, storage.resolve(job.group, "results", rel))],
        job.config,
        job.config_name,
        {"review_of": job.id, "dataset": dataset},
    )
    token = secrets.token_hex(4)
    return manager.create_job(
        request,
        submission=f"review of {job.id} [{dataset}]",
        key=f"review:{job.id}:{dataset}:{token}",
        content_key=f"review:{token}",
        chain={"input_area": "results", "review_json": json.dumps(review)},
        user=user,
    )


def review_request(manager: Manager, cert: dict[str, Any], loaded: LoadedBlueprint) -> tuple[JobRequest, dict]:
    """The rerun of a curation job's certificate: the reviewed outputs and the decisions file, both
    checked unchanged (by the sha256 of the reviewed job's certificate and of the decisions file)."""
    storage = manager.storage
    review = cert["review"]
    group = cert["job"]["group"]
    problems = []
    for what, path, sha in (
        ("the reviewed job's certificate", review["certificate"], review["certificate_sha256"]),
        ("the decisions file", review["decisions"]["path"], review["decisions"]["sha256"]),
    ):
        try:
            now = hashlib.sha256(storage.read_bytes(storage.join(path))).hexdigest()
        except FileNotFoundError:
            problems.append(f"{what} {path} no longer exists")
            continue
        if now != sha:
            problems.append(f"{what} {path} changed since the curation ran (sha256 {sha[:12]}… then, {now[:12]}… now)")
    rel = review["outputs"]
    path = storage.resolve(group, "results", rel)
    if not storage.exists(path):
        problems.append(f"the reviewed outputs {group}/results/{rel} no longer exist")
    if problems:
        raise CertificateError(
            "cannot rerun the curation on the same result and decisions:\n  " + "\n  ".join(problems)
        )
    request = JobRequest(
        group,
        loaded,
        [Dataset(review["dataset"], rel, path)],
        cert["config"]["content"],
        cert["config"].get("name"),
        {"rerun_of": cert["job"]["id"], "review_of": review["job"], "dataset": review["dataset"]},
    )
    return request, {"input_area": "results", "review_json": json.dumps(review)}
