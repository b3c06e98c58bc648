"""API routes for jobs: submit, list, detail, live events, cancel, results.

The job manager (:class:`ncaas.jobs.manager.Manager`) runs in a thread of the
server process. A submission through the API is a submit file written into
the group's ``submissions/`` and ingested at once, so the API, the web page,
the CLI and a plain file copy all make the same kind of job.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import os
import posixpath
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Annotated, Any, Literal
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select
from starlette.background import BackgroundTask

from ..exceptions import CertificateError, CertificateForged, PathRefused, SpecialFileRefused
from ..jobs import describe
from ..jobs.db import Job, JobDB, Task, default_db_url
from ..jobs.manager import Manager
from ..storage import check_user_path, localtree
from ..submission import submission_timestamp
from . import stored
from .accounts import Principal
from .errors import BadRequest, Conflict, Forbidden, NotFound
from .headers import FILE_POLICY
from .results import IMAGE_TYPES, iter_zip, list_files
from .state import ServerState, caller, get_state

__all__ = ["JobService", "router"]

log = logging.getLogger("ncaas.server")
router = APIRouter(prefix="/api/jobs", tags=["jobs"])
rerun_router = APIRouter(prefix="/api")
Caller = Annotated[Principal, Depends(caller)]

EVENT_POLL_S = 0.3
HEARTBEAT_S = 15.0
LOG_EVENT_BYTES = 64 << 10


class JobService:
    """The server's view of jobs: the manager, its database, and group checks."""

    def __init__(self, state: ServerState):
        self.state = state
        url = state.settings.database_url or default_db_url(state.storage.root)
        self.db = JobDB(url)
        self.manager = Manager(
            state.storage,
            self.db,
            registry=state.registry,
            limits=state.settings.submit_limits,
            executor=state.settings.executor,
            scan_interval=0.0 if state.storage.is_local else 2.0,  # listing a bucket costs requests
            poll_interval=0.1,
            notify=lambda message: log.info("%s", message),
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the manager thread -------------------------------------------------------------
    def start(self, *, run_manager: bool) -> None:
        if run_manager and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="ncaas-manager", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.manager.run(should_stop=self._stop.is_set)
            except Exception:  # keep serving; the next step retries from the database
                log.exception("job manager step failed; retrying in 1 s")
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    # -- access -------------------------------------------------------------------------
    def job_for(self, who: Principal, job_id: str) -> Job:
        """The job ``job_id`` (or a unique prefix) if it belongs to the caller's group."""
        job = self.db.find_job(job_id) if 0 < len(job_id) <= 64 else None
        if job is None or job.group != who.group:
            raise NotFound(f"no job {job_id!r} in group {who.group!r}; GET /api/jobs lists yours")
        return job

    def results_path(self, job: Job) -> Path:
        return self.state.storage.local_path(job.results_dir)

    @property
    def local(self) -> bool:
        """Results on this machine's disk (read through checked descriptors), else in object storage."""
        return self.state.storage.is_local

    def read_text(self, job: Job, name: str) -> str | None:
        """A file at the top of the job's results folder (its certificate), or None while there is none."""
        if self.local:
            local = self.results_path(job) / name
            return local.read_text() if local.is_file() else None
        storage = self.state.storage
        path = f"{job.results_dir}/{name}"
        return storage.read_text(path) if storage.entry_kind(path) == "file" else None

    def read_log(self, job: Job, dataset: str, offset: int, limit: int = -1) -> bytes:
        """A dataset's log from byte ``offset`` (at most ``limit`` bytes); b"" before it exists."""
        if self.local:
            return _read_from(self.results_path(job) / "logs" / f"{dataset}.log", offset, limit)
        return stored.read_stored(self.state.storage, f"{job.results_dir}/logs/{dataset}.log", offset, limit)

    # -- views (the same dicts the CLI renders: ncaas.jobs.describe) -------------------
    def list_jobs(self, who: Principal, limit: int) -> list[dict[str, Any]]:
        with self.db.session() as s:
            jobs = list(
                s.scalars(select(Job).where(Job.group == who.group).order_by(Job.created_ms.desc()).limit(limit))
            )
            counts = (
                dict(
                    s.execute(
                        select(Task.job_id, func.count())
                        .where(Task.job_id.in_([j.id for j in jobs]))
                        .group_by(Task.job_id)
                    ).all()
                )
                if jobs
                else {}
            )
        return [describe.job_summary(job, counts.get(job.id, 0)) for job in jobs]

    def detail(self, job: Job) -> dict[str, Any]:
        return describe.job_detail(self.manager, job)

    def rejection_problems(self, job: Job) -> list[str]:
        return describe.rejection_problems(self.state.storage, job)

    # -- actions ------------------------------------------------------------------------
    def submit(self, who: Principal, body: SubmitRequest) -> Job:
        storage = self.state.storage
        configname = body.configname
        if body.config is not None:
            if configname is not None:
                raise BadRequest("give either configname (a saved config) or config (the values), not both")
            configname = f"api-{submission_timestamp()}.json"
            storage.write_text(storage.resolve(who.group, "configs", configname), json.dumps(body.config, indent=2))
        submit = {"analysis": body.analysis, "dataname": body.datasets, "timestamp": submission_timestamp()}
        if configname is not None:
            submit["configname"] = configname
        if body.pricing != "standard":
            submit["pricing"] = body.pricing
        name = f"{body.name or 'api-' + submission_timestamp() + '-' + who.user}.submit.json"
        if "/" in check_user_path(name, "submissions"):
            raise BadRequest(f"submission name {body.name!r} must be a plain name, without '/'")
        path = storage.resolve(who.group, "submissions", name)
        if storage.exists(path):
            raise Conflict(f"a submission named {name} already exists in {who.group}/submissions/; choose another name")
        storage.write_text(path, json.dumps(submit, indent=2))
        log.info("user %s of group %s submitted %s", who.user, who.group, name)
        job = self.manager.call(self.manager.ingest_file, who.group, path, user=who.user)
        if job is None:  # pragma: no cover - the file was removed under us
            raise NotFound(f"the submission {name} vanished before it was read")
        return job


def jobs_of(request: Request) -> JobService:
    return get_state(request).extras["jobs"]


Jobs = Annotated[JobService, Depends(jobs_of)]


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored

    analysis: str = Field(description="an analysis name from GET /api/analyses")
    datasets: list[str] = Field(min_length=1, description="dataset names in the group's inputs/")
    configname: str | None = Field(None, description="a config saved in configs/ (PUT /api/configs/{name})")
    config: dict[str, Any] | None = Field(None, description="config values, saved for you (instead of configname)")
    name: str | None = Field(None, description="submission name (the submit file is <name>.submit.json)")
    pricing: Literal["standard", "save"] = Field(
        "standard", description="standard (on demand) or save (cheaper; may be interrupted and retried)"
    )


@router.post("", status_code=201, summary="Submit an analysis on datasets (one task per dataset)")
def submit(body: SubmitRequest, who: Caller, jobs: Jobs) -> dict:
    jobs.state.analysis_for(who, body.analysis)  # unknown or forbidden analyses: 404 like a missing one
    job = jobs.submit(who, body)
    if job.state == "rejected":
        problems = jobs.rejection_problems(job)
        raise BadRequest(
            "submission rejected: " + "; ".join(problems),
            problems=problems,
            job={"id": job.id, "results_dir": job.results_dir},
        )
    return jobs.detail(job)


@router.get("", summary="The group's jobs, newest first")
def list_jobs(who: Caller, jobs: Jobs, limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> list[dict]:
    return jobs.list_jobs(who, limit)


@router.get("/{job_id}", summary="One job with each dataset's state, progress and usage")
def job_detail(job_id: str, who: Caller, jobs: Jobs) -> dict:
    return jobs.detail(jobs.job_for(who, job_id))


@router.post("/{job_id}/cancel", summary="Cancel: queued tasks never start, running ones are stopped")
def cancel(job_id: str, who: Caller, jobs: Jobs) -> dict:
    job = jobs.job_for(who, job_id)
    jobs.manager.call(jobs.manager.cancel, job.id)
    return jobs.detail(job)


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _read_from(path: Path, offset: int, limit: int = -1) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)
    except FileNotFoundError:
        return b""


@router.get(
    "/{job_id}/events",
    summary="Live status and logs as server-sent events",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "events `status` (job detail), `log` ({dataset, text}), "
            "`end` (final job detail); the stream closes after `end`",
        }
    },
)
async def events(job_id: str, request: Request, who: Caller, jobs: Jobs) -> StreamingResponse:
    job = jobs.job_for(who, job_id)

    async def stream() -> AsyncIterator[bytes]:
        offsets: dict[str, int] = {}
        decoders: dict[str, Any] = {}
        last_status = None
        last_sent = time.monotonic()
        while True:
            detail = await anyio.to_thread.run_sync(jobs.detail, job)
            done = detail["finished"]
            if detail != last_status:
                yield _sse("status", detail)
                last_status, last_sent = detail, time.monotonic()
            for task in detail["tasks"]:
                name = task["dataset"]
                while True:
                    data = await anyio.to_thread.run_sync(
                        jobs.read_log, job, name, offsets.get(name, 0), LOG_EVENT_BYTES
                    )
                    if not data:
                        break
                    offsets[name] = offsets.get(name, 0) + len(data)
                    dec = decoders.setdefault(name, codecs.getincrementaldecoder("utf-8")("replace"))
                    text = dec.decode(data)
                    if text:
                        yield _sse("log", {"dataset": name, "text": text})
                        last_sent = time.monotonic()
                    if len(data) < LOG_EVENT_BYTES:
                        break
            if done:
                yield _sse("end", detail)
                return
            if time.monotonic() - last_sent > HEARTBEAT_S:
                yield b": keep-alive\n\n"
                last_sent = time.monotonic()
            if await request.is_disconnected():
                return
            await asyncio.sleep(EVENT_POLL_S)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


