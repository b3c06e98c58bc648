"""``ncaas env build|verify|lock``: analysis environments from the command line.

Added to the main CLI by :mod:`ncaas.cli.app`; errors are rendered by the CLI's
one error handler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..blueprint import BlueprintRegistry
from ..isolation import environments
from ..isolation.environments import EnvironmentBuildError, EnvironmentSpec
from .console import err, errors, out

__all__ = ["env_app"]

Analysis = Annotated[str, typer.Argument(help="analysis name (from its blueprint), or an analysis package folder")]


def _spec(analysis: str) -> EnvironmentSpec:
    registry = BlueprintRegistry.discover()
    loaded = registry.get(analysis)
    if loaded is None:
        folder = Path(analysis)
        if (folder / "pyproject.toml").is_file():
            folder = folder.resolve()
            return EnvironmentSpec(folder.name, folder / environments.LOCK_NAME, folder)
        known = ", ".join(registry.names()) or "none"
        raise EnvironmentBuildError(
            f"no analysis {analysis!r}; known analyses: {known} "
            "(or give an analysis package folder holding a pyproject.toml)"
        )
    spec = environments.spec_for_blueprint(loaded)
    if spec is None:
        raise EnvironmentBuildError(
            f"the blueprint of {analysis} ({loaded.path}) names no environment; "
            "its tasks run with the platform's own python. Add environment.source "
            "(and environment.lock) to it"
        )
    return spec


env_app = typer.Typer(help="Immutable analysis environments: build, verify, lock.", no_args_is_help=True)


@env_app.command("build")
@errors
def env_build(
    analysis: Analysis,
    force: Annotated[bool, typer.Option(help="rebuild even if built (e.g. after it failed verification)")] = False,
) -> None:
    """Build an analysis' environment from its lock (once; later calls verify it)."""
    spec = _spec(analysis)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"{spec.name}: checking", total=1.0)
        env, built = environments.ensure(
            spec,
            rebuild=force,
            progress=lambda f, m: bar.update(task, completed=f, description=f"{spec.name}: {m[:70]}"),
        )
    what = "built" if built else "already built; verified"
    out.print(f"[green]{spec.name} environment {what}[/green]: {env.path}")
    out.print(f"  python    {env.python}")
    out.print(f"  lock      {spec.lock_file} sha256 {env.lock_sha256}")
    out.print(f"  manifest  sha256 {env.manifest_sha256} ({len(env.manifest['files'])} files)")


@env_app.command("verify")
@errors
def env_verify(analysis: Analysis) -> None:
    """Re-hash every file of an analysis' environment against its manifest."""
    spec = _spec(analysis)
    env = environments.find(spec)
    if env is None:
        raise EnvironmentBuildError(
            f"the {spec.name} environment for its current lock and source is not "
            f"built; build it with `ncaas env build {analysis}`"
        )
    check = environments.verify(env)
    if check.ok:
        out.print(f"[green]ok[/green]: {env.path}: {check.summary()}; manifest sha256 {env.manifest_sha256}")
        return
    err.print(
        f"[red]{env.path} changed since it was built[/red] ({len(check.problems)} differences); "
        f"tasks will not run in it. Rebuild it with `ncaas env build {analysis} --force`"
    )
    for problem in check.problems[:30]:
        err.print(f"  - {problem}")
    if len(check.problems) > 30:
        err.print(f"  ... and {len(check.problems) - 30} more")
    raise typer.Exit(environments.EnvironmentBroken.exit_code)


@env_app.command("lock")
@errors
def env_lock(analysis: Analysis) -> None:
    """(Re)generate an analysis' hashed lock from its pyproject.toml and/or its blueprint's requirements."""
    spec = _spec(analysis)
    if spec.source is None and not spec.requirements:
        raise EnvironmentBuildError(
            f"{analysis} names neither environment.source nor environment.requirements to lock from"
        )
    path = environments.lock(
        spec.source,
        lock_file=spec.lock_file,
        name=spec.name,
        requirements=spec.requirements,
        find_links=spec.wheel_folders(),
    )
    pins = environments.pinned_packages(path)
    out.print(f"[green]locked[/green] {pins} packages with their sha256 hashes into {path}")
