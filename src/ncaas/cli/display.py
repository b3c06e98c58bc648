"""How the CLI shows analyses and jobs — the same output embedded and against a server.

Everything here renders the plain dicts of :mod:`ncaas.jobs.describe` (which
the API returns as JSON), so ``ncaas status`` prints the same bytes whether it
reads the local job database or asks a server.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..cost.report import money

__all__ = [
    "STATE_STYLE",
    "Watch",
    "analyses_table",
    "clock",
    "cost_lines",
    "jobs_table",
    "print_job",
    "print_rerun",
    "print_verdict",
    "styled",
    "task_table",
]

MESSAGE_WIDTH = 30  # characters of a task's message the job table shows
STATE_STYLE = {
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "timed_out": "red",
    "rejected": "red",
}


def styled(state: str) -> str:
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def clock(ms: int | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def analyses_table(rows: Iterable[dict[str, Any]]) -> Table:
    """Rows with ``name``, ``version``, ``description``, ``sha256``, ``path``."""
    table = Table("name", "version", "description", "blueprint sha256", "path")
    for a in rows:
        table.add_row(a["name"], a["version"], a["description"], a["sha256"][:12], str(a["path"]))
    return table


def jobs_table(jobs: Iterable[dict[str, Any]]) -> Table:
    """Job summaries, newest first."""
    table = Table()
    table.add_column("job", no_wrap=True)
    for col in ("group", "analysis", "state", "created"):
        table.add_column(col, no_wrap=True)
    table.add_column("cause", overflow="fold")
    for job in jobs:
        table.add_row(
            job["id"],
            job["group"],
            job["analysis"] or "-",
            styled(job["state"]),
            clock(job["created_ms"]),
            Text(job["cause"][:80]),  # may quote a submitter's config: never read as markup
        )
    return table


def task_table(detail: dict[str, Any]) -> Table:
    """One row per dataset of a job detail: state, progress, message, attempt, resources."""
    table = Table(title=f"job {detail['id']} · {detail['analysis']} · {styled(detail['state'])}", title_justify="left")
    table.add_column("dataset", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("progress", no_wrap=True)
    table.add_column("message", overflow="ellipsis", no_wrap=True, max_width=MESSAGE_WIDTH)
    for col in ("try", "started", "CPU s", "peak MB", "cost"):
        table.add_column(col, no_wrap=True, justify="right")
    for t in detail["tasks"]:
        peak = t["peak_memory_bytes"]
        cost = t.get("cost")
        table.add_row(
            t["dataset"],
            styled(t["state"]),
            f"{t['progress']:4.0%}",
            Text(str(t["message"])),  # the task's own words: never read as markup
            str(t["attempt"]),
            clock(t["started_ms"]),
            f"{t['cpu_seconds']:.2f}" if t["cpu_seconds"] is not None else "-",
            f"{peak / 1e6:.0f}" if peak else "-",
            money(cost["total"], cost["currency"]) if cost else "-",
        )
    return table


def _breakdown(cost: dict[str, Any]) -> str:
    c = cost["currency"]
    lost = f", of which lost to interruptions {money(cost['lost'], c)} ({cost['lost_seconds']:.1f} s)"
    return (
        f"{money(cost['total'], c)} at the {cost['option']} price: compute {money(cost['compute'], c)} "
        f"({cost['seconds']:.1f} task-seconds{lost if cost.get('lost') else ''}), "
        f"transfer {money(cost['transfer'], c)}, workflow {money(cost['workflow'], c)}"
        + ("" if cost.get("final") else " (so far)")
    )


def cost_lines(detail: dict[str, Any]) -> list[str]:
    """The job's cost with its breakdown, its estimate, and for a rerun the original's cost."""
    lines = []
    if detail.get("cost"):
        lines.append(f"cost: {_breakdown(detail['cost'])}")
    estimate = detail.get("estimate")
    if estimate:
        lines.append(
            f"estimated: {money(estimate['cost'], estimate['currency'])} "
            f"(range {money(estimate['cost_low'], estimate['currency'])} - "
            f"{money(estimate['cost_high'], estimate['currency'])}, from {estimate['runs']} past run(s))"
        )
    if detail.get("original_cost"):
        lines.append(f"the original job {detail['rerun_of']} cost: {_breakdown(detail['original_cost'])}")
    return lines


def print_messages(out: Console, detail: dict[str, Any]) -> None:
    """What the task table cuts short, in full: what a task waits for, why it failed, or a
    finished task's long last message (caliali's says whether its fit converged)."""
    for t in detail["tasks"]:
        if t["state"] in ("queued", "failed", "timed_out") and t["message"] and t["message"] == t["cause"]:
            out.print(f"{t['dataset']}: {t['cause']}", highlight=False, markup=False)
        elif t["state"] == "succeeded" and len(str(t["message"])) > MESSAGE_WIDTH:
            out.print(f"{t['dataset']}: {t['message']}", highlight=False, markup=False)


def print_job(out: Console, detail: dict[str, Any], story: Iterable[dict[str, Any]]) -> None:
    """``ncaas status JOB``: the task table, where the results are, and the job's story."""
    if detail["state"] == "rejected":
        out.print(f"job {detail['id']}: {styled('rejected')} ({detail['submission']})")
        for problem in detail["cause"].splitlines():
            out.print(f"  - {problem}")
        return
    out.print(task_table(detail))
    for t in detail["tasks"]:  # an escaped or cut key (ncaas.submission.dataset_key): which dataset it is
        if "%" in t["dataset"]:
            out.print(f"{t['dataset']} is dataset {t['input']}", highlight=False, markup=False)
    print_messages(out, detail)
    if detail.get("chain"):
        out.print(f"a step of chain {detail['chain']} (`ncaas status {detail['chain']}` shows the whole chain)")
    for line in cost_lines(detail):
        out.print(line, highlight=False, markup=False)
    out.print(f"results: {detail['results_dir']}")
    out.print("story:")
    for event in story:
        who = event["dataset"] or "job"
        out.print(
            f"  {clock(event['at_ms'])} {who}: {event['from_state'] or '-'} -> {event['to_state']} ({event['cause']})",
            markup=False,  # a cause may quote what a task said
        )


