"""The verdict of a rerun, file by file: identical, equal within tolerance, or what differs.

Two certificates are compared output by output. A file with the same sha256 is *identical*
and is never read. A file whose bytes differ is compared by the kind its analysis declares
for it in the blueprint's ``compare`` rules (the original job's blueprint; the first pattern
that matches wins; ``exact`` by default): the two files are fetched from storage (local or
S3) into a private folder, checked against their certified sha256, and compared by
:mod:`ncaas.provenance.compare` in the platform's sandbox, since outputs are written by user
code: no network, read-only files, a memory limit and a timeout. A comparison that fails says
so as that file's verdict. One that finds the same values once the fields its rule ignores are
left out (a summary's ``run`` section of timings, say) is *identical* too, its detail saying so.

Verdicts are kept in the platform's state folder (never in group storage, which the group
can write), keyed by the two certificates' hashes, so each pair is compared once (a verdict
with a file that could not be compared is not kept: that may pass).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..blueprint import CompareRule, rule_for
from ..exceptions import NcaasError
from ..isolation import sandbox
from ..isolation.verdict import human_size
from ..storage import Storage
from .certificate import fingerprint

__all__ = ["BAD", "LABELS", "compare_certificates", "compare_in_sandbox", "summary_line", "verdicts_ok"]

VERDICT_VERSION = 1  # part of the cache key: better comparators are not answered by old verdicts
COMPARE_MEMORY = 2 << 30
COMPARE_TIMEOUT = float(os.environ.get("NCAAS_COMPARE_TIMEOUT") or 600)
LABELS = {
    "identical": "identical",
    "within_tolerance": "equal within tolerance",
    "different": "different",
    "missing": "missing",
    "extra": "extra",
    "not_compared": "could not compare",
}
BAD = frozenset({"different", "missing", "extra", "not_compared"})
_RULES = TypeAdapter(list[CompareRule])


def _cert_hash(cert: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cert, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _rules(cert: dict[str, Any]) -> list[CompareRule]:
    try:
        return _RULES.validate_python((cert.get("blueprint") or {}).get("content", {}).get("compare") or [])
    except ValidationError:
        return []  # a blueprint this version cannot read: every file compared exactly


def _row(dataset: str, path: str, verdict: str, kind: str = "exact", detail: str = "") -> dict[str, str]:
    return {
        "dataset": dataset,
        "path": posixpath.join(dataset, path),
        "verdict": verdict,
        "kind": kind,
        "detail": detail,
    }


def _what(entry: dict[str, Any]) -> str:
    if "sha256" in entry:
        return f"{entry.get('size', 0):,} bytes"
    return f"a {entry.get('kind')}" + (f" to {entry['target']}" if "target" in entry else "")


def _exact_detail(a: dict[str, Any], b: dict[str, Any]) -> str:
    if "sha256" in a and "sha256" in b and a.get("size") == b.get("size"):
        return f"contents differ (both {a.get('size', 0):,} bytes)"
    return f"{_what(a)} vs {_what(b)}"


class _Comparison:
    """Fetches the two versions of a file into a private folder and compares them in a sandbox."""

    def __init__(self, storage: Storage, before: dict[str, Any], after: dict[str, Any], scratch: Path):
        self.storage, self.scratch, self.count = storage, scratch, 0
        self.jobs = [str(c["job"]["id"]) for c in (before, after)]
        self.dirs = [storage.results_dir(c["job"]["group"], c["job"]["id"]) for c in (before, after)]

    def _fetch(self, side: int, dataset: str, entry: dict[str, Any], into: Path) -> str | None:
        """Copy one certified output here; a problem in words when it is gone or changed since."""
        stored = f"{self.dirs[side]}/outputs/{dataset}/{entry['path']}"
        target = into / posixpath.basename(entry["path"])
        into.mkdir()
        try:
            self.storage.get(stored, str(target))
        except (OSError, NcaasError) as exc:
            return f"the stored file cannot be read ({exc})"
        if not target.is_file():
            return f"the stored {entry['path']} of job {self.jobs[side]} is gone or no longer a regular file"
        with open(target, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        if digest != entry["sha256"]:
            return f"the stored {entry['path']} of job {self.jobs[side]} changed since its certificate was written"
        return None

    def run(self, dataset: str, a: dict[str, Any], b: dict[str, Any], rule: CompareRule) -> tuple[str, str]:
        """(verdict, detail), as :func:`compare_in_sandbox` gives them."""
        self.count += 1
        folder = self.scratch / str(self.count)
        folder.mkdir()
        try:
            for side, entry in enumerate((a, b)):
                problem = self._fetch(side, dataset, entry, folder / "ab"[side])
                if problem is not None:
                    return "not_compared", problem
            name = posixpath.basename(a["path"])
            return compare_in_sandbox(folder / "a" / name, folder / "b" / name, rule)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def compare_in_sandbox(a: Path, b: Path, rule: CompareRule, *, timeout: float | None = None) -> tuple[str, str]:
    """Compare two local files by ``rule`` in the platform's sandbox: (verdict, detail).

    The verdict is ``identical`` (the same values, no tolerance used: the bytes differ only in
    layout, metadata or ignored fields), ``within_tolerance``, ``different``, or
    ``not_compared`` when no comparison could be made (a malformed file, the memory limit or the
    timeout reached); ``detail`` says how close, what differs, or why.
    """
    request = {
        "a": str(a.absolute()),
        "b": str(b.absolute()),
        "kind": rule.kind,
        "rtol": rule.rtol,
        "atol": rule.atol,
        "ignore": list(rule.ignore),
    }
    spec = sandbox.SandboxSpec(
        readonly=[a.parent.absolute(), b.parent.absolute(), *sandbox.platform_python_paths()],
        memory=COMPARE_MEMORY,
        cpus=1,
        processes=64,
    )
    argv = [sys.executable, "-I", "-m", "ncaas.provenance.compare", json.dumps(request)]
    try:
        result = sandbox.run(argv, spec, timeout=timeout or COMPARE_TIMEOUT)
    except NcaasError as exc:
        return "not_compared", str(exc)
    if result.verdict.reason == "timeout":
        return "not_compared", f"the comparison took longer than its {timeout or COMPARE_TIMEOUT:g} s"
    if result.verdict.reason == "memory":
        return "not_compared", f"the comparison needed more than its {human_size(COMPARE_MEMORY)} of memory"
    if not result.verdict.ok:
        return "not_compared", f"the comparison ended early: {result.verdict.message}"
    for line in reversed(result.output.splitlines()):
        try:
            answer = json.loads(line)
        except ValueError:
            continue
        if isinstance(answer, dict) and "error" in answer:
            return "not_compared", str(answer["error"])
        if isinstance(answer, dict) and "equal" in answer:
            verdict = "identical" if answer.get("exact") else "within_tolerance" if answer["equal"] else "different"
            return verdict, str(answer.get("detail", ""))
    return "not_compared", "the comparison gave no answer"


def _compare(storage: Storage, before: dict[str, Any], after: dict[str, Any], scratch: Path) -> list[dict[str, str]]:
    rules = _rules(before)
    comparison = _Comparison(storage, before, after, scratch)
    after_tasks = {t["dataset"]: t for t in after["tasks"]}
    rows = []
    for task in before["tasks"]:
        dataset = task["dataset"]
        old = {o["path"]: o for o in task["outputs"]}
        new = {o["path"]: o for o in after_tasks.pop(dataset, {}).get("outputs", [])}
        for path in sorted(set(old) | set(new)):
            if path not in new:
                rows.append(_row(dataset, path, "missing", detail="not in the rerun"))
                continue
            if path not in old:
                rows.append(_row(dataset, path, "extra", detail="only in the rerun"))
                continue
            a, b, rule = old[path], new[path], rule_for(rules, path)
            if fingerprint(a) == fingerprint(b):
                rows.append(_row(dataset, path, "identical", rule.kind))
                continue
            if rule.kind == "exact" or "sha256" not in a or "sha256" not in b:
                rows.append(_row(dataset, path, "different", rule.kind, _exact_detail(a, b)))
                continue
            verdict, detail = comparison.run(dataset, a, b, rule)
            rows.append(_row(dataset, path, verdict, rule.kind, detail))
    for dataset, task in after_tasks.items():
        rows += [_row(dataset, o["path"], "extra", detail="only in the rerun") for o in task["outputs"]]
    return rows


def compare_certificates(storage: Storage, before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, str]]:
    """Verdicts of ``after``'s outputs against ``before``'s (both certificates the platform signed).

    Rows hold ``dataset``, ``path`` (under the outputs folder), ``verdict`` (a key of
    :data:`LABELS`), ``kind`` (the comparator used) and ``detail`` (what differs, or how close).
    """
    state = storage.state_dir()
    cache = state / "verdicts" / f"v{VERDICT_VERSION}-{_cert_hash(before)}-{_cert_hash(after)}.json"
    try:
        return json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    (state / "tmp").mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ncaas-compare-", dir=state / "tmp"))  # mode 0700: ours alone
    try:
        rows = _compare(storage, before, after, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if any(r["verdict"] == "not_compared" for r in rows):
        return rows  # perhaps passing (a timeout under load, no sandbox): asked again, compared again
    cache.parent.mkdir(parents=True, exist_ok=True)
    partial = cache.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps(rows))
    os.replace(partial, cache)
    return rows


def verdicts_ok(rows: list[dict[str, Any]]) -> bool:
    """True when nothing is different, missing, extra, or left uncompared."""
    return not any(r["verdict"] in BAD for r in rows)


def summary_line(rows: list[dict[str, Any]]) -> str:
    """``19 identical, 1 equal within tolerance, 0 different`` (then missing, extra, uncompared when any)."""
    count = {v: sum(r["verdict"] == v for r in rows) for v in LABELS}
    parts = [f"{count['identical']} identical", f"{count['within_tolerance']} equal within tolerance"]
    parts.append(f"{count['different']} different")
    parts += [f"{count[v]} {v}" for v in ("missing", "extra") if count[v]]
    if count["not_compared"]:
        parts.append(f"{count['not_compared']} could not be compared")
    return ", ".join(parts)
