"""Curation of a caliali result: a reviewer's decisions applied, as a new result.

``caliali curate --result DIR --decisions FILE --output DIR`` reads a run's
outputs (read-only) and a decisions file (``ncaas-review/1``, written by the
review page of ncaas: which neurons were accepted, rejected, merged), and
writes the curated result in the same layout as a run: ``arrays/`` (the
neurons layout, the run's images copied), ``neurons.nwb``, ``caiman.hdf5``,
``qc/``, ``summary.json``, and ``curation.json`` saying where each curated
neuron comes from.

Only the decisions' ``final`` state is used: rejected neurons are left out,
accepted and unreviewed ones are kept as they are (same footprint and traces,
to the bit), and each merge group becomes one neuron, in the place of its
lowest id. A merged neuron is computed as the extraction's own merge computes
one (`caliali.extraction._merge`): the rank-1 non-negative fit of the
members' summed activity ``sum_k u_k c_k`` (unit footprints, denoised traces
in movie units) gives its footprint; its raw trace is the members' raw traces
projected on it, so it carries their residual and no movie is needed; then it
is post-processed as every neuron at the end of an extraction (AR(1) OASIS,
per-session detrending and noise scaling, AR(2) OASIS: `finalize_traces`),
and its resting level ``f0`` (the ΔF/F denominator) is its members' baselines
projected likewise plus the run's background ``b0`` under the new footprint.

The same result and decisions give the same bytes in every file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

from caliali.exceptions import InputError

__all__ = ["CurationError", "Decisions", "curate", "load_decisions"]

FORMAT = "ncaas-review/1"

# meta.json keys that `caliali.outputs.write_arrays` writes itself; every other key of the run's
# meta.json (frame rate source, crop, gSig, ...) is carried over to the curated one as it is.
_WRITTEN = {
    "dims",
    "dims_order",
    "pixel_order",
    "spatial_ds",
    "grid",
    "n_neurons",
    "n_frames",
    "session_ids",
    "session_bounds",
    "fs",
    "trace_units",
    "order",
    "snr",
    "centers",
    "noise",
    "params",
    "history",
    "convergence",
    "images",
    "b0",
    "dff",
    "dark_level",
    "dff_window_s",
    "dff_undefined",
    "f0",
}


class CurationError(InputError):
    """A decisions file or a result cannot be curated as given."""


@dataclass(frozen=True)
class Decisions:
    """The ``final`` state of a review: ids accepted, rejected and merged (groups), and the file's sha256."""

    accepted: frozenset[int]
    rejected: frozenset[int]
    merges: tuple[tuple[int, ...], ...]
    sha256: str
    source: dict[str, Any]


