"""``ncaas``: the command line (typer + rich). Commands parse, call the library, print.

Errors are :class:`ncaas.exceptions.NcaasError`; :func:`_errors` is the one place that
turns them into a message and an exit code — never a traceback.
"""

from __future__ import annotations

import functools
import json
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .blueprint import BlueprintRegistry, validate_blueprint_file
from .certificate import load_certificate
from .exceptions import NcaasError, StorageError, SubmissionRejected
from .jobs.db import Job, JobDB
from .jobs.manager import Manager, manager_lock
from .jobs.states import JOB_TERMINAL
from .storage import Storage, check_group, default_root

__all__ = ["app", "main"]

app = typer.Typer(help="ncaas: neuroscience analysis as a service.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
blueprint_app = typer.Typer(help="Work with blueprint files.", no_args_is_help=True)
app.add_typer(blueprint_app, name="blueprint")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])

RootOpt = Annotated[str, typer.Option("--root", envvar="NCAAS_ROOT", help="storage root (dir or URL)")]
DbOpt = Annotated[str | None, typer.Option("--db", envvar="NCAAS_DB",
                                           help="SQLAlchemy URL [default: <root>/.ncaas/jobs.sqlite]")]
STATE_STYLE = {"queued": "yellow", "running": "cyan", "succeeded": "green", "failed": "red",
               "cancelled": "magenta", "timed_out": "red", "rejected": "red"}


def _errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            server = _TARGET.get("server")
            if server is not None:  # `ncaas --server URL --token T <command>`: the same command via the API
                from .server.remote import LOCAL_ONLY, run_remote
                if fn.__name__ not in LOCAL_ONLY:
                    return run_remote(fn.__name__, server, kwargs)
            return fn(*args, **kwargs)
        except SubmissionRejected as exc:
            err.print("[red]submission rejected:[/red]")
            for problem in exc.problems:
                err.print(f"  - {problem}")
            raise typer.Exit(exc.exit_code) from None
        except NcaasError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(exc.exit_code) from None
    return wrapper  # type: ignore[return-value]


_TARGET: dict[str, Any] = {}  # set by the --server/--token options for this invocation


@app.callback()
def _target(server: Annotated[str | None, typer.Option(
                "--server", envvar="NCAAS_SERVER", help="run the command on this ncaas server (URL) "
                "instead of embedded")] = None,
            token: Annotated[str | None, typer.Option("--token", envvar="NCAAS_TOKEN",
                                                      help="API token for --server")] = None) -> None:
    _TARGET.clear()
    if server is not None:
        from .server.remote import Remote
        _TARGET["server"] = Remote(server, token)


def _manager(root: str, db: str | None, **kwargs: Any) -> Manager:
    storage = Storage(root)
    return Manager(storage, JobDB(db or f"sqlite:///{storage.state_dir() / 'jobs.sqlite'}"), **kwargs)


