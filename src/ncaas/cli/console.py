"""Where the CLI writes, and the one place its errors become messages and exit codes.

Commands raise :class:`ncaas.exceptions.NcaasError`; :func:`errors` wraps every command and
turns them into a line on stderr and the error's exit code, never a traceback.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ..exceptions import NcaasError, SubmissionRejected

__all__ = ["err", "errors", "out"]

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def errors(fn: F) -> F:
    """Run a command; say what went wrong (and exit with its code) instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SubmissionRejected as exc:
            job = exc.job
            where = f" (job {job['id']}; details in {job['results_dir']}/error.txt)" if job else ""
            err.print(f"[red]submission rejected[/red]{where}:")
            for problem in exc.problems:
                err.print(f"  - {problem}")
            raise typer.Exit(exc.exit_code) from None
        except NcaasError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]
