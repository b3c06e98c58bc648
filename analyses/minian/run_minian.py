"""Run minian 2.0.2, unchanged, on one dataset: the entry ncaas runs as ``python -m run_minian``.

minian's pipeline is the notebook it ships (``minian/notebooks/pipeline/pipeline.ipynb``): a
sequence of calls to its public API, each step with a ``param_*`` dict. This entry makes the
same calls, in the same order, with the same parameters, without the interactive cells:

load_videos → glow removal → denoise → remove_background → estimate_motion → apply_transform
→ seeds_init → pnr_refine → ks_refine → seeds_merge → initA/initC → unit_merge →
update_background → get_noise_fft → update_spatial → update_temporal → unit_merge →
update_spatial → update_background → update_temporal

``python -m run_minian INPUT --config CONFIG.json --out OUTPUT`` reads the videos in INPUT (a
folder, or one file) matching ``load_videos.pattern`` and writes into OUTPUT

* ``minian/``: minian's own result dataset (``save_minian``: A, C, S, b, f, b0, c0, motion,
  max_proj as zarr arrays), as the notebook saves it;
* ``minian.nwb``: footprints, denoised traces (C) and deconvolved activity (S), the maximum
  projection and the motion, written with pynwb;
* ``qc/``: ``footprints.png``, ``traces.png``, ``motion.png``;
* ``neurons/``: the units in ncaas's "neurons" layout, what a review reads (`write_neurons`):
  ``A.npz`` from A, ``C.npy`` = C, ``C_raw.npy`` = YrA of the last temporal update (minian's
  raw trace of each unit: C plus the residual projected on its footprint), ``S.npy`` = S, the
  videos as one session, and the images ``max_proj`` (max) and the mean of the processed video;
* ``summary.json``: frames, units, run time.

``python -m run_minian curate --result DIR --decisions FILE --output DIR`` applies a review's
decisions to the ``neurons/`` of a run (`curate_layout`). minian's own merge (``unit_merge``)
merges by correlation and distance thresholds, not named units: a merged neuron here is the
rank-1 non-negative fit of its members' A C_raw, its C_raw, C and S the members' projected on it.

The config has one section per step (the notebook's ``param_<step>`` dict, defaults as the
notebook sets them), ``cluster`` (the notebook's dask cluster settings) and ``nwb_rate``.
``python -m run_minian --schema`` prints the config schema and defaults, read from the
installed notebook and the steps' docstrings, as the blueprint holds them.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import time
from importlib import metadata, resources
from pathlib import Path
from typing import Any

# Each configurable step: the notebook's parameter dict and the function it is given to.
_STEPS = {
    "load_videos": "minian.io:load_videos",
    "denoise": "minian.preprocessing:denoise",
    "background_removal": "minian.preprocessing:remove_background",
    "estimate_motion": "minian.motion_correction:estimate_motion",
    "seeds_init": "minian.initialization:seeds_init",
    "pnr_refine": "minian.initialization:pnr_refine",
    "ks_refine": "minian.initialization:ks_refine",
    "seeds_merge": "minian.initialization:seeds_merge",
    "initialize": "minian.initialization:initA",
    "init_merge": "minian.cnmf:unit_merge",
    "get_noise": "minian.cnmf:get_noise_fft",
    "first_spatial": "minian.cnmf:update_spatial",
    "first_temporal": "minian.cnmf:update_temporal",
    "first_merge": "minian.cnmf:unit_merge",
    "second_spatial": "minian.cnmf:update_spatial",
    "second_temporal": "minian.cnmf:update_temporal",
}
# The notebook's cluster settings (read from environment variables there, with these names).
_CLUSTER = {
    "n_workers": "number of dask worker processes",
    "memory_limit": "memory limit of each dask worker",
    "rechunk_mem_limit": "memory limit of each on-disk rechunking (save_minian's mem_limit)",
}
_NWB_RATE = 30.0


def _progress(fraction: float, message: str) -> None:
    print(f"NCAAS_PROGRESS {fraction:.3f} {message}", flush=True)


def _fail(reason: str) -> None:
    """Tell the platform why the run failed (one line), then exit 3."""
    reason = " ".join(reason.split())
    if os.environ.get("NCAAS_ERROR_FILE"):
        Path(os.environ["NCAAS_ERROR_FILE"]).write_text(reason)
    print(f"NCAAS_ERROR {reason}", file=sys.stderr, flush=True)
    raise SystemExit(3)


class _Defaults:
    """What the notebook's ``os.getenv(NAME, default)`` reads when nothing is set: the default."""

    environ: dict[str, str] = {}

    @staticmethod
    def getenv(_name: str, default: Any = None) -> Any:
        return default


