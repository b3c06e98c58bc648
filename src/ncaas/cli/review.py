"""``ncaas review``: the address of a job's review page on a server (docs/review.md)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from ..exceptions import NcaasError

__all__ = ["review_urls"]


def review_urls(server: str, detail: dict[str, Any], dataset: str | None) -> list[str]:
    """The review page of each succeeded dataset of the job ``detail`` (or of ``dataset`` alone)."""
    tasks = {t["dataset"]: t for t in detail.get("tasks", [])}
    if dataset is not None and dataset not in tasks:
        raise NcaasError(f"job {detail['id']} has no dataset {dataset!r}; its datasets: {', '.join(sorted(tasks))}")
    names = [dataset] if dataset is not None else sorted(tasks)
    ready = [n for n in names if tasks[n]["state"] == "succeeded"]
    if not ready:
        states = ", ".join(f"{n} {tasks[n]['state']}" for n in names) or "no datasets"
        raise NcaasError(f"job {detail['id']} has no succeeded dataset to review ({states}); wait for it to finish")
    base = server.rstrip("/")
    return [f"{base}/review?{urlencode({'job': detail['id'], 'dataset': n})}" for n in ready]
