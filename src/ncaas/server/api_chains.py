"""API routes for chains: submit a pipeline on datasets, list, detail, cancel, rerun.

A chain submitted here is a submit file naming a pipeline (saved in ``configs/``), ingested at
once by the server's manager, exactly as ``ncaas submit PIPELINE`` or a plain file copy makes it.
Each step's jobs are ordinary jobs of the group (``/api/jobs/{id}``: logs, files, certificate).
"""

from __future__ import annotations

import json
import posixpath
from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from ..exceptions import JobNotFound
from ..jobs.db import Chain
from ..pipelines.runner import chain_detail
from ..storage import check_user_path
from ..submission import submission_timestamp
from .accounts import Principal
from .api_jobs import Jobs, JobService
from .errors import BadRequest, Conflict, NotFound
from .state import caller

__all__ = ["router"]

router = APIRouter(prefix="/api/chains", tags=["chains"])
Caller = Annotated[Principal, Depends(caller)]


class ChainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datasets: list[str] = Field(min_length=1, description="dataset names in the group's inputs/")
    pipeline: str | None = Field(None, description="a pipeline file saved in configs/ (PUT /api/configs/{name})")
    pipeline_yaml: str | None = Field(None, description="the pipeline's text (YAML), saved for you instead")
    name: str | None = Field(None, description="submission name (the submit file is <name>.submit.json)")


def _chain_for(jobs: JobService, who: Principal, ref: str) -> Chain:
    chain = jobs.db.find_chain(ref) if 0 < len(ref) <= 64 else None
    if chain is None or chain.group != who.group:
        raise NotFound(f"no chain {ref!r} in group {who.group!r}; GET /api/chains lists yours")
    return chain


@router.post("", status_code=201, summary="Submit a pipeline on datasets: a chain of jobs per dataset")
def submit_chain(body: ChainRequest, who: Caller, jobs: Jobs) -> dict:
    storage = jobs.state.storage
    if (body.pipeline is None) == (body.pipeline_yaml is None):
        raise BadRequest("give either pipeline (a file saved in configs/) or pipeline_yaml (its text)")
    pipeline = body.pipeline
    if body.pipeline_yaml is not None:
        try:
            data = yaml.safe_load(body.pipeline_yaml)
        except yaml.YAMLError as exc:
            raise BadRequest(f"pipeline_yaml is not valid YAML: {exc}") from None
        pipeline = f"pipeline-{submission_timestamp()}.yaml"
        storage.write_text(storage.resolve(who.group, "configs", pipeline), yaml.safe_dump(data, sort_keys=False))
    assert pipeline is not None
    name = f"{body.name or 'chain-' + submission_timestamp() + '-' + who.user}.submit.json"
    if "/" in check_user_path(name, "submissions"):
        raise BadRequest(f"submission name {body.name!r} must be a plain name, without '/'")
    path = storage.resolve(who.group, "submissions", name)
    if storage.exists(path):
        raise Conflict(f"a submission named {name} already exists in {who.group}/submissions/; choose another name")
    submit = {"pipeline": pipeline, "dataname": body.datasets, "timestamp": submission_timestamp()}
    storage.write_text(path, json.dumps(submit))
    job = jobs.manager.call(jobs.manager.ingest_file, who.group, path)
    if job is None:  # pragma: no cover - the file was removed under us
        raise NotFound(f"the submission {posixpath.basename(path)} vanished before it was read")
    if job.chain_id is None:
        problems = jobs.rejection_problems(job)
        raise BadRequest(
            "submission rejected: " + "; ".join(problems),
            problems=problems,
            job={"id": job.id, "results_dir": job.results_dir},
        )
    return _detail(jobs, job.chain_id)


def _detail(jobs: JobService, chain_id: str) -> dict[str, Any]:
    chain = jobs.db.chain(chain_id)
    assert chain is not None
    return chain_detail(jobs.manager, chain)


@router.get("", summary="The group's chains, newest first")
def list_chains(who: Caller, jobs: Jobs, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
    mine = [c for c in jobs.db.chains(limit=limit * 4) if c.group == who.group][:limit]
    return [chain_detail(jobs.manager, c) for c in mine]


@router.get("/{chain_id}", summary="One chain: every dataset's step, its job, state and reason")
def get_chain(chain_id: str, who: Caller, jobs: Jobs) -> dict:
    return _detail(jobs, _chain_for(jobs, who, chain_id).id)


@router.post("/{chain_id}/cancel", summary="Cancel a chain: no further step starts, running ones are stopped")
def cancel_chain(chain_id: str, who: Caller, jobs: Jobs) -> dict:
    chain = _chain_for(jobs, who, chain_id)
    jobs.manager.call(jobs.manager.chains.cancel, chain.id)
    return _detail(jobs, chain.id)


@router.post("/{chain_id}/rerun", status_code=201, summary="Rerun a finished chain; its steps' outputs can be compared")
def rerun_chain(chain_id: str, who: Caller, jobs: Jobs) -> dict:
    chain = _chain_for(jobs, who, chain_id)
    try:
        new = jobs.manager.call(jobs.manager.chains.rerun, chain.id)
    except JobNotFound as exc:  # pragma: no cover - removed meanwhile
        raise NotFound(str(exc)) from None
    return _detail(jobs, new.id)