def _ids(value: Any, where: str, n_neurons: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CurationError(f"decisions: {where} must be a list of neuron ids (whole numbers); got {value!r:.80}")
    wrong = [v for v in value if not 0 <= v < n_neurons]
    if wrong:
        raise CurationError(
            f"decisions: {where} names neuron {wrong[0]}, but the result has neurons 0-{n_neurons - 1}; "
            "the decisions were made on another result"
        )
    if len(set(value)) != len(value):
        twice = sorted(v for v in set(value) if value.count(v) > 1)[0]
        raise CurationError(f"decisions: {where} lists neuron {twice} twice; list each neuron once")
    return list(value)


def load_decisions(path: Path | str, n_neurons: int) -> Decisions:
    """Read and check a decisions file for a result of ``n_neurons`` neurons; a `CurationError` names what is wrong.

    Checked: JSON, ``format`` ``ncaas-review/1``, ``n_neurons`` the result's, ``final`` with lists
    ``accepted``, ``rejected`` (ids in range, each once) and ``merges`` (groups of two or more ids,
    no id in two groups), no id both accepted and rejected, no rejected id in a merge.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CurationError(f"cannot read the decisions file {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CurationError(
            f"the decisions file {path.name} is not JSON ({exc}); give the file the review wrote"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CurationError(
            f"the decisions file {path.name} has format {found!r}, not {FORMAT!r}; give a review's file"
        )
    if data.get("n_neurons") != n_neurons:
        raise CurationError(
            f"the decisions are for {data.get('n_neurons')!r} neurons but the result has {n_neurons}; "
            "give the decisions made on this result"
        )
    final = data.get("final")
    if not isinstance(final, dict):
        raise CurationError("decisions: 'final' is missing or not an object with accepted, rejected and merges")
    accepted = _ids(final.get("accepted", []), "final.accepted", n_neurons)
    rejected = _ids(final.get("rejected", []), "final.rejected", n_neurons)
    groups = final.get("merges", [])
    if not isinstance(groups, list):
        raise CurationError(f"decisions: final.merges must be a list of groups of ids; got {groups!r:.80}")
    merges: list[tuple[int, ...]] = []
    seen: dict[int, int] = {}
    for g, group in enumerate(groups):
        ids = _ids(group, f"final.merges[{g}]", n_neurons)
        if len(ids) < 2:
            raise CurationError(f"decisions: final.merges[{g}] is {ids}; a merge needs two or more neurons")
        for i in ids:
            if i in seen:
                raise CurationError(
                    f"decisions: neuron {i} is in two merges (final.merges[{seen[i]}] and [{g}]); "
                    "merge overlapping groups into one"
                )
            seen[i] = g
        merges.append(tuple(sorted(ids)))
    both = sorted(set(accepted) & set(rejected))
    if both:
        raise CurationError(f"decisions: neuron {both[0]} is both accepted and rejected; undo one of the two")
    dropped = sorted(set(rejected) & set(seen))
    if dropped:
        raise CurationError(f"decisions: neuron {dropped[0]} is rejected and in a merge; undo one of the two")
    source = {key: data.get(key) for key in ("job", "dataset", "certificate_sha256")}
    return Decisions(
        accepted=frozenset(accepted),
        rejected=frozenset(rejected),
        merges=tuple(sorted(merges)),
        sha256=hashlib.sha256(raw).hexdigest(),
        source=source,
    )


@dataclass(frozen=True)
class _Result:
    """A run's outputs, read-only: the neurons layout's arrays (traces memory-mapped) and its records."""

    folder: Path
    meta: dict[str, Any]
    summary: dict[str, Any]
    A: scipy.sparse.csc_matrix
    C_raw: np.ndarray
    C: np.ndarray
    S: np.ndarray
    bounds: np.ndarray
    noise: np.ndarray
    b0: np.ndarray | None
    f0: np.ndarray | None


def _open_result(result: Path) -> _Result:
    arrays = result / "arrays"
    meta_path = arrays / "meta.json"
    if not meta_path.is_file():
        raise CurationError(f"{str(result)!r} has no arrays/meta.json; give the outputs folder of a caliali run")
    try:
        meta = json.loads(meta_path.read_text())
        summary_path = result / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        a = scipy.sparse.csc_matrix(scipy.sparse.load_npz(arrays / "A.npz"), dtype=np.float32)
        traces = [np.load(arrays / f"{name}.npy", mmap_mode="r") for name in ("C_raw", "C", "S")]
        bounds = np.load(arrays / "session_bounds.npy").astype(np.int64)
        b0 = np.load(arrays / "b0.npy") if (arrays / "b0.npy").is_file() else None
    except (OSError, ValueError, KeyError) as exc:
        raise CurationError(
            f"the result in {str(result)!r} cannot be read ({exc}); give a complete caliali run"
        ) from exc
    k = int(meta.get("n_neurons", -1))
    if a.shape[1] != k or any(t.shape != (k, int(bounds[-1])) for t in traces):
        raise CurationError(
            f"the result in {str(result)!r} is inconsistent (A has {a.shape[1]} neurons, meta.json {k}); "
            "give a complete caliali run"
        )
    n_sessions = len(bounds) - 1
    noise = np.asarray(meta.get("noise") or np.ones((k, n_sessions)), np.float32).reshape(k, n_sessions)
    f0 = np.asarray(meta["f0"], np.float32).reshape(k, n_sessions) if meta.get("f0") is not None else None
    return _Result(result, meta, summary, a, *traces, bounds=bounds, noise=noise, b0=b0, f0=f0)


def _unit_footprints(a: scipy.sparse.csc_matrix, members: tuple[int, ...], dims: tuple[int, int]):
    """The members' footprints as unit-norm images in the box around them all (`Footprints`), and their norms."""
    from caliali.extraction._footprints import Footprints

    boxes, images, norms = [], [], []
    for m in members:
        col = a[:, [m]]
        y, x = np.divmod(col.indices.astype(np.int64), dims[1])
        values = col.data.astype(np.float64)
        norm = float(np.sqrt((values**2).sum()))
        if y.size == 0 or norm <= 0:
            y, x, values, norm = np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1), 1.0
        y0, y1, x0, x1 = int(y.min()), int(y.max()) + 1, int(x.min()), int(x.max()) + 1
        image = np.zeros((y1 - y0, x1 - x0), np.float32)
        image[y - y0, x - x0] = values / norm
        boxes.append((y0, y1, x0, x1))
        images.append(image)
        norms.append(norm)
    return Footprints(dims, boxes, images), np.asarray(norms)


