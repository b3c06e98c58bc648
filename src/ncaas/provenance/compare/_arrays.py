"""Arrays: shape, dtype, then the largest absolute and relative difference against a tolerance.

Arrays are read a block at a time (a memory-mapped ``.npy``, an HDF5 dataset), so comparing
takes about the same memory for any size. ``.npy`` and ``.npz`` are loaded without pickle:
an object array is refused, never unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import Outcome, Rule

__all__ = ["ArrayDiff", "compare_numeric", "diff_arrays", "fmt"]

_BLOCK = 1 << 22  # values per block
_NPY = b"\x93NUMPY"
_ZIP = b"PK\x03\x04"
_HDF5 = b"\x89HDF\r\n\x1a\n"


def fmt(value: Any) -> str:
    """A number as a scientist reads it (4 significant digits); anything else as it prints."""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (bytes, np.bytes_)):
        value = value.decode("utf-8", "replace")
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class ArrayDiff:
    """How two arrays differ: a problem in words (None when equal within tolerance) and the largest differences."""

    problem: str | None = None
    max_abs: float = 0.0
    max_rel: float = 0.0


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"


def _blocks(a: Any, b: Any) -> Any:
    """Matching blocks of rows of two arrays (or HDF5 datasets) of one shape, with the flat index they start at."""
    if not a.shape:
        yield np.asarray(a[()]), np.asarray(b[()]), 0
        return
    row = max(1, int(np.prod(a.shape[1:], dtype=np.int64)))
    step = max(1, _BLOCK // row)
    for start in range(0, a.shape[0], step):
        yield np.asarray(a[start : start + step]), np.asarray(b[start : start + step]), start * row


def _tolerance(rule: Rule) -> str:
    return f"rtol {rule.rtol:g}, atol {rule.atol:g}"


def diff_arrays(a: Any, b: Any, rule: Rule) -> ArrayDiff:
    """Compare two arrays (numpy, memory-mapped, or HDF5 datasets) of the original and the rerun."""
    if a.shape != b.shape:
        return ArrayDiff(f"shape {_shape(a.shape)} vs {_shape(b.shape)}")
    if a.dtype != b.dtype:
        return ArrayDiff(f"dtype {a.dtype} vs {b.dtype}")
    if a.dtype.kind not in "biufc":
        return _diff_exact(a, b)
    out, worst, size = ArrayDiff(), None, 0
    beyond = 0
    wide = np.complex128 if a.dtype.kind == "c" else np.float64
    for x, y, offset in _blocks(a, b):
        x, y = x.astype(wide), y.astype(wide)
        size += x.size
        both_nan = np.isnan(x) & np.isnan(y)
        d = np.where(both_nan, 0.0, np.abs(x - y))
        d = np.where(np.isnan(d), np.inf, d)  # NaN on one side only: as far apart as can be
        if not d.size:
            continue
        scale = np.abs(y)
        beyond += int(np.count_nonzero(d > rule.atol + rule.rtol * scale))
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(d == 0, 0.0, d / scale)
        at = int(np.argmax(d))
        if d.flat[at] > out.max_abs:
            out.max_abs = float(d.flat[at])
            worst = (offset + at, x.flat[at], y.flat[at])
        out.max_rel = max(out.max_rel, float(np.max(rel)))
    if beyond and not a.shape and worst is not None:
        out.problem = f"{fmt(worst[1])} vs {fmt(worst[2])}, beyond {_tolerance(rule)}"
    elif beyond:
        where = ""
        if worst is not None:
            index = tuple(int(i) for i in np.unravel_index(worst[0], a.shape)) if a.shape else ()
            where = f" at {list(index)}: {fmt(worst[1])} vs {fmt(worst[2])}"
        out.problem = (
            f"{beyond:,} of {size:,} values differ beyond {_tolerance(rule)}; largest {fmt(out.max_abs)} "
            f"(relative {fmt(out.max_rel)}){where}"
        )
    return out


def _diff_exact(a: Any, b: Any) -> ArrayDiff:
    """Text, booleans-as-bytes, records: element by element, no tolerance."""
    differ = size = 0
    first = None
    for x, y, _ in _blocks(a, b):
        unequal = np.asarray(x != y).reshape(-1) if x.shape else np.asarray([x != y]).reshape(-1)
        size += unequal.size
        if first is None and unequal.any():
            at = int(np.argmax(unequal))
            first = (x.reshape(-1)[at], y.reshape(-1)[at]) if x.shape else (x[()], y[()])
        differ += int(np.count_nonzero(unequal))
    if not differ:
        return ArrayDiff()
    assert first is not None
    if size == 1:
        return ArrayDiff(f"{fmt(first[0])} vs {fmt(first[1])}")
    return ArrayDiff(f"{differ:,} of {size:,} values differ, first {fmt(first[0])} vs {fmt(first[1])}")


def outcome(diff: ArrayDiff, rule: Rule) -> Outcome:
    """The verdict of one compared array (or a whole file's largest difference)."""
    if diff.problem is not None:
        return Outcome(False, diff.problem)
    if diff.max_abs == 0:
        return Outcome(True, "same values (the files differ only in how they are stored)", exact=True)
    return Outcome(
        True, f"largest difference {fmt(diff.max_abs)} (relative {fmt(diff.max_rel)}), within {_tolerance(rule)}"
    )


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"not a plain array file (pickled objects are never loaded): {exc}") from None


def _compare_npz(a: Path, b: Path, rule: Rule) -> Outcome:
    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        only_a, only_b = sorted(set(za.files) - set(zb.files)), sorted(set(zb.files) - set(za.files))
        if only_a or only_b:
            parts = [f"arrays only in the original: {', '.join(only_a)}"] if only_a else []
            parts += [f"arrays only in the rerun: {', '.join(only_b)}"] if only_b else []
            return Outcome(False, "; ".join(parts))
        total = ArrayDiff()
        for name in za.files:
            diff = diff_arrays(za[name], zb[name], rule)
            if diff.problem is not None:
                return Outcome(False, f"{name}: {diff.problem}")
            total.max_abs, total.max_rel = max(total.max_abs, diff.max_abs), max(total.max_rel, diff.max_rel)
        return outcome(total, rule)


def compare_numeric(a: Path, b: Path, rule: Rule) -> Outcome:
    """``.npy``, ``.npz`` or HDF5 (every dataset), told apart by their first bytes."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        heads = fa.read(8), fb.read(8)
    if all(h.startswith(_NPY) for h in heads):
        return outcome(diff_arrays(_load_npy(a), _load_npy(b), rule), rule)
    if all(h.startswith(_ZIP) for h in heads):
        return _compare_npz(a, b, rule)
    if all(h.startswith(_HDF5) for h in heads):
        from ._hdf5 import compare_trees

        return compare_trees(a, b, rule, attributes=False)
    raise ValueError("not an array file both times (.npy, .npz or HDF5); declare another kind for it")