def _styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _ms(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _read_status(manager: Manager, job: Job, dataset: str) -> dict[str, Any]:
    path = f"{job.results_dir}/status/{dataset}.json"
    try:
        return json.loads(manager.storage.read_text(path))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _task_table(manager: Manager, job: Job) -> Table:
    job = manager.db.job(job.id) or job
    table = Table(title=f"job {job.id} · {job.analysis} · {_styled(job.state)}", title_justify="left")
    table.add_column("dataset", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("message", overflow="ellipsis", no_wrap=True, max_width=30)
    for col in ("try", "started", "CPU s", "peak MB"):
        table.add_column(col, no_wrap=True, justify="right")
    for task in manager.db.tasks(job.id):
        status = _read_status(manager, job, task.dataset)
        progress = float(status.get("progress") or 0.0)
        peak = task.peak_memory_bytes
        table.add_row(task.dataset, _styled(task.state), f"{progress:4.0%}", str(status.get("message", "")),
                      str(task.attempt), _ms(task.started_ms),
                      f"{task.cpu_seconds:.2f}" if task.cpu_seconds is not None else "-",
                      f"{peak / 1e6:.0f}" if peak else "-")
    return table


# -- commands -------------------------------------------------------------------------------
@app.command()
@_errors
def analyses() -> None:
    """List the analyses that can be run."""
    registry = BlueprintRegistry.discover()
    table = Table("name", "version", "description", "blueprint sha256", "path")
    for name in registry.names():
        bp = registry.blueprints[name]
        table.add_row(name, bp.blueprint.version, bp.blueprint.description, bp.sha256[:12], str(bp.path))
    out.print(table)
    for path, problem in registry.invalid.items():
        err.print(f"[yellow]skipped invalid blueprint {path}:[/yellow] {problem}")


@blueprint_app.command("validate")
@_errors
def blueprint_validate(file: Annotated[Path, typer.Argument(help="blueprint.yaml to check")]) -> None:
    """Validate a blueprint file, explaining every error with its location."""
    model, problems = validate_blueprint_file(file)
    if model is None:
        err.print(f"[red]{file} is not a valid blueprint:[/red]")
        for problem in problems:
            err.print(f"  - {problem}")
        raise typer.Exit(1)
    out.print(f"[green]{file} is a valid blueprint[/green]: {model.name} {model.version}, "
              f"sha256 {model.content_hash()}")


def _copy_in(storage: Storage, group: str, area: str, item: str) -> str:
    """Copy a local file/folder into ``<group>/<area>/`` (unless already there); return its name."""
    local = Path(item)
    if not local.exists():
        return item  # a name already in storage; validation checks it
    name = local.resolve().name
    target = storage.resolve(group, area, name)
    if storage.exists(target):
        if not same_content(storage, target, local):
            raise StorageError(f"{group}/{area}/{name} already exists with different content; rename your "
                               f"local {'folder' if local.is_dir() else 'file'} or submit the stored one by name")
        return name
    storage.put(local, target)
    return name


def same_content(storage: Storage, target: str, local: Path) -> bool:
    """Whether a stored file or folder holds exactly what ``local`` holds."""
    if local.is_dir() != storage.isdir(target):
        return False
    local_tree = Storage(local.parent).describe_tree(str(local.resolve()))
    return local_tree == storage.describe_tree(target)


def _watch_lines(manager: Manager, job: Job, *, every: float = 5.0) -> Job:
    """Run the job embedded, printing a progress line per dataset when it changes
    (for logs and pipes, where a live table cannot redraw)."""
    seen: dict[str, tuple] = {}
    last = 0.0

    def report() -> None:
        for task in manager.db.tasks(job.id):
            status = _read_status(manager, job, task.dataset)
            row = (task.state, round(float(status.get("progress") or 0.0), 2), status.get("message", ""))
            if seen.get(task.dataset) != row:
                seen[task.dataset] = row
                out.print(f"{time.strftime('%H:%M:%S')} {task.dataset}: {row[0]} {row[1]:4.0%} {row[2]}",
                          highlight=False, markup=False)

    def over() -> bool:
        nonlocal last
        current = manager.db.job(job.id)
        if time.monotonic() - last > every:
            report()
            last = time.monotonic()
        return current is None or (current.state in JOB_TERMINAL and current.finalized)

    manager.run(scan=False, until=over)
    report()
    out.print(_task_table(manager, job))
    return manager.db.job(job.id) or job


def _watch(manager: Manager, job: Job) -> Job:
    """Run the job embedded, showing a live per-dataset table."""
    if not out.is_terminal:
        return _watch_lines(manager, job)
    last = 0.0
    with Live(_task_table(manager, job), console=out, auto_refresh=False) as live:
        def over() -> bool:
            nonlocal last
            current = manager.db.job(job.id)
            if time.monotonic() - last > 0.25:
                live.update(_task_table(manager, job), refresh=True)
                last = time.monotonic()
            return current is None or (current.state in JOB_TERMINAL and current.finalized)
        manager.run(scan=False, until=over)
        live.update(_task_table(manager, job), refresh=True)
    return manager.db.job(job.id) or job


@app.command()
@_errors
def submit(
    analysis: Annotated[str, typer.Argument(help="analysis name (see `ncaas analyses`)")],
    data: Annotated[list[str], typer.Argument(help="local files/folders to upload, or names in inputs/")],
    config: Annotated[str | None, typer.Option("--config", "-c", help="local config file, or a name in configs/")] = None,
    group: Annotated[str, typer.Option("--group", "-g", envvar="NCAAS_GROUP", help="your group")] = "default",
    wait: Annotated[bool, typer.Option("--wait", "-w", help="run now, embedded, and show live progress")] = False,
    name: Annotated[str | None, typer.Option(help="submission name [default: analysis-time]")] = None,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Upload data and config into the group's storage and submit a job."""
    manager = _manager(root, db, notify=None)
    storage = manager.storage
    check_group(group)
    datanames = [_copy_in(storage, group, "inputs", item) for item in data]
    configname = _copy_in(storage, group, "configs", config) if config is not None else None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    name = name or f"{analysis}-{stamp}-{secrets.token_hex(2)}"
    body = {"analysis": analysis, "dataname": datanames, "configname": configname, "timestamp": stamp}
    path = storage.resolve(group, "submissions", f"{name}.submit.json")
    storage.write_text(path, json.dumps({k: v for k, v in body.items() if v is not None}, indent=2))
    job = manager.ingest_file(group, path)
    assert job is not None
    if job.state == "rejected":
        err.print(f"[red]submission rejected[/red] (job {job.id}; details in {job.results_dir}/error.txt):")
        for problem in job.cause.splitlines():
            err.print(f"  - {problem}")
        raise typer.Exit(SubmissionRejected.exit_code)
    out.print(f"job [bold]{job.id}[/bold]: {analysis} on {len(datanames)} dataset(s); results in {job.results_dir}")
    if not wait:
        out.print("a running `ncaas manager` will run it; follow with `ncaas status " + job.id + "`")
        return
    job = _watch(manager, job)
    out.print(f"{_styled(job.state)}: results in {job.results_dir}, certificate {job.results_dir}/certificate.txt")
    raise typer.Exit(0 if job.state == "succeeded" else 1)


@app.command()
@_errors
def status(job_id: Annotated[str | None, typer.Argument(help="job id (or unique prefix)")] = None,
           limit: Annotated[int, typer.Option(help="jobs listed")] = 20,
           root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """List recent jobs, or show one job's tasks and story."""
    manager = _manager(root, db)
    if job_id is None:
        table = Table()
        table.add_column("job", no_wrap=True)
        for col in ("group", "analysis", "state", "created"):
            table.add_column(col, no_wrap=True)
        table.add_column("cause", overflow="fold")
        for job in manager.db.jobs(limit=limit):
            table.add_row(job.id, job.group, job.analysis or "-", _styled(job.state), _ms(job.created_ms),
                          job.cause[:80])
        out.print(table)
        return
    job = manager.find(job_id)
    if job.state == "rejected":
        out.print(f"job {job.id}: {_styled('rejected')} ({job.submission})")
        for problem in job.cause.splitlines():
            out.print(f"  - {problem}")
        return
    out.print(_task_table(manager, job))
    out.print(f"results: {job.results_dir}")
    out.print("story:")
    for event in manager.db.events(job.id):
        who = event.dataset or "job"
        out.print(f"  {_ms(event.at_ms)} {who}: {event.from_state or '-'} -> {event.to_state} ({event.cause})")


@app.command()
@_errors
def logs(job_id: Annotated[str, typer.Argument(help="job id (or unique prefix)")],
         dataset: Annotated[str | None, typer.Argument(help="only this dataset")] = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
         root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """Print the analysis' logs of a job."""
    manager = _manager(root, db)
    job = manager.find(job_id)
    names = [t.dataset for t in manager.db.tasks(job.id) if dataset in (None, t.dataset)]
    if dataset is not None and not names:
        raise NcaasError(f"job {job.id} has no dataset {dataset!r}")
    offsets = dict.fromkeys(names, 0)
    while True:
        for name in names:
            path = manager.storage.local_path(f"{job.results_dir}/logs/{name}.log")
            if not path.exists():
                continue
            with open(path, "rb") as fh:
                fh.seek(offsets[name])
                chunk = fh.read()
            offsets[name] += len(chunk)
            for line in chunk.decode("utf-8", "replace").splitlines():
                text = Text.assemble((name, "dim"), " | ", line) if len(names) > 1 else Text(line)
                out.print(text, highlight=False, soft_wrap=True)
        current = manager.db.job(job.id)
        if not follow or current is None or current.state in JOB_TERMINAL:
            return
        time.sleep(0.25)


@app.command()
@_errors
def cancel(job_id: Annotated[str, typer.Argument(help="job id (or unique prefix)")],
           root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """Cancel a job: queued tasks never start, running ones are stopped within seconds."""
    manager = _manager(root, db)
    job = manager.cancel(job_id)
    if job.state in JOB_TERMINAL:
        out.print(f"job {job.id} is already over ({_styled(job.state)})")
        return
    out.print(f"cancelling job {job.id}; running tasks are being stopped")


@app.command()
@_errors
def results(job_id: Annotated[str, typer.Argument(help="job id (or unique prefix)")],
            to: Annotated[Path | None, typer.Option("--to", help="copy the results folder here")] = None,
            root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """List a job's result files, or copy them to a folder."""
    manager = _manager(root, db)
    job = manager.find(job_id)
    storage = manager.storage
    if to is not None:
        to.mkdir(parents=True, exist_ok=True)
        storage.get(job.results_dir + "/", str(to))
        out.print(f"copied {job.results_dir} to {to}")
        return
    out.print(f"job {job.id} ({_styled(job.state)}): {job.results_dir}")
    for file in storage.files(job.results_dir):
        out.print(f"  {storage.size(file):>12}  {file.removeprefix(job.results_dir + '/')}")


@app.command()
@_errors
def rerun(certificate: Annotated[Path, typer.Argument(help="certificate.json (or the results folder)")],
          root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """Rerun a certified job on the same inputs and compare the outputs file by file."""
    from .rerun import rerun_certificate

    manager = _manager(root, db)
    cert = load_certificate(certificate)
    out.print(f"rerunning job {cert['job']['id']} ({cert['blueprint'].get('name')}) ...")
    job, rows = rerun_certificate(manager, cert, notify=lambda m: out.print(f"  {m}"))
    table = Table("output", "verdict", title=f"rerun as job {job.id}: {_styled(job.state)}", title_justify="left")
    for row in rows:
        style = "green" if row["verdict"] == "match" else "red"
        table.add_row(row["path"], f"[{style}]{row['verdict']}[/]")
    out.print(table)
    matched = sum(r["verdict"] == "match" for r in rows)
    ok = job.state == "succeeded" and matched == len(rows)
    out.print(f"[{'green' if ok else 'red'}]{matched} of {len(rows)} output files match[/]")
    raise typer.Exit(0 if ok else 1)


@app.command("manager")
@_errors
def run_manager(
    analysis: Annotated[str | None, typer.Option(help="analysis for NeuroCAAS-style submit files naming none")] = None,
    interval: Annotated[float, typer.Option(help="seconds between polls of storage and tasks")] = 0.05,
    root: RootOpt = default_root(), db: DbOpt = None,
    executor: Annotated[str, typer.Option(help="where tasks run: local (this machine) or ray (a Ray cluster)")] = "local",
    ray_address: Annotated[str | None, typer.Option(envvar="NCAAS_RAY_ADDRESS",
                                                    help="Ray cluster to join: HEAD:PORT, or auto on a node")] = None,
    ray_max_cpus: Annotated[int | None, typer.Option(help="CPUs an autoscaling Ray cluster may grow to")] = None,
    scan_interval: Annotated[float | None, typer.Option(
        help="seconds between scans for new submit files [default: every poll; 2 on s3://]")] = None,
) -> None:
    """Watch storage for submissions (including ones made while it was down) and run them."""
    from .executors.pick import executor_for

    storage = Storage(root)
    runner = executor_for(executor, storage, ray_address=ray_address, ray_max_cpus=ray_max_cpus)
    if scan_interval is None:
        scan_interval = 0.0 if storage.is_local else 2.0
    manager = _manager(root, db, default_analysis=analysis, poll_interval=interval, executor=runner,
                       scan_interval=scan_interval,
                       notify=lambda m: out.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {m}"))
    lock = manager_lock(manager.storage)
    if lock is None:
        raise NcaasError(f"another `ncaas manager` is already running on {manager.storage.url}")
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out.print(f"ncaas manager on {manager.storage.url} (db {manager.db.url}); "
              f"{executor} executor, {manager.executor.cpus} cpus; Ctrl-C stops it")
    manager.run(should_stop=lambda: stopping)
    if executor == "ray":
        runner.close()
        out.print("manager stopped; its Ray tasks stopped with it and are retried at the next start")
    else:
        out.print("manager stopped; running tasks continue and are adopted at the next start")
    lock.close()


def _server_commands() -> None:
    from .server.commands import register  # `ncaas serve` and `ncaas admin ...`

    register(app, errors=_errors, out=out, err=err)


_server_commands()


def _environment_commands() -> None:
    from .environment_commands import register  # `ncaas env build|verify|lock`

    register(app, errors=_errors, out=out, err=err)


_environment_commands()


def main() -> None:
    app()