def _as_json(value: Any) -> Any:
    import numpy as np

    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name  # param_load_videos' dtype: np.uint8 -> "uint8"
    if isinstance(value, (tuple, list)):
        return [_as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    return value


def notebook_parameters() -> tuple[dict[str, dict[str, Any]], dict[str, Any], set[str]]:
    """The ``param_<step>`` dicts and cluster settings of minian's pipeline notebook, as it sets them.

    Returns the steps' parameters, the cluster settings, and the (step.key) names whose
    default is a tuple (given back to minian as tuples).
    """
    import numpy as np

    notebook = resources.files("minian") / "notebooks" / "pipeline" / "pipeline.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    source = "\n".join(
        "".join(c["source"]) for c in cells if c["cell_type"] == "code" and not "".join(c["source"]).startswith("%")
    )
    names = {"np": np, "os": _Defaults, "dict": dict, "int": int, "float": float, "str": str}
    steps: dict[str, dict[str, Any]] = {}
    cluster: dict[str, Any] = {}
    tuples: set[str] = set()
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        target = node.targets[0].id
        step = target.removeprefix("param_")
        if target.startswith("param_") and step in _STEPS and step not in steps:
            value = eval(compile(ast.Expression(node.value), "pipeline.ipynb", "eval"), names)  # the notebook's own
            tuples |= {f"{step}.{k}" for k, v in value.items() if isinstance(v, tuple)}
            steps[step] = _as_json(value)
        elif target in _CLUSTER and target not in cluster:
            cluster[target] = eval(compile(ast.Expression(node.value), "pipeline.ipynb", "eval"), names)
    missing = sorted(set(_STEPS) - set(steps)) + sorted(set(_CLUSTER) - set(cluster))
    if missing:
        raise RuntimeError(f"minian's pipeline notebook no longer sets {', '.join(missing)}")
    return {name: steps[name] for name in _STEPS}, cluster, tuples


def _function(path: str) -> Any:
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _docs(function: Any) -> dict[str, str]:
    """Each parameter's description in a numpydoc docstring, on one line."""
    doc = inspect.getdoc(function) or ""
    section = re.search(r"Parameters\n-+\n(.*?)(?:\n\n[A-Z][a-z]+\n-+\n|\Z)", doc, flags=re.S)
    found: dict[str, str] = {}
    if section:
        for match in re.finditer(r"^(\w+) :[^\n]*\n((?:[ \t]+[^\n]*\n?)+)", section.group(1), flags=re.M):
            found[match.group(1)] = " ".join(match.group(2).split())
    return found


_ANNOTATED = {"int": "integer", "float": "number", "str": "string", "bool": "boolean", "None": "null"}


def _annotated(function: Any) -> dict[str, list[str]]:
    """The JSON types each parameter's annotation allows (only plain scalar annotations; else nothing)."""
    found = {}
    for name, parameter in inspect.signature(function).parameters.items():
        text = (
            parameter.annotation
            if isinstance(parameter.annotation, str)
            else getattr(parameter.annotation, "__name__", "")
        )
        parts = [part.strip() for part in str(text).split("|")]
        if parts and all(part in _ANNOTATED for part in parts):
            found[name] = sorted({_ANNOTATED[part] for part in parts})
    return found