def _movie_units(traces: np.ndarray, noise: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """(m, T) float32 traces in noise units of each session back in movie units (times each session's noise)."""
    out = np.array(traces, np.float32)
    for s, (s0, s1) in enumerate(zip(bounds[:-1], bounds[1:])):
        out[:, s0:s1] *= noise[:, s : s + 1]
    return out


@dataclass
class _Merged:
    """One merged neuron: footprint column (pixels, values), traces, noise, SNR, resting level."""

    pixels: np.ndarray
    values: np.ndarray
    c_raw: np.ndarray
    c: np.ndarray
    s: np.ndarray
    noise: np.ndarray
    snr: float
    f0: np.ndarray | None


def _merge(res: _Result, members: tuple[int, ...], work: Path) -> _Merged:
    """The merged neuron of ``members``, as the extraction merges and post-processes (module docstring)."""
    from caliali.extraction._deconv import deconvolve_trace
    from caliali.extraction._merge import _merge_group
    from caliali.extraction._postprocess import finalize_traces

    dims = (int(res.meta["dims"][0]), int(res.meta["dims"][1]))
    bounds = res.bounds
    index = list(members)
    footprints, _ = _unit_footprints(res.A, members, dims)
    noise = res.noise[index]
    denoised = _movie_units(res.C[index], noise, bounds)
    fit = _merge_group(footprints, np.arange(len(members)), denoised)
    if fit is None:
        raise CurationError(
            f"neurons {', '.join(map(str, members))} have no activity in common to merge (their fit is empty); "
            "reject them or merge other neurons"
        )
    (y0, y1, x0, x1), image, _, weights = fit
    raw = (weights.astype(np.float64) @ _movie_units(res.C_raw[index], noise, bounds).astype(np.float64)).astype(
        np.float32
    )
    ar1 = np.zeros_like(raw)
    for s0, s1 in zip(bounds[:-1], bounds[1:]):
        ar1[s0:s1] = deconvolve_trace(raw[s0:s1], p=1).c
    scaled, c_out, s_out, new_noise, snr, level = finalize_traces(raw[None], ar1[None], bounds, directory=work)
    yy, xx = np.nonzero(image > 0)
    pixels = ((yy + y0) * dims[1] + (xx + x0)).astype(np.int64)
    unit = image[yy, xx].astype(np.float64)
    f0 = None
    if res.f0 is not None:
        # members' resting levels on their unit footprints, less the background under each, projected like
        # their raw traces; then the new trace's own detrended level and the background under the new footprint
        baseline = res.f0[index].astype(np.float64)
        if res.b0 is not None:
            for i in range(len(index)):
                mb0, mim = footprints.boxes[i], footprints.images[i].astype(np.float64)
                baseline[i] -= [float((b[mb0[0] : mb0[1], mb0[2] : mb0[3]] * mim).sum()) for b in res.b0]
        f0 = weights.astype(np.float64) @ baseline + level[0]
        if res.b0 is not None:
            f0 += [float((b.reshape(-1)[pixels].astype(np.float64) * unit).sum()) for b in res.b0]
    scale = float(new_noise[0].mean())
    merged = _Merged(
        pixels=pixels,
        values=(unit * scale).astype(np.float32),
        c_raw=scaled[0],
        c=c_out[0],
        s=s_out[0],
        noise=new_noise[0],
        snr=float(snr[0]),
        f0=None if f0 is None else np.asarray(f0, np.float32),
    )
    for traces in (scaled, c_out, s_out):
        traces.close()
    return merged


def _plan(k: int, decisions: Decisions) -> list[tuple[tuple[int, ...], str]]:
    """The curated neurons in order: (original ids, status); kept ones in their order, a merge at its lowest id."""
    group_of = {m: group for group in decisions.merges for m in group}
    plan = []
    for i in range(k):
        if i in decisions.rejected:
            continue
        group = group_of.get(i)
        if group is None:
            plan.append(((i,), "accepted" if i in decisions.accepted else "unreviewed"))
        elif group[0] == i:
            plan.append((group, "merged"))
    return plan


def _copy_images(source: Path, target: Path, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Copy the run's background images into the curated arrays; returns their ``meta.json`` listing."""
    listed = meta.get("images")
    if listed is None:
        listed = [{"kind": kind, "session": None, "file": f"{kind}.npy"} for kind in ("Cn", "PNR")]
    kept = []
    for entry in listed:
        src = source / entry["file"]
        if not src.is_file():
            continue
        dst = target / entry["file"]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        kept.append(entry)
    return kept


def _config(summary: dict[str, Any]):
    from caliali.config import CalialiConfig

    try:
        return CalialiConfig(**(summary.get("config") or {}))
    except ValueError as exc:
        raise CurationError(f"the result's summary.json has a config caliali cannot read ({exc})") from exc


def curate(result: Path | str, decisions_path: Path | str, output: Path | str) -> dict[str, Any]:
    """Apply the decisions file to the run in ``result`` and write the curated result to ``output``.

    Returns ``curation.json`` 's content. See the module docstring for what is written and how a
    merged neuron is made; `load_decisions` for what a decisions file must hold.
    """
    from caliali import __version__
    from caliali.extraction import Extraction
    from caliali.extraction._traces import TraceFile
    from caliali.outputs import write_outputs
    from caliali.outputs._blocks import release

    result, output = Path(result), Path(output)
    res = _open_result(result)
    k = int(res.meta["n_neurons"])
    decisions = load_decisions(decisions_path, k)
    if output.resolve() == result.resolve():
        raise CurationError("--output is the result's own folder; give a new folder for the curated result")
    output.mkdir(parents=True, exist_ok=True)
    plan = _plan(k, decisions)
    dims = (int(res.meta["dims"][0]), int(res.meta["dims"][1]))
    t = int(res.bounds[-1])
    n_sessions = len(res.bounds) - 1
    traces = [TraceFile((len(plan), t), directory=output) for _ in range(3)]
    columns, noise, snr = [], np.zeros((len(plan), n_sessions), np.float32), np.zeros(len(plan), np.float32)
    f0 = None if res.f0 is None else np.zeros((len(plan), n_sessions), np.float32)
    snr_old = np.asarray(res.meta.get("snr") or np.zeros(k), np.float32)
    centers_old = np.asarray(res.meta.get("centers") or np.zeros((k, 2)), np.float64).reshape(k, 2)
    centers = np.zeros((len(plan), 2))
    for row, (ids, status) in enumerate(plan):
        if status == "merged":
            merged = _merge(res, ids, output)
            columns.append((merged.pixels, merged.values))
            rows = (merged.c_raw, merged.c, merged.s)
            noise[row], snr[row] = merged.noise, merged.snr
            centers[row] = _centers(_sparse([columns[-1]], dims), dims)[0]
            if f0 is not None and merged.f0 is not None:
                f0[row] = merged.f0
        else:
            (i,) = ids
            col = res.A[:, [i]]
            columns.append((col.indices.astype(np.int64), col.data.astype(np.float32)))
            rows = (res.C_raw[i], res.C[i], res.S[i])
            noise[row], snr[row], centers[row] = res.noise[i], snr_old[i], centers_old[i]
            if f0 is not None and res.f0 is not None:
                f0[row] = res.f0[i]
        for file, values in zip(traces, rows):
            file[row] = values
        for mapped in (res.C_raw, res.C, res.S):
            release(mapped)  # pages of the run's memory-mapped traces go as they are copied (outputs._blocks)
    a = _sparse(columns, dims)
    extraction = Extraction(
        A=a,
        C_raw=traces[0].view(),
        C=traces[1].view(),
        S=traces[2].view(),
        cn=np.load(result / "arrays" / "Cn.npy"),
        pnr=np.load(result / "arrays" / "PNR.npy"),
        session_bounds=res.bounds,
        dims=dims,
        snr=snr,
        noise=noise,
        centers=centers,
        seeds=np.zeros((0, 2)),
        history=list(res.meta.get("history") or []),
        convergence=dict(res.meta.get("convergence") or {}),
        params=dict(res.meta.get("params") or {}),
        f0=f0,
        b0=res.b0,
    )
    for file in traces:
        file.close()  # the views keep the unnamed files while they are written out
    curation = {
        "decisions_sha256": decisions.sha256,
        "source": decisions.source,
        "neurons": [{"id": new, "from": list(ids), "status": status} for new, (ids, status) in enumerate(plan)],
        "merge": "a merged neuron is the rank-1 non-negative fit of its members' summed activity (unit footprints "
        "times denoised traces), its raw trace their raw traces projected on its footprint, post-processed "
        "as the extraction's neurons are (caliali.curate)",
    }
    cfg = _config(res.summary)
    nwb = res.summary.get("nwb") or {}
    fs = float(res.meta.get("fs") or cfg.fs_ds)
    extra = {key: value for key, value in res.meta.items() if key not in _WRITTEN}
    extra["order"] = (
        "the original result's order with rejected neurons left out and each merge in the place of its lowest id "
        "(curation.json)"
    )
    extra["curation"] = {"decisions_sha256": decisions.sha256, "source": decisions.source}
    identifier = f"{nwb.get('identifier') or 'caliali'}-curated-{decisions.sha256[:16]}"
    start = nwb.get("session_start_time")
    write_outputs(
        extraction,
        output,
        fs=fs,
        session_ids=res.meta.get("session_ids"),
        spatial_ds=int(res.meta.get("spatial_ds", 1)),
        nwb=cfg.nwb,
        qc=cfg.qc,
        caiman=cfg.caiman_hdf5,
        extra_meta=extra,
        session_start_time=datetime.fromisoformat(start) if start else _epoch(),
        identifier=identifier,
        field_of_view=_field_of_view(res.meta, bool(cfg.crop)),
        config=cfg,
    )
    arrays = output / "arrays"
    meta = json.loads((arrays / "meta.json").read_text())
    meta["images"] = _copy_images(result / "arrays", arrays, res.meta)
    (arrays / "meta.json").write_text(json.dumps(meta, indent=1, default=float))
    if (result / "arrays" / "valid_mask.npy").is_file():
        shutil.copyfile(result / "arrays" / "valid_mask.npy", arrays / "valid_mask.npy")
    (output / "curation.json").write_text(json.dumps(curation, indent=1, sort_keys=True) + "\n")
    summary = {
        "caliali_version": __version__,
        "curated_from": {**decisions.source, "decisions_sha256": decisions.sha256},
        "neurons": len(plan),
        "neurons_before": k,
        "accepted": sum(status == "accepted" for _, status in plan),
        "unreviewed": sum(status == "unreviewed" for _, status in plan),
        "merged": sum(status == "merged" for _, status in plan),
        "rejected": len(decisions.rejected),
        "sessions": res.meta.get("session_ids"),
        "session_frames": [int(b - a) for a, b in zip(res.bounds[:-1], res.bounds[1:])],
        **{key: res.summary[key] for key in ("fs", "fs_from", "gSig", "config") if key in res.summary},
        "nwb": {**nwb, "identifier": identifier} if cfg.nwb else None,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=float) + "\n")
    return curation


def _epoch() -> datetime:
    from caliali.provenance import EPOCH

    return EPOCH


def _field_of_view(meta: dict[str, Any], cropped: bool) -> str:
    """The NWB field-of-view sentence of the run (as `caliali.pipeline` words it), from meta.json's region;
    none, as for the run, when its config cropped nothing and named no roi_mask."""
    crop, full = meta.get("crop"), meta.get("frame_shape_original")
    roi = meta.get("roi_mask") or ""
    if not cropped and not roi:
        return ""
    h, w = (int(n) for n in (full or meta["dims"]))
    top, bottom, left, right = crop or (0, h, 0, w)
    ds = int(meta.get("spatial_ds", 1))
    f = "" if ds == 1 else f"{ds}"
    text = (
        f"rows {top}-{bottom - 1}, columns {left}-{right - 1} of the original {h}x{w} px frame; "
        f"footprint pixel (y, x) is original pixel ({top} + {f}y, {left} + {f}x)"
    )
    return text + (f"; footprints confined to roi_mask {roi}" if roi else "")


def _sparse(columns: list[tuple[np.ndarray, np.ndarray]], dims: tuple[int, int]) -> scipy.sparse.csc_array:
    """(pixels, K) float32 CSC from each column's (pixel indices, values), indices sorted."""
    indptr, indices, data = [0], [], []
    for pixels, values in columns:
        order = np.argsort(pixels, kind="stable")
        indices.append(pixels[order])
        data.append(values[order])
        indptr.append(indptr[-1] + pixels.size)
    return scipy.sparse.csc_array(
        (
            np.concatenate(data) if data else np.zeros(0, np.float32),
            np.concatenate(indices) if indices else np.zeros(0, np.int64),
            np.asarray(indptr, np.int64),
        ),
        shape=(dims[0] * dims[1], len(columns)),
    )


def _centers(a: scipy.sparse.csc_array, dims: tuple[int, int]) -> np.ndarray:
    """Intensity-weighted centre (row, col) of every footprint, as `Footprints.centers`."""
    out = np.zeros((a.shape[1], 2))
    a = scipy.sparse.csc_matrix(a)
    for k in range(a.shape[1]):
        lo, hi = a.indptr[k], a.indptr[k + 1]
        y, x = np.divmod(a.indices[lo:hi].astype(np.int64), dims[1])
        w = a.data[lo:hi].astype(np.float64)
        total = w.sum()
        if total > 0:
            out[k] = ((y * w).sum() / total, (x * w).sum() / total)
    return out
