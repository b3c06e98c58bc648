"""API routes for cost: estimates before submitting, the group's spend and budget, the TCO figure."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from ..cost.accounting import dataset_bytes
from ..cost.budgets import budget_status
from ..cost.report import spend_rows
from ..cost.tco import LocalMachine, crossover, figure_png
from .accounts import Principal
from .api_jobs import Jobs
from .errors import BadRequest
from .state import caller

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["cost"])
Caller = Annotated[Principal, Depends(caller)]


class EstimateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    analysis: str = Field(description="an analysis name from GET /api/analyses")
    datasets: list[str] = Field(default_factory=list, description="dataset names in the group's inputs/")
    sizes: list[int] = Field(default_factory=list, description="sizes in bytes of further datasets not uploaded yet")
    pricing: Literal["standard", "save"] = "standard"


@router.post("/estimate", summary="What a job would take and cost, from past runs (null estimate: no history)")
def estimate(body: EstimateRequest, who: Caller, jobs: Jobs) -> dict:
    jobs.state.analysis_for(who, body.analysis)
    storage = jobs.state.storage
    if any(size < 0 for size in body.sizes):
        raise BadRequest("sizes must be byte counts >= 0")
    sizes = [dataset_bytes(storage, storage.resolve(who.group, "inputs", d)) for d in body.datasets] + body.sizes
    if not sizes:
        raise BadRequest("give datasets (names in inputs/) or sizes (bytes) to estimate")
    return jobs.manager.call(jobs.manager.estimate, who.group, body.analysis, body.pricing, sizes)


@router.get("/cost", summary="The group's spend per analysis, user and period, with the breakdown")
def spend(
    who: Caller,
    jobs: Jobs,
    by: Annotated[str, Query(description="comma-separated: group, analysis, user, period")] = "period",
    period: Annotated[str, Query(description="day, week, month or year")] = "month",
    since_ms: Annotated[int | None, Query(ge=0)] = None,
) -> list[dict]:
    return spend_rows(jobs.db, by=[b for b in by.split(",") if b], period=period, group=who.group, since_ms=since_ms)


@router.get("/budget", summary="The group's budget for this period: spent, expected by running jobs, left")
def budget(who: Caller, jobs: Jobs) -> dict:
    status = budget_status(jobs.db, who.group, currency=jobs.manager.costs.profile.currency)
    return {"group": who.group, "budget": status.to_json() if status else None}


@router.get("/tco.png", summary="The crossover figure: cost per week, local machine vs this platform")
def tco_png(
    who: Caller,
    price: Annotated[float, Query(ge=0, description="the local machine's price tag")],
    standard: Annotated[float, Query(gt=0, description="the platform's cost per dataset, standard")],
    local_seconds: Annotated[float, Query(gt=0, description="local analysis time per dataset, s")],
    save: Annotated[float | None, Query(gt=0, description="the platform's cost per dataset, save")] = None,
    lifetime: Annotated[list[float], Query(description="years: 2 realistic, 4 optimistic")] = [2.0, 4.0],  # noqa: B006
    rate: Annotated[float, Query(ge=0)] = 0.05,
    support: Annotated[float, Query(ge=0)] = 0.0,
) -> Response:
    del who  # any signed-in user may draw it
    rows = []
    for years in lifetime:
        machine = LocalMachine(price, years, rate, support)
        rows.append(crossover(machine, cost_per_dataset=standard, local_seconds=local_seconds, option="standard"))
        if save is not None:
            rows.append(crossover(machine, cost_per_dataset=save, local_seconds=local_seconds, option="save"))
    return Response(figure_png(rows), media_type="image/png", headers={"Cache-Control": "no-store"})
