"""HDF5 and NWB files: every group, dataset, attribute and link of the two trees.

Declared volatile paths are left out (``/file_create_date``: that object and everything in
it; ``/general@created``: one attribute; ``@object_id``: that attribute everywhere).
Datasets are compared as arrays with the rule's tolerance; links are compared by what they
say, never followed (an external link could name any file), and a dataset whose data lives in
other files (external storage, a virtual dataset) is refused.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from . import Outcome, Rule
from ._arrays import ArrayDiff, diff_arrays, fmt, outcome

__all__ = ["compare_trees"]

_SHOWN = 3  # differences named in a verdict; the rest are counted


class _Ignored:
    def __init__(self, entries: tuple[str, ...]):
        self.paths = [e for e in entries if "@" not in e]
        self.attrs = [tuple(e.split("@", 1)) for e in entries if "@" in e]

    def path(self, path: str) -> bool:
        return any(fnmatch.fnmatchcase(path, p) or fnmatch.fnmatchcase(path, p.rstrip("/") + "/*") for p in self.paths)

    def attr(self, path: str, name: str) -> bool:
        return any((not p or fnmatch.fnmatchcase(path, p)) and fnmatch.fnmatchcase(name, n) for p, n in self.attrs)


def _tree(file: h5py.File) -> dict[str, Any]:
    """Path -> group, dataset, or the text of a soft or external link (not followed)."""
    found: dict[str, Any] = {"/": file}

    def add(name: str, obj: Any) -> None:  # returns None: visiting stops at the first other value
        found["/" + name] = obj

    file.visititems(add)

    def link(name: str) -> None:
        target = file.get(name, getlink=True)
        if isinstance(target, h5py.SoftLink):
            found["/" + name] = f"soft link to {target.path}"
        elif isinstance(target, h5py.ExternalLink):
            found["/" + name] = f"external link to {target.filename}:{target.path}"

    file.visit_links(link)
    return found


def _what(obj: Any) -> str:
    if isinstance(obj, str):
        return obj
    return "a group" if isinstance(obj, h5py.Group) else "a dataset"


def _plain(value: Any, file: h5py.File) -> Any:
    """An attribute's or dataset's value with object references as the paths they name."""
    if isinstance(value, h5py.Reference):
        return f"reference to {file[value].name}" if value else "null reference"
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return [_plain(v, file) for v in value.reshape(-1)]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _diff_values(a: Any, b: Any, rule: Rule) -> ArrayDiff:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return diff_arrays(a, b, rule)
    if isinstance(a, np.generic) and isinstance(b, np.generic):
        return diff_arrays(np.asarray(a), np.asarray(b), rule)
    try:
        same = bool(np.all(a == b)) if np.shape(a) == np.shape(b) else False
    except (TypeError, ValueError):
        same = False
    return ArrayDiff(None if same else f"{fmt(a)} vs {fmt(b)}")


def _diff_dataset(a: h5py.Dataset, b: h5py.Dataset, rule: Rule) -> ArrayDiff:
    for ds in (a, b):  # their data would be read from other files, named by the file itself
        if ds.external or ds.is_virtual:
            raise ValueError(f"{ds.name} keeps its data in other files; such datasets are not read")
    refs = h5py.check_dtype(ref=a.dtype) or h5py.check_dtype(ref=b.dtype)
    if refs is not None:
        return _diff_values(_plain(a[()], a.file), _plain(b[()], b.file), rule)
    return diff_arrays(a, b, rule)


def compare_trees(a: Path, b: Path, rule: Rule, *, attributes: bool = True) -> Outcome:
    """Compare two HDF5 files object by object; ``attributes=False`` compares datasets only."""
    ignored = _Ignored(rule.ignore)
    problems: list[str] = []
    total = ArrayDiff()

    def note(diff: ArrayDiff, where: str) -> None:
        if diff.problem is not None:
            problems.append(f"{where}: {diff.problem}")
        total.max_abs, total.max_rel = max(total.max_abs, diff.max_abs), max(total.max_rel, diff.max_rel)

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        ta, tb = _tree(fa), _tree(fb)
        for path in sorted(set(ta) | set(tb)):
            if ignored.path(path):
                continue
            if path not in tb or path not in ta:
                problems.append(f"{path} only in the {'original' if path in ta else 'rerun'}")
                continue
            x, y = ta[path], tb[path]
            if _what(x) != _what(y):
                problems.append(f"{path}: {_what(x)} vs {_what(y)}")
                continue
            if isinstance(x, h5py.Dataset):
                note(_diff_dataset(x, y, rule), path)
            if attributes and not isinstance(x, str):
                for name in sorted(set(x.attrs) | set(y.attrs)):
                    where = f"{path}@{name}"
                    if ignored.attr(path, name):
                        continue
                    if name not in x.attrs or name not in y.attrs:
                        problems.append(f"attribute {where} only in the {'original' if name in x.attrs else 'rerun'}")
                        continue
                    note(_diff_values(_plain(x.attrs[name], fa), _plain(y.attrs[name], fb), rule), where)
    if problems:
        more = f" (and {len(problems) - _SHOWN} more differences)" if len(problems) > _SHOWN else ""
        return Outcome(False, "; ".join(problems[:_SHOWN]) + more)
    return outcome(total, rule)
