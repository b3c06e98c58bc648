"""Compare two output files by what they are: arrays, HDF5/NWB trees, images, JSON.

Only files whose bytes differ are compared this way (see :mod:`ncaas.provenance.verdicts`).
Outputs are written by user code, so everything here treats them as untrusted input: arrays
are loaded without pickle, images under a pixel limit, and the platform runs these
comparisons in a sandbox (``python -m ncaas.provenance.compare REQUEST``), never in its own
process. Each comparison says whether the files are equal within the rule's tolerance, or
what differs, in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Outcome", "Rule", "compare_files"]


@dataclass(frozen=True)
class Rule:
    """The part of a blueprint's comparator the comparison needs."""

    kind: str
    rtol: float = 0.0
    atol: float = 0.0
    ignore: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outcome:
    """``equal``: the content is the same within the rule; ``detail`` says how close, or what differs.

    ``exact``: the same values with no tolerance used (the bytes differ only in layout, metadata or
    the fields the rule ignores), so the verdict is *identical*, not *equal within tolerance*.
    """

    equal: bool
    detail: str
    exact: bool = False


def compare_files(a: Path, b: Path, rule: Rule) -> Outcome:
    """Compare ``a`` (the original) with ``b`` (the rerun's) by ``rule.kind``."""
    if rule.kind == "numeric":
        from ._arrays import compare_numeric

        return compare_numeric(a, b, rule)
    if rule.kind == "nwb":
        from ._hdf5 import compare_trees

        return compare_trees(a, b, rule)
    if rule.kind == "image":
        from ._image import compare_images

        return compare_images(a, b)
    if rule.kind == "json":
        from ._json import compare_json

        return compare_json(a, b, rule)
    raise ValueError(f"no comparator of kind {rule.kind!r}")
