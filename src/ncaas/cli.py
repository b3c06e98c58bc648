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
from rich.text import Text

from .blueprint import BlueprintRegistry, validate_blueprint_file
from .certificate import load_certificate
from .display import Watch, analyses_table, jobs_table, print_job, print_rerun, styled
from .exceptions import NcaasError, StorageError, SubmissionRejected
from .jobs.db import Job, JobDB
from .jobs.describe import job_detail, job_story, job_summary
from .jobs.manager import Manager, manager_lock
from .jobs.states import JOB_TERMINAL
from .localfolder import folder_files, left_out_note
from .storage import Storage, check_group, default_root
from .submission import SubmitLimits

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
MaxSubmitOpt = Annotated[str | None, typer.Option(
    "--max-submit-size", envvar="NCAAS_MAX_SUBMIT_SIZE",
    help="largest submit file accepted; larger ones are rejected unread (default 1MiB)")]
MaxDatasetsOpt = Annotated[int | None, typer.Option(
    "--max-datasets", envvar="NCAAS_MAX_DATASETS", help="most datasets one job may have (default 10000)")]



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


# -- commands -------------------------------------------------------------------------------
@app.command()
@_errors
def analyses() -> None:
    """List the analyses that can be run."""
    registry = BlueprintRegistry.discover()
    out.print(analyses_table({"name": name, "version": bp.blueprint.version, "description": bp.blueprint.description,
                              "sha256": bp.sha256, "path": bp.path}
                             for name, bp in ((n, registry.blueprints[n]) for n in registry.names())))
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
    if not local.is_dir():
        storage.put(local, target)
        return name
    found = folder_files(local)
    if found.left_out:
        print_left_out(name, found.left_out)
    for file in found.files:
        storage.put(file, f"{target}/{found.relative(file)}")
    return name


def print_left_out(dataset: str, left_out: list[str]) -> None:
    """One line saying which hidden files of a local folder were not uploaded."""
    out.print(Text.assemble(f"{dataset}: ", (left_out_note(left_out), "dim")), soft_wrap=True)


def same_content(storage: Storage, target: str, local: Path) -> bool:
    """Whether a stored file or folder holds exactly what ``local`` holds (hidden files left out)."""
    if local.is_dir() != storage.isdir(target):
        return False
    if not local.is_dir():
        return Storage(local.parent).describe_tree(str(local.resolve())) == storage.describe_tree(target)
    local_tree = {f["path"]: (f["size"], f["sha256"]) for f in describe_folder(local)}
    return local_tree == {f["path"]: (f["size"], f["sha256"]) for f in storage.describe_tree(target)}


def describe_folder(local: Path) -> list[dict[str, Any]]:
    """Relative path, size and sha256 of every file of a local folder that would be uploaded
    (hidden ones left out), as :meth:`Storage.describe_tree` describes a stored one."""
    found = folder_files(local)
    files = Storage(local.parent)
    return [{"path": found.relative(f), "size": files.size(str(f)), "sha256": files.sha256(str(f))}
            for f in found.files]


def _watch(manager: Manager, job: Job) -> Job:
    """Run the job embedded, showing its progress (a live table, or lines in logs and pipes)."""
    with Watch(out) as watch:
        watch.update(job_detail(manager, job), force=True)

        def over() -> bool:
            current = manager.db.job(job.id)
            if watch.due():
                watch.update(job_detail(manager, job))
            return current is None or (current.state in JOB_TERMINAL and current.finalized)

        manager.run(scan=False, until=over)
        watch.finish(job_detail(manager, job))
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
    out.print(f"{styled(job.state)}: results in {job.results_dir}, certificate {job.results_dir}/certificate.txt")
    raise typer.Exit(0 if job.state == "succeeded" else 1)


@app.command()
@_errors
def status(job_id: Annotated[str | None, typer.Argument(help="job id (or unique prefix)")] = None,
           limit: Annotated[int, typer.Option(help="jobs listed")] = 20,
           root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """List recent jobs, or show one job's tasks and story."""
    manager = _manager(root, db)
    if job_id is None:
        jobs = manager.db.jobs(limit=limit)
        out.print(jobs_table(job_summary(job, 0) for job in jobs))
        for note in manager.storage.skipped_folders().values():
            out.print(Text.assemble(("note: ", "yellow"), note), soft_wrap=True)
        return
    job = manager.find(job_id)
    print_job(out, job_detail(manager, job), job_story(manager, job))


@app.command()
@_errors
def logs(job_id: Annotated[str, typer.Argument(help="job id (or unique prefix)")],
         dataset: Annotated[str | None, typer.Argument(
             help="only this dataset (its name in inputs/, or its key)")] = None,
         follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
         root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """Print the analysis' logs of a job."""
    manager = _manager(root, db)
    job = manager.find(job_id)
    tasks = manager.db.tasks(job.id)  # a dataset by its name in inputs/, else by its key
    names = [t.dataset for t in tasks if dataset in (None, t.dataset_rel)] or \
        [t.dataset for t in tasks if t.dataset == dataset]
    if dataset is not None and not names:
        raise NcaasError(f"job {job.id} has no dataset {dataset!r}")
    offsets = dict.fromkeys(names, 0)
    while True:
        for name in names:
            try:
                chunk = manager.storage.read_from(f"{job.results_dir}/logs/{name}.log", offsets[name])
            except FileNotFoundError:
                continue
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
        out.print(f"job {job.id} is already over ({styled(job.state)})")
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
    out.print(f"job {job.id} ({styled(job.state)}): {job.results_dir}")
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
    ok = print_rerun(out, {"id": job.id, "state": job.state}, rows)
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
    max_submit_size: MaxSubmitOpt = None,
    max_datasets: MaxDatasetsOpt = None,
) -> None:
    """Watch storage for submissions (including ones made while it was down) and run them."""
    from .executors.pick import executor_for

    storage = Storage(root)
    runner = executor_for(executor, storage, ray_address=ray_address, ray_max_cpus=ray_max_cpus)
    if scan_interval is None:
        scan_interval = 0.0 if storage.is_local else 2.0
    manager = _manager(root, db, default_analysis=analysis, poll_interval=interval, executor=runner,
                       scan_interval=scan_interval, limits=SubmitLimits.from_env(max_submit_size, max_datasets),
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
