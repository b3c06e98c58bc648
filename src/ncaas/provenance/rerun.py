"""Rerun a job: the same blueprint version, config and inputs (checked by sha256), then compare
(:mod:`.verdicts`).

A rerun is asked for by job. The platform reads the certificate it wrote for that job and
checks its signature (group storage is writable by its group, so even a stored certificate
is only a claim until it verifies). A certificate handed over by a user is accepted on the same
terms: only when it verifies against the platform's own keys. Then nothing in it is taken as
configuration: the blueprint comes from the platform's archive of every version it ran (by the
hash it computed itself), access is checked against the installed analysis, and resources and
limits are the archived blueprint's.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..blueprint import LoadedBlueprint
from ..exceptions import CertificateError, NcaasError, PathRefused
from ..isolation.environments import rerun_mismatch, spec_for_blueprint
from ..jobs.db import Job
from ..jobs.manager import Manager
from ..storage import check_user_path
from ..submission import Dataset, JobRequest, config_problems
from .certificate import describe_input, load_certificate
from .verdicts import compare_certificates

__all__ = [
    "certificate_of_job",
    "compare_jobs",
    "environment_note",
    "rerun",
    "rerun_request",
    "resolve",
    "start_rerun",
    "verified",
]


def verified(manager: Manager, cert: Any, *, where: str = "the certificate") -> dict[str, Any]:
    """``cert`` when this platform signed it as it is (CertificateForged otherwise)."""
    return manager.keys.verify(cert, where=where)


def certificate_of_job(manager: Manager, job: Job) -> dict[str, Any]:
    """The certificate the platform wrote for ``job``, checked against its signature."""
    if job.state == "rejected":
        raise CertificateError(f"job {job.id} was rejected, so nothing ran and there is nothing to rerun")
    path = f"{job.results_dir}/certificate.json"
    try:
        text = manager.storage.read_text(path)
    except FileNotFoundError:
        raise CertificateError(
            f"job {job.id} has no certificate yet ({job.state}); rerun it once it has ended"
        ) from None
    try:
        cert = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CertificateError(f"the certificate of job {job.id} ({path}) is damaged: not JSON") from None
    cert = verified(manager, cert, where=f"the certificate of job {job.id} ({path})")
    if cert.get("job", {}).get("id") != job.id:
        raise CertificateError(f"{path} is the certificate of job {cert['job'].get('id')}, not of job {job.id}")
    return cert


def _blueprint(manager: Manager, cert: dict[str, Any], group: str) -> LoadedBlueprint:
    """The certified blueprint version, from the platform's own records; never from the certificate."""
    info = cert["blueprint"]
    loaded = manager.archive.get(info.get("sha256"))
    job = manager.db.job(cert["job"]["id"]) if loaded is None else None
    if job is not None:  # made before the archive existed: its database record is checked and archived
        loaded = manager.loaded_blueprint(job)
    if loaded is None:
        raise CertificateError(
            f"version {info.get('version')} of {info.get('name')} (blueprint sha256 {str(info.get('sha256'))[:12]}…) "
            "never ran on this platform, so it is not in its archive of blueprints and cannot be rerun here"
        )
    installed = manager.registry.get(loaded.name)
    if installed is None:
        raise CertificateError(
            f"analysis {loaded.name!r} is no longer installed here; "
            f"installed: {', '.join(manager.registry.names()) or 'none'}"
        )
    for bp in (installed, loaded):
        if not bp.blueprint.access.allows(group):
            raise CertificateError(
                f"group {group!r} is not allowed to run {loaded.name!r}; allowed groups: "
                + ", ".join(bp.blueprint.access.groups)
            )
    return loaded


def _datasets(manager: Manager, cert: dict[str, Any], group: str) -> list[Dataset]:
    storage = manager.storage
    datasets, problems = [], []
    for task in cert["tasks"]:
        recorded = task["input"]
        try:
            rel = check_user_path(recorded["path"])
            path = storage.resolve(group, "inputs", rel)
        except PathRefused as exc:
            problems.append(str(exc))
            continue
        if not storage.exists(path):
            problems.append(f"input {group}/inputs/{rel} no longer exists")
            continue
        now = describe_input(storage, path, rel)
        if now.get("sha256") is None or now.get("sha256") != recorded.get("sha256"):
            problems.append(
                f"input {group}/inputs/{rel} changed since the certified run "
                f"(sha256 {(recorded.get('sha256') or '?')[:12]}… then, "
                f"{(now.get('sha256') or now.get('kind', '?'))[:12]}… now)"
            )
            continue
        datasets.append(Dataset(task["dataset"], rel, path))
    if problems:
        raise CertificateError("cannot rerun on the same inputs:\n  " + "\n  ".join(problems))
    return datasets


