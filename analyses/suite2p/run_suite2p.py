"""Run suite2p 1.1.0, unchanged, on one dataset: the entry ncaas runs as ``python -m run_suite2p``.

``python -m run_suite2p INPUT --config CONFIG.json --out OUTPUT`` runs ``suite2p.run_s2p`` on
INPUT (a movie file, or a folder of them), with the config's suite2p settings over
``suite2p.default_settings()`` and its ``db`` file options over ``suite2p.default_db()``, and
writes into OUTPUT

* ``suite2p/``: suite2p's own outputs (``plane*/F.npy, Fneu.npy, spks.npy, stat.npy,
  iscell.npy, ops.npy, ...``) and its NWB file ``suite2p/ophys.nwb``, written by
  ``suite2p.io.save_nwb`` when the settings did not ask for it already;
* ``qc/``: ``images.png`` (mean and enhanced mean image, ROI outlines), ``traces.png``
  (fluorescence of the first cells) and ``registration.png`` (rigid offsets per frame);
* ``summary.json``: frames, ROIs, cells and run time.

``python -m run_suite2p --schema`` prints the config schema and default config derived from
suite2p's own parameter table (``suite2p.parameters.SETTINGS`` and ``DB``), as the blueprint
holds them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

# Paths the platform decides (input and output); the other db options are the user's.
_DB_PATHS = ("data_path", "save_path0", "fast_disk", "save_folder", "file_list", "subfolders")
_TYPES = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    tuple: "array",
    dict: "object",
}


def _progress(fraction: float, message: str) -> None:
    print(f"NCAAS_PROGRESS {fraction:.3f} {message}", flush=True)


def _fail(reason: str) -> None:
    """Tell the platform why the run failed (one line), then exit 3."""
    reason = " ".join(reason.split())
    if os.environ.get("NCAAS_ERROR_FILE"):
        Path(os.environ["NCAAS_ERROR_FILE"]).write_text(reason)
    print(f"NCAAS_ERROR {reason}", file=sys.stderr, flush=True)
    raise SystemExit(3)


def _plain(value: Any) -> Any:
    """A default as JSON has it (tuples as lists)."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _parameter(spec: dict[str, Any]) -> dict[str, Any]:
    """One suite2p parameter (gui_name, type, min, max, default, description) as JSON Schema."""
    kind = _TYPES[spec["type"]]
    default = _plain(spec["default"])
    schema: dict[str, Any] = {"type": [kind, "null"] if default is None else kind}
    bounds = {"minimum": spec.get("min"), "maximum": spec.get("max")}
    bounds = {k: float(v) for k, v in bounds.items() if v is not None and math.isfinite(v)}
    if kind == "array":
        items = default if isinstance(default, list) else []
        item_kind = "integer" if items and all(isinstance(v, int) for v in items) else "number"
        schema["items"] = {"type": item_kind, **bounds}
        if spec["type"] is tuple:
            schema["minItems"] = schema["maxItems"] = len(items)
    elif kind in ("integer", "number"):
        schema.update({k: (int(v) if kind == "integer" else v) for k, v in bounds.items()})
    schema["description"] = spec["description"]
    return schema


