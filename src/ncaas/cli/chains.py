"""How the CLI shows chains (the plain dicts of :func:`ncaas.pipelines.runner.chain_detail`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .display import STATE_STYLE, clock, styled

__all__ = ["ChainWatch", "chain_table", "chains_table", "print_chain"]

STATE_STYLE.setdefault("waiting", "yellow")
STATE_STYLE.setdefault("stopped", "magenta")


def chains_table(chains: Iterable[dict[str, Any]]) -> Table:
    table = Table(title="chains")
    for col in ("chain", "pipeline", "steps", "state", "created"):
        table.add_column(col, no_wrap=True)
    table.add_column("cause", overflow="fold")
    for chain in chains:
        table.add_row(
            chain["id"],
            chain["pipeline"],
            " -> ".join(s["name"] for s in chain["steps"]),
            styled(chain["state"]),
            clock(chain["created_ms"]),
            Text(chain["cause"][:80]),
        )
    return table


def chain_table(detail: dict[str, Any]) -> Table:
    """One row per dataset, one column per step: the cell's state and its job."""
    table = Table()
    table.add_column("dataset", no_wrap=True)
    for step in detail["steps"]:
        table.add_column(f"{step['name']} ({step['analysis']})", no_wrap=True)
    for row in detail["datasets"]:
        cells = [f"{styled(c['state'])} {c['job'] or ''}".rstrip() for c in row["steps"]]
        table.add_row(Text(row["input"]), *cells)
    return table


def print_chain(out: Console, detail: dict[str, Any]) -> None:
    steps = " -> ".join(f"{s['name']} ({s['analysis']})" for s in detail["steps"])
    out.print(f"chain [bold]{detail['id']}[/bold]: pipeline {detail['pipeline']}: {steps}")
    out.print(f"state {styled(detail['state'])}: {detail['cause']}")
    if detail.get("rerun_of"):
        out.print(f"rerun of chain {detail['rerun_of']}")
    out.print(chain_table(detail))
    for row in detail["datasets"]:
        for cell in row["steps"]:
            if cell["reason"] and cell["state"] not in ("succeeded", "waiting", "queued", "running"):
                out.print(Text.assemble((f"{row['input']} · {cell['step']}: ", "bold"), cell["reason"]), soft_wrap=True)
    out.print(f"results: {detail['results_dir']}/chain.json; each step's job has its own results and certificate")


class ChainWatch:
    """Prints a line each time a cell of the chain changes (readable in logs and pipes)."""

    def __init__(self, out: Console):
        self.out = out
        self.seen: dict[tuple[str, str], str] = {}

    def update(self, detail: dict[str, Any]) -> None:
        for row in detail["datasets"]:
            for cell in row["steps"]:
                key = (row["dataset"], cell["step"])
                state = cell["state"]
                if self.seen.get(key) == state:
                    continue
                self.seen[key] = state
                if state == "waiting" and key[1] != detail["steps"][0]["name"]:
                    continue
                job = f" (job {cell['job']})" if cell["job"] else ""
                why = f": {cell['reason']}" if cell["reason"] and state not in ("succeeded", "waiting") else ""
                line = Text.assemble(
                    f"{row['input']} · {cell['step']}: ",
                    (state, STATE_STYLE.get(state, "white")),
                    job + why,
                )
                self.out.print(line, soft_wrap=True, highlight=False)
