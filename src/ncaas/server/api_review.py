"""API routes of the review page (docs/review.md): a job's neurons, the decisions, finishing a review.

Everything is read through the platform's storage (a local root or object storage): small
arrays and images whole, a neuron's traces as one row of each (K, T) array by byte range.
Decisions are rows of the job database, numbered per dataset; ``version`` (the latest number)
lets other browsers see them. Only the job's group reaches any of it (``JobService.job_for``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..exceptions import NcaasError
from ..jobs.db import Job, ReviewAction
from ..review import neurons as views
from ..review.curation import reviewable, start_curation
from ..review.decisions import DecisionRefused, Entry, check, decisions_document, fold
from ..review.layout import IMAGE_KINDS, TRACES, Layout, LayoutCache, LayoutError, decimate, png
from .accounts import Principal
from .api_jobs import JobService, jobs_of
from .errors import BadRequest, Conflict, NotFound
from .state import caller

__all__ = ["router"]

router = APIRouter(prefix="/api/jobs/{job_id}/review/{dataset}", tags=["review"])
Caller = Annotated[Principal, Depends(caller)]
Jobs = Annotated[JobService, Depends(jobs_of)]
_layouts = LayoutCache()
_write_lock = threading.Lock()
PNG_HEADERS = {"Cache-Control": "private, max-age=300"}


class Reviewed:
    """A job's dataset under review: the job (of the caller's group) and its neurons layout."""

    def __init__(self, jobs: JobService, who: Principal, job_id: str, dataset: str):
        self.jobs = jobs
        self.job: Job = jobs.job_for(who, job_id)
        try:
            loaded = reviewable(jobs.manager, self.job)
        except NcaasError as exc:
            raise Conflict(str(exc)) from None
        tasks = {t.dataset: t for t in jobs.db.tasks(self.job.id)}
        if dataset not in tasks:
            raise NotFound(f"job {self.job.id} has no dataset {dataset!r}; its datasets: {', '.join(sorted(tasks))}")
        if tasks[dataset].state != "succeeded":
            raise Conflict(
                f"dataset {dataset!r} of job {self.job.id} is {tasks[dataset].state}; only a succeeded one has neurons"
            )
        self.dataset = dataset
        assert loaded.blueprint.review is not None
        folder = f"{self.job.results_dir}/outputs/{dataset}/{loaded.blueprint.review.neurons}"
        try:
            self.layout: Layout = _layouts.get((self.job.id, dataset), jobs.state.storage, folder)
        except LayoutError as exc:
            raise Conflict(str(exc)) from None

    def log(self) -> list[Entry]:
        with self.jobs.db.session() as s:
            rows = s.scalars(
                select(ReviewAction)
                .where(ReviewAction.job_id == self.job.id, ReviewAction.dataset == self.dataset)
                .order_by(ReviewAction.seq)
            ).all()
        return [_entry(r) for r in rows]


def _entry(row: ReviewAction) -> Entry:
    return Entry(row.seq, row.action, tuple(json.loads(row.neurons_json)), row.user, row.at, row.undoes)


def reviewed(job_id: str, dataset: str, who: Caller, jobs: Jobs) -> Reviewed:
    return Reviewed(jobs, who, job_id, dataset)


Review = Annotated[Reviewed, Depends(reviewed)]


def _layout_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except LayoutError as exc:
        raise Conflict(str(exc)) from None


@router.get("", summary="What the review page needs first: dims, neurons, sessions, images, decisions version")
def summary(review: Review) -> dict:
    layout = review.layout
    log = review.log()
    return {
        "job": review.job.id,
        "dataset": review.dataset,
        "analysis": review.job.analysis,
        "dims": list(layout.dims),
        "n_neurons": layout.n_neurons,
        "n_frames": layout.n_frames,
        "fs": layout.meta.get("fs"),
        "session_ids": _layout_call(layout.session_ids),
        "session_bounds": _layout_call(layout.session_bounds),
        "images": [{"kind": i.kind, "session": i.session} for i in _layout_call(layout.images)],
        "version": log[-1].seq if log else 0,
    }


@router.get("/neurons", summary="The table of neurons: id, snr, size (px), centre [y, x], activity per session")
def neuron_table(review: Review) -> list[dict]:
    return _layout_call(views.table, review.layout)


@router.get("/contours", summary="Every neuron's outline (at 0.2 of its peak) as closed paths of [x, y] points")
def contours(review: Review) -> list[list[list[list[float]]]]:
    return _layout_call(views.contours, review.layout)


@router.get(
    "/image.png",
    summary="A background image (Cn, PNR, mean, max; a session's or the whole recording's) as a PNG",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def image(
    review: Review,
    kind: Annotated[str, Query(description=f"one of {', '.join(IMAGE_KINDS)}")] = "Cn",
    session: Annotated[str | None, Query(description="a session id; none for the whole recording")] = None,
) -> Response:
    picture = _layout_call(review.layout.image, kind, session or None)
    return Response(png(picture), media_type="image/png", headers=PNG_HEADERS)


def _neuron(review: Reviewed, k: int) -> int:
    if not 0 <= k < review.layout.n_neurons:
        raise NotFound(f"no neuron {k}: this result has neurons 0 to {review.layout.n_neurons - 1}")
    return k


@router.get(
    "/neurons/{k}/footprint.png",
    summary="Neuron k's footprint, zoomed on its bounding box",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def footprint(k: int, review: Review) -> Response:
    data, box = _layout_call(views.footprint_png, review.layout, _neuron(review, k))
    return Response(data, media_type="image/png", headers={**PNG_HEADERS, "X-Box": ",".join(map(str, box))})


@router.get("/neurons/{k}", summary="Neuron k: its traces decimated with a min/max envelope, sessions, neighbours")
def neuron(k: int, review: Review, points: Annotated[int, Query(ge=10, le=20000)] = 2000) -> dict:
    layout = review.layout
    _neuron(review, k)
    traces = {}
    for name in TRACES:
        trace = _layout_call(layout.trace, name, k)
        if trace is not None:
            traces[name] = decimate(trace, points)
    row = _layout_call(views.table, layout)[k]
    return {
        **row,
        "box": _layout_call(views.footprint_box, layout, k),
        "traces": traces,
        "session_bounds": layout.session_bounds(),
        "session_ids": layout.session_ids(),
        "neighbours": _layout_call(views.neighbours, layout, k),
    }


# -- decisions -----------------------------------------------------------------------------------
def _decisions(review: Reviewed, log: list[Entry] | None = None) -> dict:
    log = review.log() if log is None else log
    state = fold(review.layout.n_neurons, log)
    return {
        "version": log[-1].seq if log else 0,
        "final": state.final(),
        "status": {str(k): v for k, v in sorted(state.status().items())},
        "undoable": state.in_effect[-1] if state.in_effect else None,
        "log": [e.record() for e in log],
    }


@router.get("/decisions", summary="The decisions so far: log, final state, each neuron's status, version")
def decisions(review: Review, since: Annotated[int, Query(ge=0)] = -1) -> dict:
    log = review.log()
    if since >= 0 and (log[-1].seq if log else 0) == since:
        return {"version": since, "unchanged": True}
    return _decisions(review, log)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")

    action: Literal["accept", "reject", "merge", "undo"]
    neurons: list[int] = Field(default_factory=list, max_length=10000, description="the neurons (not for undo)")
    undoes: int | None = Field(None, description="undo: the number of the decision undone (the latest in effect)")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@router.post("/decisions", status_code=201, summary="Record a decision: accept, reject, merge, or undo the latest")
def decide(body: Decision, review: Review, who: Caller) -> dict:
    neurons = tuple(sorted(set(body.neurons)))
    with _write_lock:  # one writer here; the unique (job, dataset, seq) guards against other servers
        for _ in range(3):
            log = review.log()
            seq = (log[-1].seq if log else 0) + 1
            undoes = body.undoes if body.action == "undo" else None
            if body.action == "undo" and undoes is None:
                state = fold(review.layout.n_neurons, log)
                undoes = state.in_effect[-1] if state.in_effect else None
            entry = Entry(seq, body.action, () if body.action == "undo" else neurons, who.user, _now(), undoes)
            try:
                check(review.layout.n_neurons, log, entry)
            except DecisionRefused as exc:
                raise Conflict(str(exc)) from None
            row = ReviewAction(
                job_id=review.job.id,
                dataset=review.dataset,
                seq=seq,
                action=entry.action,
                neurons_json=json.dumps(list(entry.neurons)),
                undoes=entry.undoes,
                user=entry.user,
                at=entry.at,
            )
            try:
                with review.jobs.db.session() as s, s.begin():
                    s.add(row)
            except IntegrityError:
                continue  # another server took this number: check again against its decision
            return _decisions(review, [*log, entry])
    raise Conflict("the decisions changed while this one was recorded; try again")


@router.post("/finish", status_code=201, summary="Finish the review: the curation job runs on the decisions")
async def finish(review: Review, who: Caller, request: Request) -> dict:
    jobs = review.jobs
    log = review.log()
    certificate = jobs.read_text(review.job, "certificate.json")
    if certificate is None:
        raise Conflict(f"job {review.job.id} has no certificate yet; finish the review once it is written")
    document = decisions_document(
        job=review.job.id,
        dataset=review.dataset,
        certificate_sha256=hashlib.sha256(certificate.encode()).hexdigest(),
        n_neurons=review.layout.n_neurons,
        log=log,
    )

    def start() -> Job:
        return jobs.manager.call(
            start_curation, jobs.manager, review.job, review.dataset, user=who.user, document=document, log=log
        )

    try:
        job = await anyio.to_thread.run_sync(start)
    except NcaasError as exc:
        raise BadRequest(str(exc)) from None
    return jobs.detail(job)
