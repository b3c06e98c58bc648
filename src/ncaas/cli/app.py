"""``ncaas``: the command line (typer + rich). Commands parse, call a backend, print.

Each command that acts on jobs is written once against :class:`ncaas.cli.backend.Backend`:
embedded (a storage root on this machine) or, with ``--server URL --token T``, a server.
Errors are :class:`ncaas.exceptions.NcaasError`; :func:`ncaas.cli.console.errors` is the one place that
turns them into a message and an exit code — never a traceback.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.text import Text

from ..blueprint import validate_blueprint_file
from ..exceptions import JobNotFound, NcaasError
from ..executors.local import LocalExecutor
from ..jobs.db import JobDB
from ..jobs.manager import Manager, manager_lock
from ..jobs.owner import record_owner, require_owner_here
from ..jobs.states import JOB_TERMINAL
from ..storage import Storage, default_root
from ..storage.localfolder import left_out_note
from ..submission import SubmitLimits
from . import cost as cost_commands
from . import dev as dev_commands
from . import environments as environment_commands
from . import server as server_commands
from .backend import Backend, Embedded, Remote, submission_name
from .chains import ChainWatch, chains_table, print_chain
from .console import err, errors, out
from .cost import local_bytes
from .display import (
    Watch,
    analyses_table,
    cost_lines,
    jobs_table,
    print_job,
    print_messages,
    print_rerun,
    print_verdict,
    styled,
)
from .server import ExecutorOpt, RayAddressOpt, RayMaxCpusOpt, RayS3SettingsOpt, SlurmProfileOpt

__all__ = ["app", "main"]

app = typer.Typer(
    help="ncaas: neuroscience analysis as a service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
blueprint_app = typer.Typer(help="Work with blueprint files.", no_args_is_help=True)
app.add_typer(blueprint_app, name="blueprint")

RootOpt = Annotated[str, typer.Option("--root", envvar="NCAAS_ROOT", help="storage root (dir or URL)")]
DbOpt = Annotated[
    str | None, typer.Option("--db", envvar="NCAAS_DB", help="SQLAlchemy URL [default: <root>/.ncaas/jobs.sqlite]")
]
JobArg = Annotated[str, typer.Argument(help="job id (or unique prefix)")]
MaxSubmitOpt = Annotated[
    str | None,
    typer.Option(
        "--max-submit-size",
        envvar="NCAAS_MAX_SUBMIT_SIZE",
        help="largest submit file accepted; larger ones are rejected unread (default 1MiB)",
    ),
]
MaxDatasetsOpt = Annotated[
    int | None,
    typer.Option("--max-datasets", envvar="NCAAS_MAX_DATASETS", help="most datasets one job may have (default 10000)"),
]


CHAIN_PREFIX = "chain-"  # a chain's id; a job's begins with its date
_SERVER: dict[str, str | None] = {}  # --server / --token of this invocation


@app.callback()
def _target(
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="NCAAS_SERVER", help="run the command on this ncaas server (URL) instead of embedded"
        ),
    ] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="NCAAS_TOKEN", help="API token for --server")] = None,
) -> None:
    _SERVER.clear()
    if server is not None:
        _SERVER.update(url=server, token=token)


@contextmanager
def _backend(root: str, db: str | None, command: str | None = None) -> Iterator[Backend]:
    """The server named by ``--server``, else the storage root on this machine.

    A job ``command`` run embedded on a root in object storage needs the manager of that root
    on this machine (with the same job database); elsewhere it is refused, naming the server.
    """
    if _SERVER.get("url"):
        remote = Remote(str(_SERVER["url"]), _SERVER.get("token"))
        try:
            yield remote
        finally:
            remote.close()
    else:
        embedded = Embedded(root, db)
        if command is not None:
            require_owner_here(embedded.storage, embedded.db_url, command)
        yield embedded


def _chain(backend: Backend, ref: str) -> dict[str, Any]:
    detail = backend.chain(ref)
    if detail is None:
        raise JobNotFound(f"no chain {ref!r}; `ncaas status` lists the chains")
    return detail


def _chain_logs(backend: Backend, ref: str, dataset: str | None, follow: bool) -> None:
    """Every step's log, dataset by dataset; with ``follow``, new lines as they come until the chain ends."""
    detail = _chain(backend, ref)
    if not [r for r in detail["datasets"] if dataset in (None, r["input"], r["dataset"])]:
        raise NcaasError(f"chain {detail['id']} has no dataset {dataset!r}")
    offsets: dict[tuple[str, str], int] = {}
    while True:
        for row in detail["datasets"]:
            if dataset not in (None, row["input"], row["dataset"]):
                continue
            for cell in row["steps"]:
                if cell["job"] is None:
                    if not follow:
                        out.print(Text(f"== {row['input']} · {cell['step']} ({cell['state']}) =="), style="bold")
                        out.print(Text(cell["reason"] or "not started"))
                    continue
                key = (cell["job"], row["dataset"])
                if key not in offsets:
                    head = f"== {row['input']} · {cell['step']} ({cell['state']}, job {cell['job']}) =="
                    out.print(Text(head), style="bold")
                    offsets[key] = 0
                chunk = backend.log_bytes(cell["job"], row["dataset"], offsets[key])
                offsets[key] += len(chunk)
                for line in chunk.decode("utf-8", "replace").splitlines():
                    out.print(Text(line), highlight=False, soft_wrap=True)
        if not follow or detail["finished"]:
            return
        time.sleep(0.5)
        detail = _chain(backend, ref)


