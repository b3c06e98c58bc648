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
from ..exceptions import CertificateError, NcaasError, PathRefused
from ..jobs.db import Job
from ..storage import Storage
from ..submission import Dataset, JobRequest, submission_timestamp
from .decisions import Entry

if TYPE_CHECKING:
    from ..jobs.manager import Manager

__all__ = ["decisions_problem", "review_request", "reviewable", "start_curation"]


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


def _decisions_path(storage: Storage, group: str, review: dict[str, Any]) -> str:
    """The decisions file's storage path, refused unless it lies in ``group``'s results."""
    rel = str(review["decisions"]["path"])
    prefix = f"{group}/results/"
    if not rel.startswith(prefix):
        raise PathRefused(f"the decisions file {rel} is not in {prefix}")
    return storage.resolve(group, "results", rel[len(prefix) :])


def decisions_problem(storage: Storage, group: str, review: dict[str, Any]) -> str | None:
    """Why a curation job may not run on its decisions file (missing, or changed since it was
    written), or None."""
    try:
        path = _decisions_path(storage, group, review)
        now = hashlib.sha256(storage.read_bytes(path)).hexdigest()
    except FileNotFoundError:
        return f"the decisions file {review['decisions']['path']} is gone; finish the review again"
    except PathRefused as exc:
        return str(exc)
    if now != review["decisions"]["sha256"]:
        return (
            f"the decisions file {review['decisions']['path']} changed since the review was finished "
            f"(sha256 {review['decisions']['sha256'][:12]}… then, {now[:12]}… now); finish the review again"
        )
    return None


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
    request = JobRequest(
        job.group,
        loaded,
        [Dataset(dataset, rel, storage.resolve(job.group, "results", rel))],
        job.config,
        job.config_name,
        {"review_of": job.id, "dataset": dataset},
    )
    # the group's budget, as for any job; refused, the review stays as it is (its decisions are in the database)
    admission = manager.admit(request, f"the curation of job {job.id} [{dataset}]")
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
    token = secrets.token_hex(4)
    return manager.create_job(
        request,
        submission=f"review of {job.id} [{dataset}]",
        key=f"review:{job.id}:{dataset}:{token}",
        content_key=f"review:{token}",
        chain={"input_area": "results", "review_json": json.dumps(review)},
        user=user,
        admission=admission,
    )


def review_request(manager: Manager, cert: dict[str, Any], loaded: LoadedBlueprint) -> tuple[JobRequest, dict]:
    """The rerun of a curation job's certificate: the reviewed outputs and the decisions file, both
    checked unchanged (by the sha256 of the reviewed job's certificate and of the decisions file)."""
    storage = manager.storage
    review = cert["review"]
    group = cert["job"]["group"]
    problems = []
    decisions = decisions_problem(storage, group, review)
    if decisions is not None:
        problems.append(decisions)
    certificate = f"{storage.results_dir(group, review['job'])}/certificate.json"
    try:
        now = hashlib.sha256(storage.read_bytes(certificate)).hexdigest()
        if now != review["certificate_sha256"]:
            problems.append(
                f"the reviewed job's certificate {storage.relative(certificate)} changed since the curation ran "
                f"(sha256 {review['certificate_sha256'][:12]}… then, {now[:12]}… now)"
            )
    except FileNotFoundError:
        problems.append(f"the reviewed job's certificate {storage.relative(certificate)} no longer exists")
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
