"""``ncaas cost``, ``ncaas budget``, ``ncaas pricing``, ``ncaas tco`` and ``ncaas reclaim``."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ..cost import tco as tco_model
from ..cost.budgets import list_budgets, remove_budget, set_budget
from ..cost.estimate import history
from ..cost.pricing import price_task, shape_of
from ..cost.profile import DEFAULT_PROFILE_YAML, OPTIONS, install_profile, load_profile, profile_path
from ..cost.report import BY, PERIODS, money, to_csv
from ..exceptions import NcaasError
from ..jobs.attempts import Attempt
from ..jobs.db import JobDB, now_ms
from ..storage import Storage, default_root
from ..storage.localfolder import folder_files
from .console import errors, out

__all__ = ["local_bytes", "register"]

RootOpt = Annotated[str, typer.Option("--root", envvar="NCAAS_ROOT", help="storage root (dir or URL)")]
DbOpt = Annotated[
    str | None, typer.Option("--db", envvar="NCAAS_DB", help="SQLAlchemy URL [default: <root>/.ncaas/jobs.sqlite]")
]
FORMATS = ("table", "csv", "json")

budget_app = typer.Typer(help="Per-group budgets per period.", no_args_is_help=True)
pricing_app = typer.Typer(help="The deployment's pricing profile (Standard and Save rates).", no_args_is_help=True)


def local_bytes(path: Path) -> int:
    """What uploading ``path`` would store: a file's size, or a folder's files (hidden ones left out)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in folder_files(path).files)
    return path.stat().st_size


def _db(root: str, db: str | None) -> JobDB:
    return JobDB(db or f"sqlite:///{Storage(root).state_dir() / 'jobs.sqlite'}")


def _local_only(command: str) -> None:
    from .app import _local_only as refuse

    refuse(command)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise NcaasError(f"unknown --format {fmt!r}; allowed: {', '.join(FORMATS)}")


