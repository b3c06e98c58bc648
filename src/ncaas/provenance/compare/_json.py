"""JSON: the same values once the declared keys are left out.

An ignored entry is a dotted path from the top (``run``, ``stats.seconds``); ``*`` stands for
any key or list position on its level (``sessions.*.started``). Numbers compare by value
(``1`` equals ``1.0``); a difference is named by its path with both values, e.g.
``neurons: 185 vs 180``.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from . import Outcome, Rule

__all__ = ["compare_json"]

_SHOWN = 5


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _ignored(path: list[str], patterns: list[list[str]]) -> bool:
    return any(len(p) == len(path) and all(fnmatch.fnmatchcase(k, q) for k, q in zip(path, p)) for p in patterns)


def _differences(a: Any, b: Any, path: list[str], patterns: list[list[str]], out: list[tuple[int, str]]) -> None:
    """Append (depth, words) for every difference; the depth puts a document's headline keys first."""
    if path and _ignored(path, patterns):
        return
    where = ".".join(path) or "(the whole document)"
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in b or key not in a:
                if not _ignored([*path, str(key)], patterns):
                    side = "original" if key in a else "rerun"
                    out.append((len(path) + 1, f"{'.'.join([*path, str(key)])} only in the {side}"))
                continue
            _differences(a[key], b[key], [*path, str(key)], patterns, out)
        return
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            out.append((len(path), f"{where}: {len(a)} vs {len(b)} items"))
            return
        for i, (x, y) in enumerate(zip(a, b)):
            _differences(x, y, [*path, str(i)], patterns, out)
        return
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if (a != b) if numbers else (type(a) is not type(b) or a != b):
        out.append((len(path), f"{where}: {_show(a)} vs {_show(b)}"))


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path.name} is not JSON: {exc}") from None


def compare_json(a: Path, b: Path, rule: Rule) -> Outcome:
    """The differing keys with both values, top-level keys first (``neurons: 185 vs 180`` before the
    details nested below), or equal (ignored keys aside)."""
    patterns = [p.split(".") for p in rule.ignore]
    differences: list[tuple[int, str]] = []
    _differences(_load(a), _load(b), [], patterns, differences)
    found = [words for _, words in sorted(differences, key=lambda d: d[0])]  # stable: document order within a depth
    if found:
        more = f" (and {len(found) - _SHOWN} more)" if len(found) > _SHOWN else ""
        return Outcome(False, "; ".join(found[:_SHOWN]) + more)
    if rule.ignore:
        return Outcome(True, f"same values apart from {', '.join(rule.ignore)} (ignored)", exact=True)
    return Outcome(True, "same values (the files differ only in layout: spacing or key order)", exact=True)
