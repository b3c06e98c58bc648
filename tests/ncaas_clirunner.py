"""Run the real `ncaas` CLI in-process (typer's runner): the same code as the command,
without paying the interpreter start-up for every message check."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from ncaas.cli import app


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200", **(env or {})}, catch_exceptions=False)
    return result


def flat(text: str) -> str:
    """Text with rich's line wrapping undone, for substring checks."""
    return " ".join(text.split())
