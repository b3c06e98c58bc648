"""Save and load an :class:`Alignment` as plain files.

Layout of ``<out>/alignment/``::

    fields.npy         (n_sessions, 2, H, W) float32  total backward fields
                                                       (translation included)
    translations.npy   (n_sessions, 2) float64         rigid part (dy, dx)
    valid_mask.npy     (H, W) bool                     valid in every session
    projections.npy    (n_sessions, H, W) float32      images aligned on
    alignment.json     sessions, input -> session map, source, reliability,
                       QC numbers, parameters
    projections_before.png, projections_after.png, alignment_qc.png

``fields.npy`` and ``valid_mask.npy`` are what ``caliali score`` reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from caliali.registration._errors import AlignmentError
from caliali.registration._qc import write_qc_figures
from caliali.registration.alignment import Alignment

__all__ = ["load_alignment", "save_alignment"]

_FILES = ("fields.npy", "translations.npy", "valid_mask.npy", "projections.npy", "alignment.json")


def _alignment_dir(out: str | Path) -> Path:
    path = Path(out)
    return path if path.name == "alignment" else path / "alignment"


def save_alignment(alignment: Alignment, out: str | Path, *, figures: bool = True) -> Path:
    """Write ``alignment`` under ``<out>/alignment/`` (or into ``out`` itself
    when it is already named ``alignment``); returns that folder."""
    folder = _alignment_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "fields.npy", alignment.total_fields)
    np.save(folder / "translations.npy", alignment.translations.astype(np.float64))
    np.save(folder / "valid_mask.npy", alignment.valid_mask.astype(bool))
    np.save(folder / "projections.npy", alignment.images.astype(np.float32))
    meta = {
        "sessions": alignment.sessions,
        "input_sessions": alignment.input_sessions.tolist(),
        "source": alignment.source,
        "reliability": None if math.isnan(alignment.reliability) else alignment.reliability,
        "qc": alignment.qc,
        "params": alignment.params,
        "convention": (
            "backward: aligned[y, x] = session[y + dy[y, x], x + dx[y, x]]; fields.npy includes the translation"
        ),
    }
    (folder / "alignment.json").write_text(json.dumps(meta, indent=2))
    if figures:
        write_qc_figures(
            list(alignment.images),
            alignment.translations,
            alignment.fields,
            alignment.valid_mask,
            alignment.qc,
            folder,
            labels=alignment.sessions,
        )
    return folder


def load_alignment(out: str | Path) -> Alignment:
    """Read an alignment written by :func:`save_alignment`."""
    folder = _alignment_dir(out)
    missing = [name for name in _FILES if not (folder / name).is_file()]
    if missing:
        raise AlignmentError(
            f"{folder} is not a saved alignment: missing {', '.join(missing)}; "
            "run the alignment stage again to write it."
        )
    try:
        meta = json.loads((folder / "alignment.json").read_text())
        total = np.load(folder / "fields.npy")
        translations = np.load(folder / "translations.npy")
        mask = np.load(folder / "valid_mask.npy")
        images = np.load(folder / "projections.npy")
    except (ValueError, OSError) as exc:
        raise AlignmentError(
            f"{folder}: saved alignment is unreadable ({exc}); run the alignment stage again."
        ) from exc
    n = len(meta["sessions"])
    if total.shape[:2] != (n, 2) or translations.shape != (n, 2) or mask.shape != total.shape[2:]:
        raise AlignmentError(
            f"{folder}: fields {total.shape}, translations {translations.shape} and mask "
            f"{mask.shape} disagree with {n} sessions; run the alignment stage again."
        )
    fields = (total - translations.astype(np.float32)[:, :, None, None]).astype(np.float32)
    reliability = meta.get("reliability")
    return Alignment(
        sessions=list(meta["sessions"]),
        input_sessions=np.asarray(meta["input_sessions"], dtype=int),
        translations=translations,
        fields=fields,
        valid_mask=mask.astype(bool),
        source=meta["source"],
        reliability=float("nan") if reliability is None else float(reliability),
        qc=meta["qc"],
        images=images,
        params=meta.get("params", {}),
    )