@router.get(
    "/{job_id}/logs/{dataset}", response_class=PlainTextResponse, summary="A dataset's log so far (from byte ?offset=)"
)
def log_text(job_id: str, dataset: str, who: Caller, jobs: Jobs, offset: Annotated[int, Query(ge=0)] = 0) -> Response:
    job = jobs.job_for(who, job_id)
    if dataset not in {t.dataset for t in jobs.db.tasks(job.id)}:
        raise NotFound(f"job {job.id} has no dataset {dataset!r}")
    return Response(jobs.read_log(job, dataset, offset), media_type="text/plain; charset=utf-8")


def _result_file(jobs: JobService, who: Principal, job: Job, rel: str) -> IO[bytes]:
    """The result file ``rel`` of ``job``, open: a regular file inside the group's results, or NotFound.

    Opened without following a final link and without blocking on a FIFO; the file actually
    opened is then checked to lie inside the group's results (its folders may have been
    swapped for links since the path was resolved).
    """
    try:
        full = jobs.state.storage.resolve(who.group, "results", f"{job.id}/{rel}")
    except PathRefused as exc:
        raise BadRequest(str(exc)) from None
    missing = NotFound(f"job {job.id} has no result file {rel!r}; GET /api/jobs/{job.id}/files lists them")
    try:
        fd = localtree.open_regular(str(jobs.state.storage.local_path(full)))
    except (SpecialFileRefused, FileNotFoundError, NotADirectoryError):
        raise missing from None
    handle = os.fdopen(fd, "rb")
    base = os.path.realpath(jobs.state.storage.area(who.group, "results"))
    if not os.readlink(f"/proc/self/fd/{fd}").startswith(base + os.sep):
        handle.close()
        raise missing
    return handle