def _schema_of(value: Any, description: str | None = None, types: list[str] | None = None) -> dict[str, Any]:
    if types and not isinstance(value, (list, dict)):  # the function's annotation, e.g. float for a default 1
        own = _schema_of(value)["type"]
        if own not in types and not (own == "integer" and "number" in types):
            types = sorted({*types, own})  # an annotation narrower than the notebook's own value (add_lag: 20)
        schema: dict[str, Any] = {"type": types[0] if len(types) == 1 else types}
    elif isinstance(value, bool):
        schema = {"type": "boolean"}
    elif isinstance(value, int):
        schema = {"type": "integer"}
    elif isinstance(value, float):
        schema = {"type": "number"}
    elif isinstance(value, str):
        schema = {"type": "string"}
    elif value is None:
        schema = {"type": "null"}
    elif isinstance(value, list):
        items = [_schema_of(v) for v in value]
        kinds = sorted(
            {t for item in items for t in ([item["type"]] if isinstance(item["type"], str) else item["type"])}
        )
        kinds = ["number" if k == "integer" and "number" in kinds else k for k in kinds]
        kinds = sorted(set(kinds) | ({"integer"} if kinds == ["null"] else set()))
        schema = {"type": "array", "items": {"type": kinds[0] if len(kinds) == 1 else kinds}}
        schema["minItems"] = schema["maxItems"] = len(value)
    elif isinstance(value, dict):
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {k: _schema_of(v) for k, v in value.items()},
        }
    else:
        raise TypeError(f"no JSON Schema for {value!r}")
    if description:
        schema["description"] = description
    return schema


def config_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The config schema and defaults: the notebook's step parameters, described by the steps' docstrings."""
    steps, cluster, _ = notebook_parameters()
    properties: dict[str, Any] = {}
    for step, params in steps.items():
        function = _function(_STEPS[step])
        docs, types = _docs(function), _annotated(function)
        properties[step] = {
            "type": "object",
            "additionalProperties": False,
            "description": f"parameters of minian's {function.__module__}.{function.__name__} (param_{step})",
            "properties": {k: _schema_of(v, docs.get(k), types.get(k)) for k, v in params.items()},
        }
    properties["cluster"] = {
        "type": "object",
        "additionalProperties": False,
        "description": "the notebook's dask LocalCluster",
        "properties": {k: _schema_of(v, _CLUSTER[k]) for k, v in cluster.items()},
    }
    properties["cluster"]["properties"]["n_workers"]["minimum"] = 1
    properties["nwb_rate"] = {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "frame rate (Hz) written into minian.nwb; minian itself works in frames",
    }
    defaults = {**steps, "cluster": cluster, "nwb_rate": _NWB_RATE}
    return {"type": "object", "additionalProperties": False, "properties": properties}, defaults


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in given.items():
        merged[key] = _merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def _params(config: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any], float]:
    """The steps' parameters as minian takes them (tuples and dtypes restored)."""
    import numpy as np

    steps, cluster, tuples = notebook_parameters()
    steps = _merge(steps, {k: v for k, v in config.items() if k in steps})
    cluster = {**cluster, **config.get("cluster", {})}
    for name in tuples:
        step, key = name.split(".")
        steps[step][key] = tuple(steps[step][key])
    if steps["load_videos"].get("dtype"):
        steps["load_videos"]["dtype"] = np.dtype(steps["load_videos"]["dtype"]).type
    return steps, cluster, float(config.get("nwb_rate", _NWB_RATE))