def _rerun_chain(backend: Backend, ref: str) -> bool:
    original = _chain(backend, ref)
    out.print(f"rerunning chain {original['id']} ({original['pipeline']}) ...")
    started = backend.rerun_chain(original["id"])
    out.print(f"  chain {started['id']} started; results in {started['results_dir']}")
    watch = ChainWatch(out)
    detail = backend.wait_chain(started["id"], watch.update)
    print_chain(out, detail)
    ok = detail["state"] == original["state"]
    before = {(r["dataset"], c["step"]): c for r in original["datasets"] for c in r["steps"]}
    for row in detail["datasets"]:
        for cell in row["steps"]:
            was = before.get((row["dataset"], cell["step"]))
            title = f"{row['input']} · {cell['step']}"
            if was is None or was["job"] is None or cell["job"] is None:
                same = (was or {}).get("state") == cell["state"]
                ok = ok and same
                out.print(f"{title}: {cell['state']} (was {(was or {}).get('state')}){'' if same else ' — differs'}")
                continue
            ok = (
                print_verdict(
                    out, backend.compare(cell["job"], was["job"]), f"{title}: job {cell['job']} against {was['job']}"
                )
                and ok
            )
    out.print("[green]the chain's rerun matches[/green]" if ok else "[red]the chain's rerun differs[/red]")
    return ok


def _manager(root: str, db: str | None, **kwargs: Any) -> Manager:
    storage = Storage(root)
    return Manager(storage, JobDB(db or f"sqlite:///{storage.state_dir() / 'jobs.sqlite'}"), **kwargs)


def _local_only(command: str) -> None:
    if _SERVER.get("url"):
        raise NcaasError(
            f"the server at {_SERVER['url']} runs its own job manager; run `ncaas {command}` "
            "on the machine that holds the storage instead"
        )


def print_left_out(dataset: str, left_out: list[str]) -> None:
    """One line saying which hidden files of a local folder were not uploaded."""
    out.print(Text.assemble(f"{dataset}: ", (left_out_note(left_out), "dim")), soft_wrap=True)


def _watch(backend: Backend, detail: dict[str, Any]) -> dict[str, Any]:
    """Follow a job to its end, showing its progress (a live table, or lines in logs and pipes)."""
    with Watch(out) as watch:
        watch.update(detail, force=True)
        detail = backend.wait(detail["id"], on_status=watch.update)
        watch.finish(detail)
    return detail