@router.get("/{job_id}/files", summary="Every file in the job's results folder")
def files(job_id: str, who: Caller, jobs: Jobs) -> list[dict]:
    job = jobs.job_for(who, job_id)
    if not jobs.local:
        return [{"path": f.rel, "size": f.size} for f in stored.list_stored(jobs.state.storage, job.results_dir)]
    base = jobs.results_path(job)
    return [{"path": f.rel, "size": f.stat.st_size} for f in list_files(base)] if base.is_dir() else []


@router.get("/{job_id}/files/{path:path}", summary="One result file (streamed)", response_class=FileResponse)
def file(job_id: str, path: str, who: Caller, jobs: Jobs) -> Response:
    job = jobs.job_for(who, job_id)
    media = IMAGE_TYPES.get(posixpath.splitext(path)[1].lower())
    if not jobs.local:
        return _stored_file(jobs, who, job, path, media)
    handle = _result_file(jobs, who, job, path)
    # Served from the descriptor opened and checked above (/proc/self/fd reopens that very file),
    # never from the path again; closed once sent (or with the response, if the client went away).
    found, done = f"/proc/self/fd/{handle.fileno()}", BackgroundTask(handle.close)
    # An analysis wrote this file: it may be HTML or an SVG carrying script. Images are shown as images;
    # anything else is a download, never a page; and the sandboxing policy gives either, even opened in
    # a tab of its own, an origin of its own, so no script in it can reach the page's token or the API.
    return FileResponse(
        found,
        media_type=media,
        filename=None if media else posixpath.basename(path),
        content_disposition_type="inline" if media else "attachment",
        headers={"Content-Security-Policy": FILE_POLICY},
        stat_result=os.fstat(handle.fileno()),
        background=done,
    )


