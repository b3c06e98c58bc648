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
* ``neurons/``: the cells of ``plane0`` in ncaas's "neurons" layout, what a review reads
  (`write_neurons`): ``A.npz`` from each cell's ``stat`` (``ypix``, ``xpix``, ``lam``),
  ``C_raw.npy`` = F - c Fneu (c suite2p's ``neuropil_coefficient``, 0.7 by default),
  ``S.npy`` = spks, one session per input file (``frames_per_file``), and the images
  ``meanImg`` (mean), ``max_proj`` (max) and ``Vcorr`` (Cn) on the frame's grid;
* ``summary.json``: frames, ROIs, cells and run time.

``python -m run_suite2p curate --result DIR --decisions FILE --output DIR`` applies a review's
decisions to the ``neurons/`` of a run (`curate_layout`). suite2p merges ROIs only in its GUI,
from the registered movie, which a result does not keep: a merged neuron here is the rank-1
non-negative fit of its members' A C_raw, its C_raw and S the members' projected on it.

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


# The "neurons" layout (ncaas's review contract): footprints, traces, background images and meta.json
# in a folder of the outputs, and the curation of a result from a review's decisions.
# run_suite2p.py and run_minian.py each hold a copy of this block: each runs in its own environment,
# where the other's module is not installed.

LAYOUT = "neurons"
DECISIONS_FORMAT = "ncaas-review/1"


def _noise_snr(c_raw: Any) -> Any:
    """Each trace's peak above its median, in units of its noise (MAD of the frame-to-frame differences)."""
    import numpy as np

    c_raw = np.asarray(c_raw, np.float64)
    if c_raw.shape[1] < 2:
        return np.zeros(len(c_raw))
    d = np.diff(c_raw, axis=1)
    sigma = np.median(np.abs(d - np.median(d, axis=1, keepdims=True)), axis=1) / (0.6745 * np.sqrt(2))
    peak = c_raw.max(axis=1) - np.median(c_raw, axis=1)
    return np.where(sigma > 0, peak / np.where(sigma > 0, sigma, 1), 0.0)


def _centers(a: Any, dims: tuple[int, int]) -> list[list[float]]:
    """Each footprint's weighted centre [y, x]; ``a`` is (pixels, K) sparse, pixels in C order."""
    import numpy as np
    import scipy.sparse

    a = scipy.sparse.csc_matrix(a)
    out = []
    for k in range(a.shape[1]):
        lo, hi = a.indptr[k], a.indptr[k + 1]
        y, x = np.divmod(a.indices[lo:hi].astype(np.int64), dims[1])
        w = np.abs(a.data[lo:hi].astype(np.float64))
        total = float(w.sum()) or 1.0
        out.append([float((y * w).sum() / total), float((x * w).sum() / total)])
    return out


def write_layout(
    folder: Path,
    *,
    a: Any,
    dims: tuple[int, int],
    traces: dict[str, Any],
    bounds: list[int],
    session_ids: list[str],
    fs: float,
    images: list[tuple[str, Any]],
    extra: dict[str, Any],
    snr: Any = None,
) -> Path:
    """Write the neurons layout into ``folder``: A.npz (pixels x K, float32 CSC, pixels in C order),
    ``traces`` (``C_raw`` and optionally ``C`` and ``S``, (K, T) float32), session_bounds.npy,
    ``images`` ((kind, image) pairs of the whole recording, float32 on the footprints' grid, in
    images/) and meta.json (dims, n_neurons, n_frames, session_ids, fs, snr, centers, images, and
    ``extra``). ``snr`` defaults to `_noise_snr` of C_raw. The same arrays give the same bytes."""
    import numpy as np
    import scipy.sparse

    folder.mkdir(parents=True, exist_ok=True)
    a = scipy.sparse.csc_matrix(a, dtype=np.float32)
    a.sort_indices()
    scipy.sparse.save_npz(folder / "A.npz", a, compressed=True)
    for name, value in traces.items():
        np.save(folder / f"{name}.npy", np.ascontiguousarray(value, dtype=np.float32))
    np.save(folder / "session_bounds.npy", np.asarray(bounds, np.int64))
    (folder / "images").mkdir(exist_ok=True)
    listed = []
    for kind, image in images:
        name = f"images/{kind}.npy"
        np.save(folder / name, np.asarray(image, np.float32))
        listed.append({"kind": kind, "session": None, "file": name})
    c_raw = traces["C_raw"]
    meta = {
        "dims": [int(dims[0]), int(dims[1])],
        "pixel_order": "C (row-major): row p of A is the pixel (y, x) = divmod(p, width)",
        "n_neurons": int(a.shape[1]),
        "n_frames": int(np.shape(c_raw)[1]),
        "session_ids": list(session_ids),
        "session_bounds": [int(b) for b in bounds],
        "fs": float(fs),
        "snr": [float(v) for v in (_noise_snr(c_raw) if snr is None else snr)],
        "snr_definition": "peak of C_raw above its median over the noise (MAD of frame-to-frame differences)",
        "centers": _centers(a, dims),
        "images": listed,
        **extra,
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
    return folder


def _decision_ids(value: Any, where: str, k: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        _fail(f"decisions: {where} must be a list of neuron ids (whole numbers)")
    wrong = [v for v in value if not 0 <= v < k]
    if wrong:
        _fail(f"decisions: {where} names neuron {wrong[0]}, but the result has neurons 0-{k - 1}")
    if len(set(value)) != len(value):
        _fail(f"decisions: {where} lists a neuron twice; list each neuron once")
    return list(value)


def read_decisions(path: Path, k: int) -> tuple[dict[str, Any], str]:
    """The checked ``final`` of a decisions file for a result of ``k`` neurons, and the file's sha256;
    anything wrong ends the run with one line saying what (`_fail`)."""
    import hashlib

    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(f"the decisions file {path.name} cannot be read as JSON ({exc})")
    if not isinstance(data, dict) or data.get("format") != DECISIONS_FORMAT:
        _fail(f"the decisions file {path.name} is not {DECISIONS_FORMAT!r}; give the file a review wrote")
    if data.get("n_neurons") != k:
        _fail(f"the decisions are for {data.get('n_neurons')!r} neurons but the result has {k}")
    final = data.get("final")
    if not isinstance(final, dict):
        _fail("decisions: 'final' is missing or not an object with accepted, rejected and merges")
    accepted = _decision_ids(final.get("accepted", []), "final.accepted", k)
    rejected = _decision_ids(final.get("rejected", []), "final.rejected", k)
    groups = final.get("merges", [])
    if not isinstance(groups, list):
        _fail("decisions: final.merges must be a list of groups of ids")
    merges, seen = [], set()
    for g, group in enumerate(groups):
        ids = _decision_ids(group, f"final.merges[{g}]", k)
        if len(ids) < 2:
            _fail(f"decisions: final.merges[{g}] has {len(ids)} neuron; a merge needs two or more")
        if seen & set(ids):
            _fail(f"decisions: neuron {min(seen & set(ids))} is in two merges; merge overlapping groups into one")
        seen |= set(ids)
        merges.append(sorted(ids))
    if set(accepted) & set(rejected):
        _fail(f"decisions: neuron {min(set(accepted) & set(rejected))} is both accepted and rejected")
    if set(rejected) & seen:
        _fail(f"decisions: neuron {min(set(rejected) & seen)} is rejected and in a merge")
    source = {key: data.get(key) for key in ("job", "dataset", "certificate_sha256")}
    final = {"accepted": set(accepted), "rejected": set(rejected), "merges": sorted(merges), "source": source}
    return final, hashlib.sha256(raw).hexdigest()


def _rank1(a_group: Any, c_group: Any, iterations: int = 10) -> tuple[Any, Any]:
    """Rank-1 fit ``a t`` of ``sum_k a_k c_k`` (footprints non-negative), never forming the product:
    alternating least squares; returns (a, projection) with t = projection @ c_group."""
    import numpy as np

    ag = np.asarray(a_group, np.float64)  # (pixels, m)
    cg = np.asarray(c_group, np.float64)  # (m, T)
    a = ag.sum(axis=1)
    for _ in range(iterations):
        t = cg.T @ (ag.T @ a) / max(float(a @ a), 1e-12)
        a = np.maximum(ag @ (cg @ t), 0) / max(float(t @ t), 1e-12)
    scale = max(float(np.linalg.norm(ag, axis=0).max()), 1e-12) / max(float(np.linalg.norm(a)), 1e-12)
    a *= scale  # the members' footprint scale: the traces keep theirs
    return a, (ag.T @ a) / max(float(a @ a), 1e-12)


def curate_layout(result: Path, decisions: Path, output: Path, *, tool: str, merge: str) -> dict[str, Any]:
    """Apply a review's decisions to the neurons layout of ``result`` (read only) and write the curated
    layout, curation.json and summary.json into ``output``: rejected neurons go, accepted and
    unreviewed ones stay as they are, in their order, and each merge becomes one neuron in the place
    of its lowest id: `_rank1` of the members' A C_raw, its C_raw, C and S the members' projected on
    the merged footprint. ``merge`` says so in curation.json."""
    import shutil

    import numpy as np
    import scipy.sparse

    source = result / LAYOUT
    try:
        meta = json.loads((source / "meta.json").read_text())
        a = scipy.sparse.csc_matrix(scipy.sparse.load_npz(source / "A.npz"))
        names = [n for n in ("C_raw", "C", "S") if (source / f"{n}.npy").is_file()]
        traces = {n: np.load(source / f"{n}.npy", mmap_mode="r") for n in names}
        bounds = np.load(source / "session_bounds.npy")
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"{result} holds no readable {LAYOUT}/ layout ({exc}); give the outputs of a {tool} run")
    k = int(meta["n_neurons"])
    final, sha = read_decisions(decisions, k)
    group_of = {m: tuple(g) for g in final["merges"] for m in g}
    plan = []
    for i in range(k):
        if i in final["rejected"] or (i in group_of and group_of[i][0] != i):
            continue
        if i in group_of:
            plan.append((list(group_of[i]), "merged"))
        else:
            plan.append(([i], "accepted" if i in final["accepted"] else "unreviewed"))
    columns, rows, snr = [], {n: [] for n in names}, []
    old_snr = meta.get("snr") or [0.0] * k
    for ids, status in plan:
        if status != "merged":
            columns.append(a[:, ids[0]])
            for n in names:
                rows[n].append(np.asarray(traces[n][ids[0]], np.float32))
            snr.append(float(old_snr[ids[0]]))
            continue
        members = a[:, ids]
        pixels = np.unique(members.indices)
        fitted, projection = _rank1(members[pixels].toarray(), traces["C_raw"][ids])
        column = np.zeros(a.shape[0], np.float32)
        column[pixels] = fitted
        columns.append(scipy.sparse.csc_matrix(column[:, None]))
        for n in names:
            rows[n].append((projection @ np.asarray(traces[n][ids], np.float64)).astype(np.float32))
        snr.append(float(_noise_snr(rows["C_raw"][-1][None])[0]))
    dims = (int(meta["dims"][0]), int(meta["dims"][1]))
    new_a = scipy.sparse.hstack(columns, format="csc") if columns else scipy.sparse.csc_matrix((a.shape[0], 0))
    t = int(meta["n_frames"])
    folder = output / LAYOUT
    folder.mkdir(parents=True, exist_ok=True)
    for entry in meta.get("images") or []:
        (folder / entry["file"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / entry["file"], folder / entry["file"])
    written = {"dims", "pixel_order", "n_neurons", "n_frames", "session_ids", "session_bounds", "fs", "snr"}
    extra = {key: value for key, value in meta.items() if key not in written | {"centers", "images"}}
    for key in [key for key, value in extra.items() if isinstance(value, list) and len(value) == k]:
        extra.pop(key)  # per-neuron lists of the original (e.g. the tool's own ROI numbers) no longer apply
    extra["curated_from"] = [ids for ids, _ in plan]
    write_layout(
        folder,
        a=new_a,
        dims=dims,
        traces={n: np.stack(rows[n]) if rows[n] else np.zeros((0, t), np.float32) for n in names},
        bounds=[int(b) for b in bounds],
        session_ids=meta["session_ids"],
        fs=meta["fs"],
        images=[],
        extra=extra,
        snr=snr,
    )
    curated = json.loads((folder / "meta.json").read_text())
    curated["images"] = meta.get("images") or []
    (folder / "meta.json").write_text(json.dumps(curated, indent=1, sort_keys=True))
    curation = {
        "decisions_sha256": sha,
        "source": final["source"],
        "neurons": [{"id": new, "from": ids, "status": status} for new, (ids, status) in enumerate(plan)],
        "merge": merge,
    }
    (output / "curation.json").write_text(json.dumps(curation, indent=1, sort_keys=True) + "\n")
    summary = {
        "tool": tool,
        "curated_from": {**final["source"], "decisions_sha256": sha},
        "neurons": len(plan),
        "neurons_before": k,
        "rejected": len(final["rejected"]),
        "merged": sum(status == "merged" for _, status in plan),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return curation


def curate_main(argv: list[str], *, tool: str, merge: str) -> None:
    """``curate --result DIR --decisions FILE --output DIR``: `curate_layout`, as the blueprint's review runs it."""
    parser = argparse.ArgumentParser(prog=f"run_{tool} curate", description=curate_layout.__doc__.splitlines()[0])
    parser.add_argument("--result", type=Path, required=True, help="outputs of a run (read only)")
    parser.add_argument("--decisions", type=Path, required=True, help="a review's decisions file")
    parser.add_argument("--output", type=Path, required=True, help="folder for the curated result")
    args = parser.parse_args(argv)
    curation = curate_layout(args.result, args.decisions, args.output, tool=tool, merge=merge)
    print(f"curated: {len(curation['neurons'])} neurons -> {args.output}", flush=True)


MERGE = (
    "rank-1 non-negative fit of the members' A C_raw (alternating least squares); C_raw and S the "
    "members' projected on the merged footprint (suite2p merges only in its GUI, from the registered movie)"
)


def write_neurons(plane: Path, out: Path) -> dict[str, Any]:
    """The cells (``iscell``) of one plane's outputs in the neurons layout, in ``out / LAYOUT``."""
    import numpy as np
    import scipy.sparse

    ops = np.load(plane / "ops.npy", allow_pickle=True).item()
    stat = np.load(plane / "stat.npy", allow_pickle=True)
    cells = np.flatnonzero(np.load(plane / "iscell.npy")[:, 0] > 0)
    F, Fneu, spks = (np.load(plane / f"{name}.npy", mmap_mode="r") for name in ("F", "Fneu", "spks"))
    dims = (int(ops["Ly"]), int(ops["Lx"]))
    rows, cols, vals = [], [], []
    for column, index in enumerate(cells):
        roi = stat[index]
        rows.append(np.asarray(roi["ypix"], np.int64) * dims[1] + np.asarray(roi["xpix"], np.int64))
        cols.append(np.full(len(roi["ypix"]), column))
        vals.append(np.asarray(roi["lam"], np.float32))
    a = scipy.sparse.csc_matrix(
        (
            np.concatenate(vals or [np.zeros(0)]),
            (np.concatenate(rows or [np.zeros(0)]), np.concatenate(cols or [np.zeros(0)])),
        ),
        shape=(dims[0] * dims[1], len(cells)),
    )
    coefficient = float((ops.get("extraction") or {}).get("neuropil_coefficient", 0.7))
    c_raw = np.asarray(F[cells], np.float32) - np.float32(coefficient) * np.asarray(Fneu[cells], np.float32)
    frames = [int(n) for n in np.atleast_1d(ops.get("frames_per_file", [F.shape[1]]))]
    files = [Path(str(f)).stem for f in (ops.get("file_list") or [])]
    if sum(frames) != F.shape[1] or len(files) != len(frames):
        frames, files = [int(F.shape[1])], [Path(str(ops.get("data_path", ["recording"])[0])).name]
    bounds = np.concatenate([[0], np.cumsum(frames)]).tolist()

    def on_frame(image: Any) -> Any:
        # suite2p keeps max_proj and Vcorr on the registration's valid region (yrange, xrange) only
        image = np.asarray(image, np.float32)
        if image.shape == dims:
            return image
        full = np.zeros(dims, np.float32)
        (y0, y1), (x0, x1) = ops["yrange"], ops["xrange"]
        full[y0:y1, x0:x1] = image
        return full

    images = [("mean", on_frame(ops["meanImg"]))]
    images += [(kind, on_frame(ops[key])) for kind, key in (("max", "max_proj"), ("Cn", "Vcorr")) if key in ops]
    write_layout(
        out / LAYOUT,
        a=a,
        dims=dims,
        traces={"C_raw": c_raw, "S": np.asarray(spks[cells], np.float32)},
        bounds=bounds,
        session_ids=files,
        fs=float(ops.get("fs", 10.0)),
        images=images,
        extra={
            "tool": "suite2p",
            "plane": plane.name,
            "suite2p_roi": [int(i) for i in cells],
            "trace_units": f"C_raw = F - {coefficient:g} Fneu (suite2p's fluorescence); S = spks",
        },
    )
    return {"neurons": int(len(cells)), "folder": LAYOUT}


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
        LAYOUT: write_neurons(planes[0], out) if planes else None,
        "run": {"seconds": round(time.time() - started, 3)},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _progress(1.0, "done")
    return summary


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["curate"]:
        curate_main(argv[1:], tool="suite2p", merge=MERGE)
        return
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