def _since(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        when = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise NcaasError(f"--since {value!r} is not a date; write it as YYYY-MM-DD, e.g. 2026-12-01") from None
    return int(when.timestamp() * 1000)


# -- ncaas cost ------------------------------------------------------------------------------
@errors
def cost(
    by: Annotated[
        str, typer.Option("--by", help=f"comma-separated columns to group by: {', '.join(BY)}")
    ] = "group,analysis,user,period",
    period: Annotated[str, typer.Option("--period", help=f"one of {', '.join(PERIODS)}")] = "month",
    group: Annotated[
        str | None, typer.Option("--group", "-g", help="only this group (with --server: always yours)")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="only jobs created on or after YYYY-MM-DD")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """What jobs cost: spend per group, analysis, user and period, with the breakdown; and the budget."""
    from .app import _backend

    _check_format(fmt)
    columns = [b.strip() for b in by.split(",") if b.strip()]
    with _backend(root, db) as backend:
        rows = backend.spend(columns, period, _since(since), group)
        mine = backend.group(group or "default") if group or not _is_embedded(backend) else None
        budget = backend.budget(mine) if mine else None
    if fmt == "json":
        out.print_json(json.dumps({"rows": rows, "budget": budget}))
        return
    if fmt == "csv":
        print(to_csv(rows), end="")
        return
    currency = rows[0]["currency"] if rows else "USD"
    table = Table(title=f"spend per {', '.join(columns)} ({period}, {currency})", title_justify="left")
    for col in columns:
        table.add_column(col, no_wrap=True)
    for col in ("jobs", "tasks", "compute", "transfer", "workflow", "lost", "total"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in rows:
        c = row["currency"]
        table.add_row(
            *[str(row[col]) for col in columns],
            str(row["jobs"]),
            str(row["tasks"]),
            *[money(row[k], c).removesuffix(f" {c}") for k in ("compute", "transfer", "workflow", "lost", "total")],
        )
    out.print(table)
    if budget:
        out.print(_budget_line(budget), highlight=False, markup=False)


def _is_embedded(backend: Any) -> bool:
    from .backend import Embedded

    return isinstance(backend, Embedded)


def _budget_line(b: dict[str, Any]) -> str:
    c = b["currency"]
    share = b["spent"] / b["amount"] * 100 if b["amount"] else 100.0
    return (
        f"budget of group {b['group']} for {b['label']}: spent {money(b['spent'], c)} of {money(b['amount'], c)} "
        f"({share:.1f} %), {money(b['committed'], c)} expected by running jobs, {money(max(b['left'], 0.0), c)} left; "
        f"a running job stops at {b['hard_cap']:g} x its estimate"
    )


# -- ncaas budget ----------------------------------------------------------------------------
@budget_app.command("set")
@errors
def budget_set(
    group: Annotated[str, typer.Argument(help="the group")],
    amount: Annotated[float, typer.Argument(help="the budget per period, in the pricing profile's currency")],
    period: Annotated[str, typer.Option("--period", help=f"one of {', '.join(PERIODS)}")] = "month",
    hard_cap: Annotated[
        float, typer.Option("--hard-cap", help="stop a running job whose cost passes this x its estimate")
    ] = 1.5,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Set a group's budget: a job whose estimate exceeds what is left is refused before it runs."""
    _local_only("budget set")
    from ..storage import check_group

    jobs = _db(root, db)
    set_budget(jobs, check_group(group), amount, period=period, hard_cap=hard_cap)
    currency = load_profile(Storage(root).state_dir()).currency
    out.print(f"group {group}: budget {money(amount, currency)} per {period}; hard cap {hard_cap:g} x the estimate")


@budget_app.command("show")
@errors
def budget_show(
    group: Annotated[str | None, typer.Argument(help="one group [default: yours with --server, else all]")] = None,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Each group's budget for this period: spent, expected by running jobs, left."""
    from .app import _backend

    with _backend(root, db) as backend:
        if group is None and _is_embedded(backend):
            names = [b.group for b in list_budgets(_db(root, db))]
        else:
            names = [backend.group(group or "default")]
        found = [b for b in (backend.budget(name) for name in names) if b]
    if not found:
        out.print("no budget set" + (f" for group {group}" if group else "") + "; `ncaas budget set GROUP AMOUNT`")
    for b in found:
        out.print(_budget_line(b), highlight=False, markup=False)


@budget_app.command("remove")
@errors
def budget_remove(group: Annotated[str, typer.Argument()], root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """Remove a group's budget (its jobs are no longer limited)."""
    _local_only("budget remove")
    removed = remove_budget(_db(root, db), group)
    out.print(f"group {group}: budget removed" if removed else f"group {group} had no budget")


# -- ncaas pricing ---------------------------------------------------------------------------
@pricing_app.command("default")
@errors
def pricing_default() -> None:
    """Print the default pricing profile (a sample to edit and install)."""
    print(DEFAULT_PROFILE_YAML, end="")


@pricing_app.command("show")
@errors
def pricing_show(root: RootOpt = default_root()) -> None:
    """Print the profile in force for this storage root (NCAAS_PRICING, else the installed one, else the default)."""
    state = Storage(root).state_dir()
    profile = load_profile(state)
    installed = profile_path(state)
    where = os.environ.get("NCAAS_PRICING") or (str(installed) if installed.is_file() else "the defaults")
    out.print(f"# pricing profile {profile.name} (sha256 {profile.digest()[:12]}), from {where}", markup=False)
    import yaml

    print(yaml.safe_dump(profile.model_dump(mode="json"), sort_keys=False), end="")


@pricing_app.command("install")
@errors
def pricing_install(
    file: Annotated[Path, typer.Argument(help="a pricing profile YAML (see `ncaas pricing default`)")],
    root: RootOpt = default_root(),
) -> None:
    """Validate a pricing profile and install it for this storage root (managers started afterwards use it)."""
    _local_only("pricing install")
    from ..private import private_dir

    profile = install_profile(file, private_dir(Storage(root).state_dir()))
    out.print(
        f"installed pricing profile {profile.name} ({profile.currency}; {len(profile.node_types)} node type(s)); "
        "restart `ncaas manager` / `ncaas serve` to apply it"
    )


# -- ncaas tco -------------------------------------------------------------------------------
def _measured(root: str, db: str | None, analysis: str) -> dict[str, float]:
    """The analysis' mean cost per dataset on this platform, Standard and Save, from its past runs."""
    from ..blueprint import BlueprintRegistry

    loaded = BlueprintRegistry.discover().get(analysis)
    if loaded is None:
        raise NcaasError(f"unknown analysis {analysis!r}; `ncaas analyses` lists them")
    profile = load_profile(Storage(root).state_dir())
    runs = history(_db(root, db), analysis)
    if not runs:
        raise NcaasError(f"{analysis} has no finished run here yet; run it once, or give --cost-per-dataset")
    shape = shape_of(loaded.blueprint, profile)
    out_costs: dict[str, float] = {}
    for option in OPTIONS:
        total = 0.0
        for run in runs:
            attempt = Attempt(1, 0, started_ms=0, ended_ms=int(run.seconds * 1000), outcome="succeeded")
            total += price_task(profile, shape, option, [attempt], now_ms=now_ms(), output_bytes=run.output_bytes).total
        out_costs[option] = total / len(runs)
    return out_costs


@errors
def tco(
    price: Annotated[float, typer.Option("--price", help="the local machine's price tag (x_local)")],
    local_seconds: Annotated[
        float, typer.Option("--local-seconds", help="the analysis' time per dataset on the local machine (t_local, s)")
    ],
    lifetime: Annotated[
        list[float] | None, typer.Option("--lifetime", help="years (n): 2 realistic, 4 optimistic; repeatable")
    ] = None,
    rate: Annotated[float, typer.Option("--rate", help="annuity rate (r), e.g. 0.05")] = 0.05,
    support: Annotated[float, typer.Option("--support", help="yearly support cost c_s(n): admin, upkeep, IT")] = 0.0,
    cost_per_dataset: Annotated[
        float | None, typer.Option("--cost-per-dataset", help="the platform's cost per dataset, Standard (x_p)")
    ] = None,
    save_cost_per_dataset: Annotated[
        float | None, typer.Option("--save-cost-per-dataset", help="the platform's cost per dataset, Save")
    ] = None,
    analysis: Annotated[
        str | None,
        typer.Option("--analysis", help="take both costs per dataset from this analysis' past runs here"),
    ] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the crossover figure (PNG) here")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Compare buying a local machine with this platform: EAC, LCC (datasets/week) and LUC (% of a week)."""
    if fmt not in ("table", "json"):
        raise NcaasError(f"unknown --format {fmt!r}; allowed: table, json")
    costs: dict[str, float] = {}
    if analysis is not None:
        _local_only("tco --analysis")
        costs = _measured(root, db, analysis)
    if cost_per_dataset is not None:
        costs["standard"] = cost_per_dataset
    if save_cost_per_dataset is not None:
        costs["save"] = save_cost_per_dataset
    if not costs:
        raise NcaasError("give the platform's cost per dataset: --cost-per-dataset X, or --analysis NAME to measure it")
    rows = [
        tco_model.crossover(
            tco_model.LocalMachine(price, years, rate, support),
            cost_per_dataset=x_p,
            local_seconds=local_seconds,
            option=option,
        )
        for years in (lifetime or [2.0])
        for option, x_p in costs.items()
    ]
    if plot is not None:
        plot.write_bytes(tco_model.figure_png(rows, title=f"{analysis or 'analysis'}: local machine vs ncaas"))
    if fmt == "json":
        out.print_json(json.dumps([r.to_json() for r in rows]))
        return
    table = Table(title=f"local machine of {price:.2f} vs ncaas (r = {rate:g}, support {support:.2f}/year)")
    for col in ("years", "price", "x_p", "EAC", "LCC/week", "LUC %", "pays off"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        table.add_row(
            f"{r.lifetime:g} y",
            r.option,
            f"{r.cost_per_dataset:.2f}" if r.cost_per_dataset >= 0.01 else f"{r.cost_per_dataset:.2g}",
            f"{r.eac:.2f}",
            f"{r.lcc:.2f}",
            f"{r.luc:.2f}",
            "yes" if r.pays_off else "never",
        )
    out.print(table)
    if plot is not None:
        out.print(f"figure: {plot}")


# -- ncaas reclaim ---------------------------------------------------------------------------
@errors
def reclaim(
    job_id: Annotated[str, typer.Argument(help="a Save job (its id or a unique prefix)")],
    dataset: Annotated[str | None, typer.Argument(help="only this dataset's task [default: every running one]")] = None,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Interrupt a Save job's running tasks, as a spot reclaim does: each is retried and its lost time charged."""
    _local_only("reclaim")
    from ..jobs.manager import Manager

    manager = Manager(Storage(root), _db(root, db))
    done = manager.reclaim(job_id, dataset)
    out.print(f"interrupting {', '.join(done)}; the running manager kills and retries them", markup=False)


def register(app: typer.Typer) -> None:
    app.command("cost")(cost)
    app.command("tco")(tco)
    app.command("reclaim")(reclaim)
    app.add_typer(budget_app, name="budget")
    app.add_typer(pricing_app, name="pricing")