def _stored_file(jobs: JobService, who: Principal, job: Job, rel: str, media: str | None) -> Response:
    """A result file in object storage, streamed under the same headers as one on disk."""
    storage = jobs.state.storage
    try:
        full = storage.resolve(who.group, "results", f"{job.id}/{rel}")
    except PathRefused as exc:
        raise BadRequest(str(exc)) from None
    if storage.entry_kind(full) != "file":
        raise NotFound(f"job {job.id} has no result file {rel!r}; GET /api/jobs/{job.id}/files lists them")
    size = storage.size(full)
    name = posixpath.basename(rel)
    disposition = "inline" if media else f"attachment; filename*=utf-8''{quote(name)}"
    return StreamingResponse(
        stored.iter_stored(storage, full, size),
        media_type=media or "application/octet-stream",
        headers={
            "Content-Security-Policy": FILE_POLICY,
            "Content-Disposition": disposition,
            "Content-Length": str(size),
        },
    )


@router.get(
    "/{job_id}/results.zip",
    summary="The whole results folder as a zip, streamed",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
def results_zip(job_id: str, who: Caller, jobs: Jobs) -> StreamingResponse:
    job = jobs.job_for(who, job_id)
    if jobs.local:
        base = jobs.results_path(job)
        chunks = iter_zip(list_files(base) if base.is_dir() else [])
    else:
        chunks = stored.iter_stored_zip(jobs.state.storage, stored.list_stored(jobs.state.storage, job.results_dir))
    return StreamingResponse(
        chunks,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="ncaas-{job.id}.zip"'},
    )


@router.get("/{job_id}/certificate", summary="The job's certificate (json, or readable text with ?format=txt)")
def certificate(job_id: str, who: Caller, jobs: Jobs, format: Annotated[str, Query(pattern="^(json|txt)$")] = "json"):
    job = jobs.job_for(who, job_id)
    text = jobs.read_text(job, f"certificate.{format}")
    if text is None:
        state = (
            "was rejected, so it has no certificate"
            if job.state == "rejected"
            else "has no certificate yet; it is written when the job ends"
        )
        raise NotFound(f"job {job.id} {state}")
    if format == "txt":
        return PlainTextResponse(text)
    return json.loads(text)


@router.get("/{job_id}/qc", summary="QC images the analysis wrote (png, jpg, svg, ...)")
def qc_images(job_id: str, who: Caller, jobs: Jobs) -> list[dict]:
    job = jobs.job_for(who, job_id)
    if jobs.local:
        base = jobs.results_path(job) / "outputs"
        found = [(f.rel, f.stat.st_size) for f in list_files(base)] if base.is_dir() else []
    else:
        found = [(f.rel, f.size) for f in stored.list_stored(jobs.state.storage, f"{job.results_dir}/outputs")]
    return [
        {"path": f"outputs/{rel}", "dataset": rel.split("/", 1)[0], "size": size}
        for rel, size in found
        if posixpath.splitext(rel)[1].lower() in IMAGE_TYPES
    ]


@router.get("/{job_id}/story", summary="Every state transition of the job and its tasks, with cause and time")
def story(job_id: str, who: Caller, jobs: Jobs) -> list[dict]:
    job = jobs.job_for(who, job_id)
    return describe.job_story(jobs.manager, job)


def _certificate_of_group(who: Principal, cert: Any) -> dict[str, Any]:
    try:
        group = cert["job"]["group"]
        cert["tasks"], cert["config"], cert["blueprint"]  # noqa: B018 - presence check
    except (KeyError, TypeError):
        raise BadRequest("the body is not a certificate (certificate.json of a finished job)") from None
    if group != who.group:
        raise Forbidden(f"the certificate is of a job of group {group!r}; you can only rerun your group's jobs")
    return cert


def _start_rerun(jobs: JobService, cert: dict[str, Any]) -> dict:
    from ..provenance.rerun import start_rerun

    try:
        job = jobs.manager.call(start_rerun, jobs.manager, cert)
    except CertificateError as exc:
        raise Conflict(str(exc)) from None
    return jobs.detail(job)


@router.post(
    "/{job_id}/rerun",
    status_code=201,
    summary="Rerun a finished job: the same analysis version, config and inputs (checked by sha256)",
)
def rerun_job(job_id: str, who: Caller, jobs: Jobs) -> dict:
    from ..provenance.rerun import certificate_of_job

    job = jobs.job_for(who, job_id)
    try:
        cert = certificate_of_job(jobs.manager, job)
    except CertificateForged as exc:
        raise Forbidden(str(exc)) from None
    except CertificateError as exc:
        raise Conflict(str(exc)) from None
    return _start_rerun(jobs, cert)


@rerun_router.post(
    "/rerun",
    tags=["jobs"],
    status_code=201,
    summary="Rerun the job of a certificate.json this server wrote and signed (body: the certificate)",
)
def rerun(cert: Annotated[Any, Body()], who: Caller, jobs: Jobs) -> dict:
    from ..provenance.rerun import verified

    try:
        cert = verified(jobs.manager, cert, where="the posted certificate")
    except CertificateForged as exc:
        raise Forbidden(str(exc)) from None
    return _start_rerun(jobs, _certificate_of_group(who, cert))


def _signed_certificate(jobs: JobService, job: Job) -> dict[str, Any]:
    from ..provenance.rerun import certificate_of_job

    try:
        return certificate_of_job(jobs.manager, job)
    except CertificateForged as exc:
        raise Forbidden(str(exc)) from None
    except CertificateError as exc:
        raise Conflict(f"cannot compare: {exc}") from None


def _verdicts(jobs: JobService, before: dict[str, Any], after: dict[str, Any]) -> list[dict]:
    from ..provenance.verdicts import compare_certificates

    try:
        return compare_certificates(jobs.state.storage, before, after)
    except (KeyError, TypeError, AttributeError):
        raise BadRequest("the certificate's tasks and their outputs cannot be read") from None


@router.post("/{job_id}/compare", summary="Compare this job's outputs, file by file, with a signed certificate's")
def compare(job_id: str, cert: Annotated[dict[str, Any], Body()], who: Caller, jobs: Jobs) -> list[dict]:
    from ..provenance.rerun import verified

    job = jobs.job_for(who, job_id)
    try:
        cert = verified(jobs.manager, cert, where="the posted certificate")
    except CertificateForged as exc:
        raise Forbidden(str(exc)) from None
    return _verdicts(jobs, _certificate_of_group(who, cert), _signed_certificate(jobs, job))


@router.get(
    "/{job_id}/compare/{original_id}",
    summary="The verdict, file by file, of this job's outputs against another job's of the group",
)
def compare_jobs(job_id: str, original_id: str, who: Caller, jobs: Jobs) -> list[dict]:
    job = jobs.job_for(who, job_id)
    original = jobs.job_for(who, original_id)
    return _verdicts(jobs, _signed_certificate(jobs, original), _signed_certificate(jobs, job))


@router.get("/{job_id}/verdict", summary="A rerun's verdict, file by file, against the job it reruns")
def verdict(job_id: str, who: Caller, jobs: Jobs) -> dict:
    """``{"original", "rows", "summary", "ok"}``: the rows of compare, and the line the CLI prints under them."""
    from ..provenance.verdicts import summary_line, verdicts_ok

    job = jobs.job_for(who, job_id)
    original_id = describe.rerun_of(job)
    if original_id is None:
        raise NotFound(f"job {job.id} is not a rerun; GET /api/jobs/{job.id}/compare/OTHER compares it with another")
    rows = compare_jobs(job.id, original_id, who, jobs)
    return {"original": original_id, "rows": rows, "summary": summary_line(rows), "ok": verdicts_ok(rows)}