def _request(manager: Manager, cert: dict[str, Any]) -> JobRequest:
    upstream = cert.get("upstream")
    if isinstance(upstream, dict):  # its input is another job's outputs: the chain reruns both
        raise CertificateError(
            f"job {cert['job'].get('id')} is a later step of chain {upstream.get('chain')} (it reads the outputs of "
            f"job {upstream.get('job')}); rerun the chain: ncaas rerun {upstream.get('chain')}"
        )
    try:
        group = cert["job"]["group"]
        loaded = _blueprint(manager, cert, group)
        config = cert["config"]["content"]
        datasets = _datasets(manager, cert, group)
    except (KeyError, TypeError) as exc:
        raise CertificateError(f"the certificate lacks {exc}; it cannot be rerun") from None
    problems = (
        config_problems(config, loaded.blueprint.config_schema)
        if isinstance(config, dict)
        else ["the certified config is not a mapping"]
    )
    if problems:
        raise CertificateError("the certified config no longer fits the analysis:\n  " + "\n  ".join(problems))
    return JobRequest(group, loaded, datasets, config, cert["config"].get("name"), {"rerun_of": cert["job"]["id"]})


def _placed_request(manager: Manager, cert: dict[str, Any]) -> tuple[JobRequest, dict[str, Any] | None]:
    """The rerun's request, and where its dataset lives when not in inputs (a curation job: ncaas.review)."""
    if isinstance(cert.get("review"), dict):
        from ..review.curation import review_request

        try:
            loaded = _blueprint(manager, cert, cert["job"]["group"])
            return review_request(manager, cert, loaded)
        except (KeyError, TypeError) as exc:
            raise CertificateError(f"the certificate lacks {exc}; it cannot be rerun") from None
    return _request(manager, cert), None


def rerun_request(manager: Manager, cert: dict[str, Any]) -> JobRequest:
    """The job a verified certificate's rerun would make, checked (inputs unchanged, version archived,
    access, config); raises CertificateError saying what stands in the way. Nothing is started."""
    return _placed_request(manager, cert)[0]


def start_rerun(manager: Manager, cert: dict[str, Any]) -> Job:
    """Queue a rerun of a verified certificate's job; the manager runs it like any job."""
    request, place = _placed_request(manager, cert)
    # The environment must be the certified one: same lock and analysis source, checked
    # before anything is built (a rerun of an upgraded analysis is refused here).
    spec = spec_for_blueprint(request.blueprint)
    key = spec.key() if spec is not None else {}
    problem, _ = rerun_mismatch(
        cert.get("environment") or {},
        {"lock_hash": key.get("lock_sha256"), "source_hash": key.get("source_sha256") or None},
    )
    if problem is not None:
        raise CertificateError(f"cannot rerun job {cert['job']['id']}: {problem}")
    admission = manager.admit(request, f"the rerun of job {cert['job']['id']}")  # the group's budget, as for any job
    token = secrets.token_hex(4)
    return manager.create_job(
        request,
        submission=f"rerun of {cert['job']['id']}",
        key=f"rerun:{cert['job']['id']}:{token}",
        content_key=f"rerun:{token}",
        chain=place,
        admission=admission,
    )


def resolve(manager: Manager, ref: str) -> dict[str, Any]:
    """The verified certificate behind ``ref``: a job id, or a certificate file (or results folder)."""
    path = Path(ref)
    if not path.exists() and (ref.endswith(".json") or "/" in ref):
        raise CertificateError(
            f"{ref} does not exist; give a job id (`ncaas status` lists them) or the certificate.json of a finished job"
        )
    if path.exists():
        cert = load_certificate(path)
        return verified(manager, cert, where=str(path))
    return certificate_of_job(manager, manager.find(ref))


def environment_note(manager: Manager, cert: dict[str, Any], job: Job) -> str | None:
    """Say so when the rerun's environment was rebuilt from the certified lock (allowed: same lock)."""
    try:
        current = dataclasses.asdict(manager.ensure_environment(manager.loaded_blueprint(job)))
    except NcaasError:
        return None  # the job fails with the environment's own message
    return rerun_mismatch(cert.get("environment") or {}, current)[1]


def rerun(
    manager: Manager, ref: str | dict[str, Any], *, notify: Callable[[str], None] | None = None
) -> tuple[Job, list[dict[str, str]]]:
    """Rerun a job embedded (by id, or a certificate file the platform signed); return it and the verdicts."""
    cert = verified(manager, ref) if isinstance(ref, dict) else resolve(manager, ref)
    job = start_rerun(manager, cert)
    if notify is not None:
        notify(f"job {job.id} started; results in {job.results_dir}")
        note = environment_note(manager, cert, job)
        if note is not None:
            notify(note)
    job = manager.run_job(job.id)
    return job, compare_certificates(manager.storage, cert, certificate_of_job(manager, job))


def compare_jobs(manager: Manager, original: Job, job: Job) -> list[dict[str, str]]:
    """Verdicts of ``job``'s outputs against ``original``'s, from the certificates the platform signed."""
    return compare_certificates(
        manager.storage, certificate_of_job(manager, original), certificate_of_job(manager, job)
    )