# -- commands -------------------------------------------------------------------------------
@app.command()
@errors
def analyses(root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """List the analyses that can be run."""
    with _backend(root, db) as backend:
        rows, invalid = backend.analyses()
    out.print(analyses_table(rows))
    for path, problem in invalid.items():
        err.print(f"[yellow]skipped invalid blueprint {path}:[/yellow] {problem}")


@blueprint_app.command("validate")
@errors
def blueprint_validate(file: Annotated[Path, typer.Argument(help="blueprint.yaml to check")]) -> None:
    """Validate a blueprint file, explaining every error with its location."""
    model, problems = validate_blueprint_file(file)
    if model is None:
        err.print(f"[red]{file} is not a valid blueprint:[/red]")
        for problem in problems:
            err.print(f"  - {problem}")
        raise typer.Exit(1)
    out.print(
        f"[green]{file} is a valid blueprint[/green]: {model.name} {model.version}, sha256 {model.content_hash()}"
    )


def _is_pipeline(name: str) -> bool:
    """A submit of a pipeline file (``*.yaml``/``*.yml``, local or in configs/) rather than of an analysis."""
    return name.endswith((".yaml", ".yml"))


def _submit_chain(backend: Backend, group: str, pipeline: str, data: list[str], name: str | None, wait: bool) -> None:
    datanames = [backend.put_input(item, group, left_out=print_left_out) for item in data]
    stored = backend.put_config(pipeline, group)  # a pipeline lives in configs/, as configs do
    detail = backend.submit_pipeline(group, stored, datanames, name or submission_name(Path(stored).stem))
    steps = " -> ".join(s["name"] for s in detail["steps"])
    out.print(
        f"chain [bold]{detail['id']}[/bold]: {detail['pipeline']} ({steps}) on {len(datanames)} dataset(s); "
        f"results in {detail['results_dir']}"
    )
    if not wait:
        out.print("a running `ncaas manager` will run it; follow with `ncaas status " + detail["id"] + "`")
        return
    watch = ChainWatch(out)
    detail = backend.wait_chain(detail["id"], watch.update)
    watch.update(detail)
    print_chain(out, detail)
    raise typer.Exit(0 if detail["state"] == "succeeded" else 1)


@app.command()
@errors
def submit(
    analysis: Annotated[
        str,
        typer.Argument(
            help="analysis name (see `ncaas analyses`), or a pipeline file (*.yaml: local, or a name in configs/)"
        ),
    ],
    data: Annotated[list[str], typer.Argument(help="local files/folders to upload, or names in inputs/")],
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="local config file, or a name in configs/")
    ] = None,
    group: Annotated[str, typer.Option("--group", "-g", envvar="NCAAS_GROUP", help="your group")] = "default",
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="follow the job to its end (embedded: run it now)")
    ] = False,
    name: Annotated[str | None, typer.Option(help="submission name [default: analysis-time]")] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save", help="the Save price: cheaper, but a task may be interrupted and retried (lost time is charged)"
        ),
    ] = False,
    estimate: Annotated[
        bool,
        typer.Option("--estimate", help="only say what the job would take and cost, from past runs; submit nothing"),
    ] = False,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Upload data and config into the group's storage and submit a job (or a chain, given a pipeline file)."""
    pricing = "save" if save else "standard"
    with _backend(root, db, "submit") as backend:
        group = backend.group(group)
        if _is_pipeline(analysis):
            if config is not None:
                raise NcaasError("a pipeline gives each step its config; drop --config")
            if estimate or save:
                raise NcaasError(
                    "--estimate and --save apply to one analysis' job; submit a pipeline without them "
                    "(its steps run at the standard price)"
                )
            _submit_chain(backend, group, analysis, data, name, wait)
            return
        if estimate:
            local = [item for item in data if Path(item).exists()]
            sizes = [local_bytes(Path(item)) for item in local]
            found = backend.estimate(group, analysis, [d for d in data if d not in local], sizes, pricing)
            out.print(found["message"], highlight=False, markup=False)
            return
        datanames = [backend.put_input(item, group, left_out=print_left_out) for item in data]
        configname = backend.put_config(config, group) if config is not None else None
        detail = backend.submit(
            group, analysis, datanames, configname, name or submission_name(analysis), pricing=pricing
        )
        results_dir = detail["results_dir"]
        out.print(
            f"job [bold]{detail['id']}[/bold]: {analysis} on {len(datanames)} dataset(s); results in {results_dir}"
        )
        if not wait:
            out.print("a running `ncaas manager` will run it; follow with `ncaas status " + detail["id"] + "`")
            return
        detail = _watch(backend, detail)
        for line in cost_lines(detail)[:1]:
            out.print(line, highlight=False, markup=False)
        print_messages(out, detail)
    out.print(f"{styled(detail['state'])}: results in {results_dir}, certificate {results_dir}/certificate.txt")
    raise typer.Exit(0 if detail["state"] == "succeeded" else 1)