def pipeline(folder: Path, out: Path, config: dict[str, Any], *, session: str | None = None) -> dict[str, Any]:
    """The notebook's calls, in its order, with its save points (intermediates in scratch); ``session``
    names the recording in the neurons layout (default: the folder's name)."""
    started = time.time()
    steps, cluster_settings, rate = _params(config)
    scratch = Path(tempfile.mkdtemp(prefix="minian-", dir=os.environ.get("TMPDIR")))
    os.environ["MINIAN_INTERMEDIATE"] = str(scratch)
    import dask
    import numpy as np
    from dask.distributed import Client, LocalCluster
    from minian.cnmf import (
        compute_trace,
        get_noise_fft,
        unit_merge,
        update_background,
        update_spatial,
        update_temporal,
    )
    from minian.initialization import initA, initC, ks_refine, pnr_refine, seeds_init, seeds_merge
    from minian.io import load_videos
    from minian.motion_correction import apply_transform, estimate_motion
    from minian.preprocessing import denoise, remove_background
    from minian.utilities import get_optimal_chk, save_minian

    intpath, dpath = str(scratch), str(out / "minian")
    rechunk = cluster_settings["rechunk_mem_limit"]
    dask.config.set({"distributed.worker.memory.terminate": False})
    cluster = LocalCluster(
        n_workers=int(cluster_settings["n_workers"]),
        memory_limit=cluster_settings["memory_limit"],
        resources={"MEM": 1},
        threads_per_worker=2,
        dashboard_address=None,
    )
    # minian's notebook also adds its TaskAnnotation scheduler plugin. With the dask of this lock it raises
    # on every graph (it expects string task keys), which filled the log with scheduler tracebacks, and
    # annotated nothing; so it is left out, with the same behaviour.
    client = Client(cluster)
    try:
        _progress(0.05, "loading videos")
        varr = load_videos(str(folder), **steps["load_videos"])
        chk, _ = get_optimal_chk(varr, dtype=float)
        varr = save_minian(
            varr.chunk({"frame": chk["frame"], "height": -1, "width": -1}).rename("varr"), intpath, overwrite=True
        )
        _progress(0.12, f"preprocessing {varr.sizes['frame']} frames")
        varr_ref = varr - varr.min("frame").compute()
        varr_ref = denoise(varr_ref, **steps["denoise"])
        varr_ref = remove_background(varr_ref, **steps["background_removal"])
        varr_ref = save_minian(varr_ref.rename("varr_ref"), dpath=intpath, overwrite=True)
        _progress(0.2, "motion correction")
        motion = estimate_motion(varr_ref, **steps["estimate_motion"])
        motion = save_minian(motion.rename("motion").chunk({"frame": chk["frame"]}), dpath, overwrite=True)
        Y = apply_transform(varr_ref, motion, fill=0)
        Y_fm_chk = save_minian(Y.astype(np.float32).rename("Y_fm_chk"), intpath, overwrite=True)
        Y_hw_chk = save_minian(
            Y_fm_chk.rename("Y_hw_chk"),
            intpath,
            overwrite=True,
            mem_limit=rechunk,
            chunks={"frame": -1, "height": chk["height"], "width": chk["width"]},
        )
        max_proj = save_minian(Y_fm_chk.max("frame").rename("max_proj"), dpath, overwrite=True).compute()
        mean_proj = Y_fm_chk.mean("frame").compute()  # the neurons layout's mean image (not saved by the notebook)
        _progress(0.35, "initialization: seeds")
        seeds = seeds_init(Y_fm_chk, **steps["seeds_init"])
        seeds, _pnr, _gmm = pnr_refine(Y_hw_chk, seeds, **steps["pnr_refine"])
        seeds = ks_refine(Y_hw_chk, seeds, **steps["ks_refine"])
        seeds_final = seeds[seeds["mask_ks"] & seeds["mask_pnr"]].reset_index(drop=True)
        if seeds_final.empty:
            _fail("minian found no seeds that pass pnr_refine and ks_refine; lower pnr_refine.thres or ks_refine.sig")
        seeds_final = seeds_merge(Y_hw_chk, max_proj, seeds_final, **steps["seeds_merge"])
        _progress(0.45, f"initialization: {int(seeds_final['mask_mrg'].sum())} seeds")
        A_init = initA(Y_hw_chk, seeds_final[seeds_final["mask_mrg"]], **steps["initialize"])
        A_init = save_minian(A_init.rename("A_init"), intpath, overwrite=True)
        C_init = initC(Y_fm_chk, A_init)
        C_init = save_minian(
            C_init.rename("C_init"), intpath, overwrite=True, mem_limit=rechunk, chunks={"unit_id": 1, "frame": -1}
        )
        A, C = unit_merge(A_init, C_init, **steps["init_merge"])
        A = save_minian(A.rename("A"), intpath, overwrite=True)
        C = save_minian(C.rename("C"), intpath, overwrite=True)
        C_chk = save_minian(
            C.rename("C_chk"), intpath, overwrite=True, mem_limit=rechunk, chunks={"unit_id": -1, "frame": chk["frame"]}
        )
        b, f = update_background(Y_fm_chk, A, C_chk)
        f = save_minian(f.rename("f"), intpath, overwrite=True)
        b = save_minian(b.rename("b"), intpath, overwrite=True)
        sn_spatial = get_noise_fft(Y_hw_chk, **steps["get_noise"])
        sn_spatial = save_minian(sn_spatial.rename("sn_spatial"), intpath, overwrite=True)

        def spatial(A, C, C_chk, params, fraction):
            _progress(fraction, f"CNMF spatial update of {A.sizes['unit_id']} units")
            A_new, mask, norm_fac = update_spatial(Y_hw_chk, A, C, sn_spatial, **params)
            C_new = save_minian((C.sel(unit_id=mask) * norm_fac).rename("C_new"), intpath, overwrite=True)
            C_chk_new = save_minian((C_chk.sel(unit_id=mask) * norm_fac).rename("C_chk_new"), intpath, overwrite=True)
            b_new, f_new = update_background(Y_fm_chk, A_new, C_chk_new)
            A = save_minian(
                A_new.rename("A"),
                intpath,
                overwrite=True,
                mem_limit=rechunk,
                chunks={"unit_id": 1, "height": -1, "width": -1},
            )
            b = save_minian(b_new.rename("b"), intpath, overwrite=True)
            f = save_minian(f_new.chunk({"frame": chk["frame"]}).rename("f"), intpath, overwrite=True)
            C = save_minian(C_new.rename("C"), intpath, overwrite=True)
            C_chk = save_minian(C_chk_new.rename("C_chk"), intpath, overwrite=True)
            return A, C, C_chk, b, f

        last: dict[str, Any] = {}

        def temporal(A, C, C_chk, b, f, params, fraction):
            _progress(fraction, f"CNMF temporal update of {A.sizes['unit_id']} units")
            YrA = save_minian(
                compute_trace(Y_fm_chk, A, b, C_chk, f).rename("YrA"),
                intpath,
                overwrite=True,
                mem_limit=rechunk,
                chunks={"unit_id": 1, "frame": -1},
            )
            C_new, S_new, b0_new, c0_new, _g, _mask = update_temporal(A, C, YrA=YrA, **params)
            C = save_minian(C_new.rename("C").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            C_chk = save_minian(
                C.rename("C_chk"),
                intpath,
                overwrite=True,
                mem_limit=rechunk,
                chunks={"unit_id": -1, "frame": chk["frame"]},
            )
            S = save_minian(S_new.rename("S").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            b0 = save_minian(b0_new.rename("b0").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            c0 = save_minian(c0_new.rename("c0").chunk({"unit_id": 1, "frame": -1}), intpath, overwrite=True)
            A = A.sel(unit_id=C.coords["unit_id"].values)
            last["YrA"] = YrA.sel(unit_id=C.coords["unit_id"].values)  # the kept units' raw traces
            return A, C, C_chk, S, b0, c0

        A, C, C_chk, b, f = spatial(A, C, C_chk, steps["first_spatial"], 0.55)
        A, C, C_chk, S, b0, c0 = temporal(A, C, C_chk, b, f, steps["first_temporal"], 0.62)
        A_mrg, C_mrg, [sig_mrg] = unit_merge(A, C, [C + b0 + c0], **steps["first_merge"])
        A = save_minian(A_mrg.rename("A_mrg"), intpath, overwrite=True)
        C = save_minian(C_mrg.rename("C_mrg"), intpath, overwrite=True)
        C_chk = save_minian(
            C.rename("C_mrg_chk"),
            intpath,
            overwrite=True,
            mem_limit=rechunk,
            chunks={"unit_id": -1, "frame": chk["frame"]},
        )
        A, C, C_chk, b, f = spatial(A, C, C_chk, steps["second_spatial"], 0.72)
        A, C, C_chk, S, b0, c0 = temporal(A, C, C_chk, b, f, steps["second_temporal"], 0.8)
        _progress(0.88, f"saving {A.sizes['unit_id']} units")
        results = {}
        for name, array in (("A", A), ("C", C), ("S", S), ("c0", c0), ("b0", b0), ("b", b), ("f", f)):
            results[name] = save_minian(array.rename(name), dpath, overwrite=True)
        frames = int(varr.sizes["frame"])
    finally:
        client.close()
        cluster.close()
    _progress(0.92, "NWB file and QC pictures")
    arrays = {k: v.compute().values for k, v in results.items()}
    arrays["max_proj"] = max_proj.values
    arrays["motion"] = motion.compute().values
    arrays["YrA"] = last["YrA"].compute().values
    arrays["mean_proj"] = mean_proj.values
    write_neurons(out, arrays, rate, session=session or folder.name)
    _write_nwb(out / "minian.nwb", arrays, rate)
    _qc(out / "qc", arrays)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"frames": frames, "units": int(arrays["A"].shape[0]), "seconds": round(time.time() - started, 3)}


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
    "rank-1 non-negative fit of the members' A C_raw (alternating least squares); C_raw, C and S the "
    "members' projected on the merged footprint (minian's unit_merge merges by thresholds, not named units)"
)


def write_neurons(out: Path, arrays: dict[str, Any], rate: float, *, session: str) -> dict[str, Any]:
    """minian's units in the neurons layout, in ``out / LAYOUT`` (``arrays``: A, C, S, YrA, max_proj,
    mean_proj as computed numpy arrays, units in minian's order)."""
    import numpy as np
    import scipy.sparse

    a = np.asarray(arrays["A"], np.float32)
    k, height, width = a.shape
    frames = int(np.shape(arrays["C"])[1])
    write_layout(
        out / LAYOUT,
        a=scipy.sparse.csc_matrix(a.reshape(k, height * width).T),
        dims=(height, width),
        traces={"C_raw": arrays["YrA"], "C": arrays["C"], "S": arrays["S"]},
        bounds=[0, frames],
        session_ids=[session],
        fs=rate,
        images=[("max", arrays["max_proj"]), ("mean", arrays["mean_proj"])],
        extra={"tool": "minian", "trace_units": "minian's: C_raw = YrA (C plus residual), C, S"},
    )
    return {"neurons": k, "folder": LAYOUT}


def _write_nwb(path: Path, arrays: dict[str, Any], rate: float) -> None:
    """Footprints, traces, activity, maximum projection and motion as NWB (ophys processing module)."""
    import datetime

    import numpy as np
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.base import Images, TimeSeries
    from pynwb.image import GrayscaleImage
    from pynwb.ophys import Fluorescence, ImageSegmentation, OpticalChannel, RoiResponseSeries

    A = arrays["A"]
    nwb = NWBFile(
        session_description="minian 2.0.2 pipeline (CNMF-E) results",
        identifier="minian-" + path.parent.name,
        session_start_time=datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC),
    )
    device = nwb.create_device(name="Miniscope")
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=OpticalChannel(name="green", description="calcium indicator", emission_lambda=float("nan")),
        description="one-photon field of view",
        device=device,
        excitation_lambda=float("nan"),
        indicator="unknown",
        location="unknown",
        imaging_rate=rate,
    )
    ophys = nwb.create_processing_module(name="ophys", description="minian results")
    segmentation = ImageSegmentation()
    ophys.add(segmentation)
    planes = segmentation.create_plane_segmentation(
        name="PlaneSegmentation", description="minian spatial footprints (A)", imaging_plane=plane
    )
    for footprint in A:
        planes.add_roi(image_mask=np.asarray(footprint, dtype=np.float32))
    if len(A):
        rois = planes.create_roi_table_region(region=list(range(len(A))), description="every unit")
        fluorescence = Fluorescence(name="Fluorescence")
        ophys.add(fluorescence)  # before its series, so their ROI region shares an ancestor with the table
        for name, key, what in (("C", "C", "denoised calcium traces"), ("S", "S", "deconvolved activity")):
            fluorescence.add_roi_response_series(
                RoiResponseSeries(
                    name=name,
                    data=np.asarray(arrays[key], dtype=np.float32).T,
                    rois=rois,
                    unit="a.u.",
                    rate=rate,
                    description=what,
                )
            )
    ophys.add(
        Images(
            name="summary_images",
            images=[GrayscaleImage(name="max_proj", data=np.asarray(arrays["max_proj"], dtype=np.float32))],
            description="maximum projection of the motion-corrected movie",
        )
    )
    ophys.add(
        TimeSeries(
            name="motion",
            data=np.asarray(arrays["motion"], dtype=np.float32),
            unit="pixels",
            rate=rate,
            description="minian's estimated shifts per frame (height, width)",
        )
    )
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)


