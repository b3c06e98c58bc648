"""The frame rate a run uses, and where it comes from.

``fs: auto`` (the default) takes the rate the recording's files state (OpenCV's frame rate
of an AVI/MP4, an NWB series' ``rate``, an ImageJ or OME-TIFF frame interval); files that
disagree by more than `TOLERANCE` stop the run, naming the rates, since one rate is used for
every session. Without a rate in every file the manifest's ``fs`` is used, else `DEFAULT_FS`,
and the summary says so. A set ``fs`` is used as given; when the files state a rate more than
`TOLERANCE` away, the summary carries a note saying both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caliali.exceptions import InputError
from caliali.io import open_video

__all__ = ["DEFAULT_FS", "TOLERANCE", "FrameRate", "recorded_rates", "resolve_fs"]

DEFAULT_FS = 10.0
"""Hz, when neither the config nor the recording says a rate (the usual Miniscope v3 rate is 20-30 Hz:
a rate this far off stretches every decay time, so the summary asks for ``fs``)."""

TOLERANCE = 0.01
"""Relative difference between two rates taken as a real disagreement (timestamps and rounding in
containers move a rate by far less: 29.97 vs 30 fps is 0.1%)."""


@dataclass(frozen=True)
class FrameRate:
    """The rate a run uses (Hz, before temporal downsampling), where it came from, and any note."""

    fs: float
    source: str
    note: str | None = None

    def describe(self) -> dict[str, Any]:
        """What ``summary.json`` and ``arrays/meta.json`` record of it."""
        return {"fs": self.fs, "fs_from": self.source, "fs_note": self.note}


def recorded_rates(experiment: Any) -> dict[Path, float | None]:
    """The frame rate each file of ``experiment`` states (headers only), None where it states none."""
    rates: dict[Path, float | None] = {}
    for session in experiment.sessions:
        for path in session.files:
            with open_video(path, dataset=session.dataset) as video:
                rates[path] = video.fs
    return rates


def _far(a: float, b: float) -> bool:
    return abs(a - b) > TOLERANCE * max(a, b)


def _listing(rates: dict[Path, float]) -> str:
    return ", ".join(f"{path.name}: {rate:g} fps" for path, rate in rates.items())


def resolve_fs(experiment: Any, configured: float | str) -> FrameRate:
    """The frame rate for a run of ``experiment`` with config ``fs`` = ``configured``.

    Raises
    ------
    InputError
        ``configured`` is ``"auto"`` and the files state rates more than `TOLERANCE` apart.
    """
    rates = recorded_rates(experiment)
    known = {path: rate for path, rate in rates.items() if rate is not None}
    if configured != "auto":
        value = float(configured)
        off = {path: rate for path, rate in known.items() if _far(rate, value)}
        note = (
            f"fs {value:g} Hz was set and used, but the recording states {_listing(off)}; "
            "remove fs (or set fs: auto) to use the recording's rate"
            if off
            else None
        )
        return FrameRate(value, "config", note)
    if known and len(known) == len(rates):
        first = next(iter(known.values()))
        if any(_far(rate, first) for rate in known.values()):
            raise InputError(
                f"the recording's files state different frame rates ({_listing(known)}); "
                "set fs in the config to the rate to use for every session"
            )
        path = next(iter(known))
        return FrameRate(first, f"recording metadata ({path.suffix.lstrip('.').lower()}: {round(first, 3)!r} fps)")
    missing = [path.name for path, rate in rates.items() if rate is None]
    manifest_fs = getattr(experiment, "fs", None)
    if manifest_fs:
        source = Path(experiment.source).name if experiment.source is not None else "manifest"
        off = {path: rate for path, rate in known.items() if _far(rate, float(manifest_fs))}
        note = f"the manifest's fs {manifest_fs:g} Hz was used, but the files state {_listing(off)}" if off else None
        return FrameRate(float(manifest_fs), f"manifest ({source}: fs {float(manifest_fs)!r})", note)
    if not known:
        return FrameRate(DEFAULT_FS, "default: the recording has no frame rate; set fs")
    return FrameRate(
        DEFAULT_FS,
        f"default: no frame rate in {', '.join(missing)} ({_listing(known)}); set fs",
    )