_VERDICT_STYLE = {"identical": "green", "within_tolerance": "green", "missing": "red", "extra": "red"}


def print_verdict(out: Console, rows: list[dict[str, Any]], title: str) -> bool:
    """The file-by-file verdict and its one-line summary; True when nothing differs, is missing or extra."""
    from ..provenance.verdicts import LABELS, summary_line, verdicts_ok

    table = Table(title=title, title_justify="left")
    table.add_column("output", overflow="fold")
    table.add_column("verdict", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("detail", overflow="fold")
    for row in rows:
        style = _VERDICT_STYLE.get(row["verdict"], "red")
        label = LABELS.get(row["verdict"], row["verdict"])
        table.add_row(escape(row["path"]), f"[{style}]{label}[/]", row.get("kind", ""), escape(row.get("detail", "")))
    out.print(table)
    ok = verdicts_ok(rows)
    out.print(f"[{'green' if ok else 'red'}]{summary_line(rows)}[/]")
    return ok


def print_rerun(out: Console, job: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """The file-by-file verdict of a rerun; True when the rerun succeeded and nothing differs."""
    ok = print_verdict(out, rows, f"rerun as job {job['id']}: {styled(job['state'])}")
    return job["state"] == "succeeded" and ok


class Watch:
    """Shows a running job: a live table on a terminal; in logs and pipes, where a table
    cannot redraw, one line per dataset whenever its state, progress or message changed
    (at most every ``every`` seconds), then the final table.

    Call :meth:`due` to ask whether an update would be shown, :meth:`update` with a fresh
    job detail, and :meth:`finish` with the last one.
    """

    def __init__(self, out: Console, *, every: float | None = None):
        self.out = out
        self.live: Live | None = None
        self.every = every if every is not None else (0.25 if out.is_terminal else 5.0)
        self._last = -float("inf")
        self._seen: dict[str, tuple] = {}

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every

    def update(self, detail: dict[str, Any], *, force: bool = False) -> None:
        if not (force or self.due()):
            return
        self._last = time.monotonic()
        if self.out.is_terminal:
            if self.live is None:
                self.live = Live(task_table(detail), console=self.out, auto_refresh=False)
                self.live.start()
            self.live.update(task_table(detail), refresh=True)
            return
        for t in detail["tasks"]:
            row = (t["state"], round(float(t["progress"]), 2), t["message"])
            if self._seen.get(t["dataset"]) != row:
                self._seen[t["dataset"]] = row
                self.out.print(
                    f"{time.strftime('%H:%M:%S')} {t['dataset']}: {row[0]} {row[1]:4.0%} {row[2]}",
                    highlight=False,
                    markup=False,
                )

    def finish(self, detail: dict[str, Any]) -> None:
        self.update(detail, force=True)
        if self.live is not None:
            self.live.stop()
            self.live = None
        else:
            self.out.print(task_table(detail))