def _qc(folder: Path, arrays: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    A, C = arrays["A"], arrays["C"]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.imshow(arrays["max_proj"], cmap="gray")
    for footprint in A:
        if np.ptp(footprint) > 0:
            ax.contour(footprint, levels=[0.3 * float(footprint.max())], colors="lime", linewidths=0.7)
    ax.set_title(f"maximum projection and {len(A)} footprints")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(folder / "footprints.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    for offset, trace in enumerate(C[:10]):
        span = float(np.ptp(trace)) or 1.0
        ax.plot((trace - trace.min()) / span + offset, linewidth=0.8)
    ax.set_xlabel("frame")
    ax.set_ylabel("unit (normalised C)")
    ax.set_title(f"denoised traces of the first {min(10, len(C))} units")
    fig.tight_layout()
    fig.savefig(folder / "traces.png", dpi=80)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3))
    motion = np.asarray(arrays["motion"])
    for column, label in enumerate(("height", "width")[: motion.shape[1]]):
        ax.plot(motion[:, column], label=label)
    ax.set_xlabel("frame")
    ax.set_ylabel("shift (pixels)")
    ax.legend()
    ax.set_title("estimated motion")
    fig.tight_layout()
    fig.savefig(folder / "motion.png", dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["curate"]:
        curate_main(argv[1:], tool="minian", merge=MERGE)
        return
    parser = argparse.ArgumentParser(prog="run_minian", description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", type=Path, help="a folder of videos, or one video file")
    parser.add_argument("--config", type=Path, help="JSON config: one section per pipeline step")
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
    folder = args.input
    if args.input.is_file():  # load_videos reads a folder: show it one holding only this file
        folder = Path(tempfile.mkdtemp(prefix="minian-input-", dir=os.environ.get("TMPDIR")))
        (folder / args.input.name).symlink_to(args.input.resolve())
    pattern = config.get("load_videos", {}).get("pattern") or notebook_parameters()[0]["load_videos"]["pattern"]
    names = [p.name for p in folder.iterdir() if re.search(pattern, p.name)]
    if not names:
        _fail(
            f"no video in {args.input} matches load_videos.pattern {pattern!r}; "
            "set load_videos.pattern in the config (e.g. '.*\\.avi$' or '.*\\.tif$')"
        )
    summary = pipeline(folder, args.out, config, session=args.input.stem if args.input.is_file() else args.input.name)
    summary = {"tool": "minian", "version": metadata.version("minian"), "nwb": "minian.nwb", **summary}
    summary["run"] = {"seconds": summary.pop("seconds")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    _progress(1.0, "done")


if __name__ == "__main__":
    main()