@app.command()
@errors
def status(
    job_id: Annotated[str | None, typer.Argument(help="job id (or unique prefix)")] = None,
    limit: Annotated[int, typer.Option(help="jobs listed")] = 20,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """List recent jobs, or show one job's tasks and story."""
    with _backend(root, db, "status") as backend:
        if job_id is None:
            out.print(jobs_table(backend.jobs(limit)))
            chains = backend.chains(limit)
            if chains:
                out.print(chains_table(chains))
            for note in backend.notes():
                out.print(Text.assemble(("note: ", "yellow"), note), soft_wrap=True)
            return
        if job_id.startswith(CHAIN_PREFIX):
            print_chain(out, _chain(backend, job_id))
            return
        detail = backend.job(job_id)
        print_job(out, detail, backend.story(detail["id"]) if detail["state"] != "rejected" else [])


@app.command()
@errors
def logs(
    job_id: JobArg,
    dataset: Annotated[str | None, typer.Argument(help="only this dataset (its name in inputs/, or its key)")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing until the job ends")] = False,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Print the analysis' logs of a job (of a chain: every step's, dataset by dataset)."""
    with _backend(root, db, "logs") as backend:
        if job_id.startswith(CHAIN_PREFIX):
            _chain_logs(backend, job_id, dataset, follow)
            return
        detail = backend.job(job_id)
        tasks = detail["tasks"]  # a dataset by its name in inputs/, else by its key
        names = [t["dataset"] for t in tasks if dataset in (None, t["input"])] or [
            t["dataset"] for t in tasks if t["dataset"] == dataset
        ]
        if dataset is not None and not names:
            raise NcaasError(f"job {detail['id']} has no dataset {dataset!r}")
        offsets = dict.fromkeys(names, 0)
        while True:
            for name in names:
                chunk = backend.log_bytes(detail["id"], name, offsets[name])
                offsets[name] += len(chunk)
                for line in chunk.decode("utf-8", "replace").splitlines():
                    text = Text.assemble((name, "dim"), " | ", line) if len(names) > 1 else Text(line)
                    out.print(text, highlight=False, soft_wrap=True)
            if not follow or backend.job(detail["id"])["state"] in JOB_TERMINAL:
                return
            time.sleep(0.25)


@app.command()
@errors
def cancel(job_id: JobArg, root: RootOpt = default_root(), db: DbOpt = None) -> None:
    """Cancel a job (or a chain): queued tasks never start, running ones are stopped within seconds."""
    with _backend(root, db, "cancel") as backend:
        if job_id.startswith(CHAIN_PREFIX):
            chain = backend.cancel_chain(job_id)
            out.print(f"chain {chain['id']}: {styled(chain['state'])}; no further step starts")
            return
        detail = backend.cancel(job_id)
    if detail["state"] in JOB_TERMINAL:
        out.print(f"job {detail['id']} is already over ({styled(detail['state'])})")
        return
    out.print(f"cancelling job {detail['id']}; running tasks are being stopped")


@app.command()
@errors
def results(
    job_id: JobArg,
    to: Annotated[Path | None, typer.Option("--to", help="copy the results folder here")] = None,
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """List a job's result files, or copy them to a folder."""
    with _backend(root, db, "results") as backend:
        detail = backend.job(job_id)
        if to is not None:
            backend.download(detail["id"], to)
            out.print(f"copied {detail['results_dir']} to {to}")
            return
        out.print(f"job {detail['id']} ({styled(detail['state'])}): {detail['results_dir']}")
        for f in backend.files(detail["id"]):
            out.print(f"  {f['size']:>12}  {f['path']}")


@app.command()
@errors
def rerun(
    job: Annotated[
        str,
        typer.Argument(
            help="the job to rerun: its id, or a certificate.json this platform wrote (or its results folder)"
        ),
    ],
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Rerun a job on the same inputs with the same analysis version and config; compare outputs file by file.

    A chain (``chain-...``) reruns as a whole: its first steps from their certificates, each later
    step on the rerun's own outputs; every step's outputs are compared with the original's.
    """
    with _backend(root, db, "rerun") as backend:
        if job.startswith(CHAIN_PREFIX):
            raise typer.Exit(0 if _rerun_chain(backend, job) else 1)
        original, detail = backend.rerun(job, notify=out.print)
        out.print(f"  job {detail['id']} started; results in {detail['results_dir']}")
        detail = _watch(backend, detail)
        ok = print_rerun(out, detail, backend.compare(detail["id"], original))
    raise typer.Exit(0 if ok else 1)


@app.command()
@errors
def review(
    job: JobArg,
    dataset: Annotated[str | None, typer.Argument(help="one dataset of the job (default: every succeeded one)")] = None,
) -> None:
    """Print the address of the web page reviewing a job's neurons (needs --server; docs/review.md)."""
    from .review import review_urls

    if not _SERVER.get("url"):
        raise NcaasError(
            "the review page is a page of an ncaas server: give --server URL --token TOKEN "
            "(or set NCAAS_SERVER and NCAAS_TOKEN), e.g. ncaas --server http://host:8000 --token T review JOB"
        )
    remote = Remote(str(_SERVER["url"]), _SERVER.get("token"))
    try:
        detail = remote.job(job)
        analyses = {a["name"]: a for a in remote.client.analyses()}
    finally:
        remote.close()
    if not analyses.get(detail.get("analysis") or "", {}).get("review"):
        raise NcaasError(
            f"analysis {detail.get('analysis')} of job {detail['id']} declares no review; nothing to review"
        )
    for url in review_urls(str(_SERVER["url"]), detail, dataset):
        out.print(url, soft_wrap=True)


@app.command()
@errors
def compare(
    original: Annotated[str, typer.Argument(help="the job compared against: its id (a unique prefix is enough)")],
    job: Annotated[str, typer.Argument(help="the job whose outputs are judged, e.g. one run with a changed config")],
    root: RootOpt = default_root(),
    db: DbOpt = None,
) -> None:
    """Compare two finished jobs' outputs file by file, by the comparators the analysis declares."""
    with _backend(root, db, "compare") as backend:
        first, second = backend.job(original), backend.job(job)
        ok = print_verdict(
            out, backend.compare(second["id"], first["id"]), f"job {second['id']} against job {first['id']}"
        )
    raise typer.Exit(0 if ok else 1)


@app.command("manager")
@errors
def run_manager(
    analysis: Annotated[str | None, typer.Option(help="analysis for NeuroCAAS-style submit files naming none")] = None,
    interval: Annotated[float, typer.Option(help="seconds between polls of storage and tasks")] = 0.05,
    root: RootOpt = default_root(),
    db: DbOpt = None,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = None,
    ray_max_cpus: RayMaxCpusOpt = None,
    ray_s3_settings: RayS3SettingsOpt = None,
    slurm_profile: SlurmProfileOpt = None,
    scan_interval: Annotated[
        float | None, typer.Option(help="seconds between scans for new submit files [default: every poll; 2 on s3://]")
    ] = None,
    max_submit_size: MaxSubmitOpt = None,
    max_datasets: MaxDatasetsOpt = None,
) -> None:
    """Watch storage for submissions (including ones made while it was down) and run them."""
    from ..executors.pick import executor_for
    from ..private import use_private_umask

    _local_only("manager")
    use_private_umask()  # uploads, results and the platform's state: readable by this user only
    storage = Storage(root)
    runner = executor_for(
        executor,
        storage,
        ray_address=ray_address,
        ray_max_cpus=ray_max_cpus,
        ray_s3_settings=ray_s3_settings,
        slurm_profile=slurm_profile,
    )
    if scan_interval is None:
        scan_interval = 0.0 if storage.is_local else 2.0
    manager = _manager(
        root,
        db,
        default_analysis=analysis,
        poll_interval=interval,
        executor=runner,
        scan_interval=scan_interval,
        limits=SubmitLimits.from_env(max_submit_size, max_datasets),
        notify=lambda m: out.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {escape(m)}"),  # m may quote a task
    )
    lock = manager_lock(manager.storage)
    if lock is None:
        raise NcaasError(f"another `ncaas manager` is already running on {manager.storage.url}")
    record_owner(manager.storage, manager.db.url)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    out.print(
        f"ncaas manager on {manager.storage.url} (db {manager.db.url}); "
        f"{executor} executor, {manager.executor.cpus} cpus; Ctrl-C stops it"
    )
    manager.run(should_stop=lambda: stopping)
    if isinstance(runner, LocalExecutor) or runner.name == "slurm":  # tasks run on without the manager
        out.print("manager stopped; running tasks continue and are adopted at the next start")
    else:  # Ray: its tasks belong to this manager
        runner.close()
        out.print("manager stopped; its Ray tasks stopped with it and are retried at the next start")
    lock.close()


app.command()(server_commands.serve)
cost_commands.register(app)
app.add_typer(server_commands.admin, name="admin")
app.add_typer(environment_commands.env_app, name="env")
app.add_typer(dev_commands.dev_app, name="dev")


def main() -> None:
    app()