def _section(table: dict[str, Any], skip: tuple[str, ...] = ()) -> tuple[dict[str, Any], dict[str, Any]]:
    """The schema and defaults of a (nested) suite2p parameter table."""
    properties, defaults = {}, {}
    for key, spec in table.items():
        if key in skip:
            continue
        if "description" in spec:
            properties[key], defaults[key] = _parameter(spec), _plain(spec["default"])
        else:
            sub, sub_defaults = _section(spec)
            properties[key] = {"type": "object", "additionalProperties": False, "properties": sub}
            defaults[key] = sub_defaults
    return properties, defaults


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """suite2p's settings, and its db options but paths, as a JSON Schema with their defaults."""
    from suite2p import parameters

    settings, defaults = _section(parameters.SETTINGS)
    db, db_defaults = _section(parameters.DB, skip=_DB_PATHS)
    settings["db"] = {
        "type": "object",
        "additionalProperties": False,
        "description": "suite2p's file options (db); the platform sets the input and output paths",
        "properties": db,
    }
    defaults["db"] = db_defaults
    schema = {"type": "object", "additionalProperties": False, "properties": settings}
    return schema, defaults


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in given.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _qc(plane: Path, qc: Path) -> dict[str, Any]:
    """QC pictures of one plane's outputs; returns what the summary says about it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    iscell = np.load(plane / "iscell.npy")
    F = np.load(plane / "F.npy")
    qc.mkdir(parents=True, exist_ok=True)

    shape = np.asarray(ops["meanImg"]).shape
    labels = np.zeros(shape, dtype=np.int32)  # ROI number + 1 at each pixel (the last ROI wins overlaps)
    for number, roi in enumerate(stat):
        labels[roi["ypix"], roi["xpix"]] = number + 1
    edge = np.zeros(shape, dtype=bool)  # ROI pixels with a 4-neighbour outside that ROI
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge &= labels > 0
    is_cell = np.concatenate([[False], iscell[:, 0] > 0])[labels]
    overlay = np.zeros((*shape, 4))
    overlay[edge & is_cell] = (0.2, 1.0, 0.2, 1.0)
    overlay[edge & ~is_cell] = (1.0, 0.3, 0.3, 0.8)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("meanImg", "meanImgE")):
        ax.imshow(ops[key], cmap="gray")
        ax.imshow(overlay, interpolation="nearest")
        ax.set_title(f"{key}: {int(iscell[:, 0].sum())} cells (green), {len(stat)} ROIs")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(qc / "images.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    cells = np.flatnonzero(iscell[:, 0])[:10]
    what = "cells"
    if not len(cells):  # no ROI classified as a cell: show the ROIs
        cells, what = np.arange(min(10, len(stat))), "ROIs (none classified as a cell)"
    for offset, index in enumerate(cells):
        trace = F[index]
        span = float(np.ptp(trace)) or 1.0
        ax.plot((trace - trace.min()) / span + offset, linewidth=0.8)
    ax.set_xlabel("frame")
    ax.set_ylabel("cell (normalised F)")
    ax.set_title(f"fluorescence of the first {len(cells)} {what}")
    fig.tight_layout()
    fig.savefig(qc / "traces.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3))
    ax.plot(np.asarray(ops.get("yoff", [])), label="y offset")
    ax.plot(np.asarray(ops.get("xoff", [])), label="x offset")
    ax.set_xlabel("frame")
    ax.set_ylabel("pixels")
    ax.legend()
    ax.set_title("rigid registration offsets")
    fig.tight_layout()
    fig.savefig(qc / "registration.png", dpi=80)
    plt.close(fig)
    return {"rois": int(len(stat)), "cells": int(iscell[:, 0].sum()), "frames": int(F.shape[1])}


def run(data: Path, config: dict[str, Any], out: Path) -> dict[str, Any]:
    started = time.time()
    _progress(0.02, "loading suite2p")
    import suite2p
    from suite2p import io

    given = dict(config)
    db = _merge(suite2p.default_db(), given.pop("db", {}) or {})
    settings = _merge(suite2p.default_settings(), given)
    if data.is_file():
        db["data_path"], db["file_list"] = [str(data.parent)], [data.name]
    else:
        db["data_path"] = [str(data)]
    db["save_path0"], db["save_folder"] = str(out), "suite2p"
    _progress(0.05, f"suite2p {suite2p.version} on {data.name}")
    try:
        suite2p.run_s2p(db=db, settings=settings)
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(f"suite2p stopped: {exc}")
    folder = out / "suite2p"
    if not (folder / "ophys.nwb").is_file():
        _progress(0.9, "writing the NWB file")
        io.save_nwb(str(folder))
    _progress(0.95, "QC pictures")
    planes = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("plane"))
    summary = {
        "tool": "suite2p",
        "version": suite2p.version,
        "planes": {
            plane.name: _qc(plane, out / "qc" / plane.name if len(planes) > 1 else out / "qc") for plane in planes
        },
        "nwb": "suite2p/ophys.nwb",
        "run": {"seconds": round(time.time() - started, 3)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _progress(1.0, "done")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="run_suite2p", description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", type=Path, help="a movie file, or a folder of movie files")
    parser.add_argument("--config", type=Path, help="JSON config: suite2p settings, and db file options under 'db'")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument("--schema", action="store_true", help="print the config schema and defaults as JSON")
    args = parser.parse_args(argv)
    if args.schema:
        schema, defaults = config_schema()
        print(json.dumps({"config_schema": schema, "default_config": defaults}, indent=1))
        return
    if args.input is None or args.out is None:
        parser.error("give INPUT and --out (or --schema)")
    if not args.input.exists():
        _fail(f"the input {args.input} does not exist")
    config = json.loads(args.config.read_text()) if args.config else {}
    args.out.mkdir(parents=True, exist_ok=True)
    run(args.input, config, args.out)


if __name__ == "__main__":
    main()
