"""What within-session motion correction found, and how it is saved."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MotionResult"]


@dataclass(frozen=True)
class MotionResult:
    """What :func:`correct_session` found.

    Attributes
    ----------
    shifts : (t, 2) float64
        Per-frame ``(dy, dx)``: ``corrected[y, x] = frame[y + dy, x + dx]``.
        Dropped frames carry shifts interpolated from their neighbours.
    valid_mask : (h, w) bool
        Pixels whose data is real in every corrected frame (the rest were
        filled from the nearest border pixel); use instead of cropping.
    dropped : (t,) bool
        Frames that were all zero in the input and were filled by
        interpolation in time.
    peak : (t,) float64
        Normalised cross-correlation with the template at the chosen shift
        (NaN for dropped frames): low values flag frames that did not register.
    template : (h, w) float32
        The final blood-vessel template.
    registered : (t,) bool
        Frames whose correlation peak stood out (:data:`caliali.motion.rigid.MIN_DISTINCT`);
        the others, and dropped frames, carry shifts interpolated from the
        frames around them that registered.
    """

    shifts: np.ndarray
    valid_mask: np.ndarray
    dropped: np.ndarray
    peak: np.ndarray
    template: np.ndarray
    registered: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.registered is None:
            object.__setattr__(self, "registered", ~np.asarray(self.dropped, bool))

    def __iter__(self) -> Iterator[np.ndarray]:
        # ``shifts, valid_mask = correct_session(...)`` unpacks the two that
        # the rest of the pipeline needs.
        return iter((self.shifts, self.valid_mask))

    def save(self, folder: Path | str, *, name: str = "motion") -> dict[str, Path]:
        """Write ``<name>_shifts.npy`` / ``.csv``, ``<name>_valid_mask.npy``,
        ``<name>_template.npy`` and a JSON summary into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "shifts": folder / f"{name}_shifts.npy",
            "shifts_csv": folder / f"{name}_shifts.csv",
            "valid_mask": folder / f"{name}_valid_mask.npy",
            "template": folder / f"{name}_template.npy",
            "summary": folder / f"{name}_summary.json",
        }
        np.save(paths["shifts"], self.shifts)
        table = np.column_stack([np.arange(len(self.shifts)), self.shifts, self.dropped, self.peak, self.registered])
        np.savetxt(
            paths["shifts_csv"],
            table,
            delimiter=",",
            fmt=["%d", "%.4f", "%.4f", "%d", "%.4f", "%d"],
            header="frame,dy,dx,dropped,peak,registered",
            comments="",
        )
        np.save(paths["valid_mask"], self.valid_mask)
        np.save(paths["template"], self.template)
        paths["summary"].write_text(json.dumps(self.summary(), indent=2))
        return paths

    @classmethod
    def load(cls, folder: Path | str, *, name: str = "motion") -> MotionResult:
        """Read what :meth:`save` wrote (shifts and flags at full precision
        from the ``.npy`` and ``.csv`` files)."""
        folder = Path(folder)
        try:
            table = np.loadtxt(folder / f"{name}_shifts.csv", delimiter=",", skiprows=1, ndmin=2)
            return cls(
                shifts=np.load(folder / f"{name}_shifts.npy"),
                valid_mask=np.load(folder / f"{name}_valid_mask.npy"),
                dropped=table[:, 3].astype(bool),
                peak=table[:, 4],
                template=np.load(folder / f"{name}_template.npy"),
                registered=table[:, 5].astype(bool) if table.shape[1] > 5 else None,
            )
        except (OSError, ValueError, IndexError) as exc:
            from ._errors import MotionError

            raise MotionError(f"{folder}: no motion result named {name!r} saved there ({exc})") from exc

    def summary(self) -> dict[str, Any]:
        """Plain-number summary for logs and QC."""
        mag = np.hypot(self.shifts[:, 0], self.shifts[:, 1]) if len(self.shifts) else np.zeros(1)
        return {
            "n_frames": len(self.shifts),
            "n_dropped": int(self.dropped.sum()),
            "n_unregistered": int((~self.registered & ~self.dropped).sum()),
            "max_shift_px": float(mag.max()),
            "median_shift_px": float(np.median(mag)),
            "valid_fraction": float(self.valid_mask.mean()),
            "median_peak_correlation": float(np.nanmedian(self.peak)) if np.isfinite(self.peak).any() else None,
        }
