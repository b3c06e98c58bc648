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
* ``summary.json``: frames, units, run time.

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


def pipeline(folder: Path, out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The notebook's calls, in its order, with its save points (intermediates in scratch)."""
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
    from minian.utilities import TaskAnnotation, get_optimal_chk, save_minian

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
    cluster.scheduler.add_plugin(TaskAnnotation())
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
    _write_nwb(out / "minian.nwb", arrays, rate)
    _qc(out / "qc", arrays)
    shutil.rmtree(scratch, ignore_errors=True)
    return {"frames": frames, "units": int(arrays["A"].shape[0]), "seconds": round(time.time() - started, 3)}


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
    summary = pipeline(folder, args.out, config)
    summary = {"tool": "minian", "version": metadata.version("minian"), "nwb": "minian.nwb", **summary}
    summary["run"] = {"seconds": summary.pop("seconds")}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    _progress(1.0, "done")


if __name__ == "__main__":
    main()
