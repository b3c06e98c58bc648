"""``ncaas dev new|run|publish``: from an empty folder to a published analysis.

``run`` is production's path on a private storage root inside the analysis folder
(``NAME/.ncaas-dev``): the same manager, environment build (uv, hashed lock, read-only,
verified) and sandbox as any job; then it shows what the platform sees.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from ..blueprint import Blueprint, BlueprintRegistry, load_blueprint, validate_blueprint_file
from ..dev.publish import blueprint_diff, blueprint_file, install, installed, tree_sha256
from ..dev.scaffold import scaffold
from ..exceptions import NcaasError
from ..isolation import environments
from ..jobs.db import JobDB
from ..jobs.manager import Manager
from .backend import Embedded, submission_name
from .console import errors, out
from .display import Watch, print_job, styled

__all__ = ["dev_app"]

dev_app = typer.Typer(
    help="Write an analysis: scaffold it, run it as production does, publish it.", no_args_is_help=True
)
Folder = Annotated[Path, typer.Argument(help="the analysis folder (made by `ncaas dev new`)")]
DEV_ROOT = ".ncaas-dev"
GROUP = "dev"


def _valid(folder: Path) -> Path:
    file = blueprint_file(folder)
    model, problems = validate_blueprint_file(file)
    if model is None:
        raise NcaasError(f"{file} is not a valid blueprint:\n  " + "\n  ".join(problems))
    return file


@dev_app.command("new")
@errors
def dev_new(
    name: Annotated[str, typer.Argument(help="the analysis' name, e.g. spike-count")],
    parent: Annotated[Path, typer.Option("--dir", help="where to make the folder")] = Path("."),
    lock: Annotated[bool, typer.Option(help="write its hashed lock now (uv pip compile)")] = True,
) -> None:
    """Make an analysis folder that runs at once: blueprint, pyproject, lock, entry point, sample, test."""
    folder = scaffold(name, parent)
    if lock:
        environments.lock(folder, lock_file=folder / environments.LOCK_NAME, name=name)
    out.print(f"[green]made {folder}[/green]:")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        out.print(f"  {path.relative_to(folder)}")
    out.print("next:")
    out.print(f"  ncaas dev run {folder} {folder / 'sample'}     # runs it exactly as the platform does")
    out.print(f"  ncaas dev publish {folder} --into DIR       # installs it where `ncaas manager` finds it")


@dev_app.command("run")
@errors
def dev_run(
    folder: Folder,
    data: Annotated[list[Path], typer.Argument(help="local datasets: files or folders, one task each")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="a config file (default: the blueprint's)")
    ] = None,
) -> None:
    """Run the analysis on local data as production does (sandbox, environment build); show status, logs,
    outputs and certificate."""
    file = _valid(folder)
    name = load_blueprint(file).name
    for item in [*data, *([config] if config is not None else [])]:
        if not item.exists():
            raise NcaasError(f"{item} does not exist; give a local file or folder (e.g. {folder / 'sample'})")
    backend = Embedded(str(folder / DEV_ROOT), None)
    backend.storage.makedirs(backend.storage.group_dir(GROUP))
    registry = BlueprintRegistry.discover([folder])  # this folder's blueprint only, as it is now
    manager = Manager(backend.storage, JobDB(backend.db_url), registry=registry)
    backend.__dict__["manager"] = manager  # the embedded backend, on the analysis' own registry
    for item, area in [*((d, "inputs") for d in data), *([(config, "configs")] if config is not None else [])]:
        stored = backend.storage.resolve(GROUP, area, item.resolve().name)
        if item.exists() and backend.storage.exists(stored) and not backend._same(stored, item):
            backend.storage.remove(stored)  # the development copy is edited between runs: the new one is run
    datanames = [backend.put_input(str(d), GROUP, left_out=lambda *_: None) for d in data]
    configname = backend.put_config(str(config), GROUP) if config is not None else None
    detail = backend.submit(GROUP, name, datanames, configname, submission_name(name))
    out.print(f"job [bold]{detail['id']}[/bold]: {name} on {len(datanames)} dataset(s), run as production runs it")
    with Watch(out) as watch:
        watch.update(detail, force=True)
        detail = backend.wait(detail["id"], on_status=watch.update)
        watch.finish(detail)
    print_job(out, detail, backend.story(detail["id"]))
    results = Path(detail["results_dir"])
    for task in detail["tasks"]:
        out.print(Text(f"--- log of {task['input']} ---", style="bold"))
        log = results / "logs" / f"{task['dataset']}.log"
        out.print(Text(log.read_text(errors="replace") if log.is_file() else "(no log)"), highlight=False)
    out.print(Text("--- outputs ---", style="bold"))
    for f in backend.files(detail["id"]):
        if f["path"].startswith("outputs/"):
            out.print(f"  {f['size']:>10}  {f['path']}")
    cert = results / "certificate.txt"
    out.print(Text("--- certificate ---", style="bold"))
    out.print(Text(cert.read_text() if cert.is_file() else "(none)"), highlight=False)
    out.print(f"{styled(detail['state'])}: results in {results}")
    raise typer.Exit(0 if detail["state"] == "succeeded" else 1)


@dev_app.command("publish")
@errors
def dev_publish(
    folder: Folder,
    into: Annotated[
        Path | None,
        typer.Option(
            "--into",
            envvar="NCAAS_PUBLISH_DIR",
            help="the folder of installed analyses the manager reads (one of NCAAS_BLUEPRINTS) "
            "[default: the first folder of NCAAS_BLUEPRINTS]",
        ),
    ] = None,
    lock: Annotated[bool, typer.Option(help="regenerate the hashed lock from pyproject.toml first")] = True,
) -> None:
    """Validate, lock, build, archive the version, print the blueprint diff against the installed version,
    then install it (queued and running jobs keep the version they were submitted with)."""
    into = into or _default_into()
    file = _valid(folder)
    out.print(f"[green]valid blueprint[/green]: {file}")
    loaded = load_blueprint(file)
    spec = environments.spec_for_blueprint(loaded)
    if spec is not None and spec.source is not None and lock:
        path = environments.lock(spec.source, lock_file=spec.lock_file, name=loaded.name)
        out.print(f"locked: {environments.pinned_packages(path)} package(s) in {path}")
        loaded = load_blueprint(file)
    if spec is not None:
        env, _ = environments.ensure(spec)
        out.print(f"environment builds: {env.path} (manifest {env.manifest_sha256[:12]})")
    old = installed(into, loaded.name)
    old_folder = (into / loaded.name).resolve()
    lines = blueprint_diff(
        old,
        loaded.blueprint,
        old_lock=_lock_of(old, old_folder) if old is not None else None,
        new_lock=_lock_of(loaded.blueprint, folder),
        old_source=tree_sha256(old_folder) if old is not None else None,
        new_source=tree_sha256(folder),
    )
    out.print(f"changes against the installed {loaded.name}" + (f" {old.version}" if old else "") + ":")
    for line in lines:
        style = "green" if ": +" in line else "red" if ": -" in line else None
        out.print(Text("  " + line, style=style or ""))
    target, new = install(folder, into, blueprint_sha256=loaded.sha256)
    what = "archived and installed" if new else "already archived; installed"
    out.print(f"[green]{what}[/green] {loaded.name} {loaded.blueprint.version}: {into / loaded.name} -> {target}")


def _lock_of(blueprint: Blueprint, folder: Path) -> Path:
    env = blueprint.environment
    return folder / env.lock if env.lock else folder / (env.source or ".") / environments.LOCK_NAME


def _default_into() -> Path:
    dirs = [p for p in os.environ.get("NCAAS_BLUEPRINTS", "").split(os.pathsep) if p]
    if not dirs:
        raise NcaasError(
            "where to publish? give --into DIR (the folder of installed analyses), or set NCAAS_BLUEPRINTS, "
            "the folders `ncaas manager` and `ncaas serve` read"
        )
    return Path(dirs[0])
