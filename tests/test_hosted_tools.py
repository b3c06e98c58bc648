"""suite2p and minian, hosted unchanged from PyPI, run through the platform on real recordings.

Each job is the real `ncaas submit TOOL DATASET --config CFG --wait`: the tool's environment is
built (once, then reused) from its blueprint's lock in the environment cache (``$NCAAS_ENVS``,
else ``~/.cache/ncaas/envs``, shared with the other platform tests) and the tool runs in its
sandbox. Data: ../shared/data beside the repository (skipped, saying so, when absent):

* suite2p on ``sima_example/example.tif`` (a real two-photon movie, 20 frames of 128 x 256);
* minian on a crop of ``minian_demo/minian_demo.mp4``'s raw quadrant: 200 frames of
  80 x 100 pixels, read with caliali's reader and written as a TIFF stack.

Each returns its native outputs, an NWB file that pynwb reads back, QC pictures, and its neurons
in ncaas's "neurons" layout (``neurons/``), which the entry's ``curate`` subcommand curates from a
review's decisions; each blueprint's config schema is the one its entry derives from the tool in
that environment.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ncaas_testutil import REPO, ncaas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]

REAL_DATA = REPO.parent / "shared" / "data"
SIMA = REAL_DATA / "sima_example" / "example.tif"
MINIAN_DEMO = REAL_DATA / "minian_demo" / "minian_demo.mp4"
GROUP = "lab"
JOB_TIMEOUT = 2400  # a cold environment build (several GB for suite2p) plus the run, on a loaded machine
# suite2p on 20 frames of 128 x 256: non-rigid blocks that fit the frame, detection for a short movie.
SUITE2P_CONFIG = {
    "torch_device": "cpu",
    "registration": {"block_size": [64, 64]},
    "detection": {"highpass_time": 10, "threshold_scaling": 0.5},
}
MINIAN_CONFIG = {"load_videos": {"pattern": r".*\.tif$"}, "cluster": {"n_workers": 1, "memory_limit": "2GB"}}
MINIAN_CROP = (60, 140, 140, 240)  # rows, then columns, of the raw quadrant: a field with cells
MINIAN_FRAMES = 200


class Job:
    """A finished job of one dataset: its outputs, status, certificate and log."""

    def __init__(self, root: Path, dataset: str, run: subprocess.CompletedProcess[str]) -> None:
        ends = list((root / GROUP / "results").glob("*/end.json"))
        assert len(ends) == 1, f"expected one finished job under {root}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        self.results = ends[0].parent
        self.outputs = self.results / "outputs" / dataset
        self.end = json.loads(ends[0].read_text())
        self.status = json.loads((self.results / "status" / f"{dataset}.json").read_text())
        self.certificate = json.loads((self.results / "certificate.json").read_text())
        self.log = (self.results / "logs" / f"{dataset}.log").read_text()
        assert run.returncode == 0 and self.end["state"] == "succeeded", (
            f"{self.end}\n{self.status}\n--- log tail ---\n{self.log[-4000:]}\n{run.stderr[-2000:]}"
        )


def _submit(tmp: Path, tool: str, dataset: Path, config: dict[str, Any]) -> Job:
    cfg = tmp / f"{tool}-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    root = tmp / "root"
    run = ncaas(
        "submit", tool, str(dataset), "--config", str(cfg), "--group", GROUP, "--root", str(root), "--wait",
        timeout=JOB_TIMEOUT,
    )  # fmt: skip
    return Job(root, dataset.name, run)


def _certified_outputs(job: Job) -> set[str]:
    text = json.dumps(job.certificate)
    return {p.relative_to(job.outputs).as_posix() for p in job.outputs.rglob("*") if p.is_file() and p.name in text}


def _schema_in_step(job: Job, tool: str, tmp: Path) -> None:
    """The blueprint's config schema and defaults are what the entry derives from the tool, in its environment."""
    environment = job.certificate["environment"]
    lock = REPO / "analyses" / tool / "requirements.lock"
    assert environment["lock_hash"] == hashlib.sha256(lock.read_bytes()).hexdigest()
    # Outside the sandbox the environment is not mounted read-only, and a root test would write into it:
    # numba's caches and bytecode go to a scratch folder instead (the next job verifies the environment).
    scratch = {"NUMBA_CACHE_DIR": str(tmp / "numba"), "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(tmp / "mpl")}
    printed = subprocess.run(
        [environment["python"], "-m", f"run_{tool}", "--schema"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **scratch, "HOME": str(tmp)},
    )
    assert printed.returncode == 0, printed.stderr[-2000:]
    derived = json.loads(printed.stdout)
    blueprint = yaml.safe_load((REPO / "analyses" / tool / "blueprint.yaml").read_text())
    assert blueprint["config_schema"] == derived["config_schema"], f"regenerate {tool}'s schema: see its README section"
    assert blueprint["default_config"] == derived["default_config"]


def _tool(job: Job, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The tool's entry run by its environment's Python (outside the sandbox, as `_schema_in_step`)."""
    scratch = {"NUMBA_CACHE_DIR": str(tmp / "numba"), "PYTHONDONTWRITEBYTECODE": "1", "MPLCONFIGDIR": str(tmp / "mpl")}
    return subprocess.run(
        [job.certificate["environment"]["python"], *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **scratch, "HOME": str(tmp)},
    )


def _check_layout(outputs: Path, kinds: set[str]) -> dict[str, Any]:
    """The neurons layout of a result: shapes, meta.json and images as ncaas's review contract says."""
    import scipy.sparse

    folder = outputs / "neurons"
    meta = json.loads((folder / "meta.json").read_text())
    k, t, dims = meta["n_neurons"], meta["n_frames"], tuple(meta["dims"])
    a = scipy.sparse.load_npz(folder / "A.npz")
    assert a.shape == (dims[0] * dims[1], k) and a.dtype == np.float32 and a.format == "csc"
    for name in ("C_raw", "C", "S"):
        if (folder / f"{name}.npy").is_file():
            traces = np.load(folder / f"{name}.npy")
            assert traces.shape == (k, t) and traces.dtype == np.float32 and np.isfinite(traces).all(), name
    bounds = np.load(folder / "session_bounds.npy")
    assert bounds.dtype == np.int64 and bounds[0] == 0 and bounds[-1] == t
    assert len(meta["session_ids"]) == len(bounds) - 1 and meta["fs"] > 0
    assert len(meta["snr"]) == len(meta["centers"]) == k
    assert {image["kind"] for image in meta["images"]} == kinds
    for image in meta["images"]:
        pixels = np.load(folder / image["file"])
        assert pixels.dtype == np.float32 and pixels.shape == dims and image["session"] is None
    return meta


def _nearest_pair(meta: dict[str, Any]) -> list[int]:
    centers = np.asarray(meta["centers"])
    distance = ((centers[:, None] - centers[None]) ** 2).sum(axis=-1)
    np.fill_diagonal(distance, np.inf)
    return sorted(int(i) for i in np.unravel_index(np.argmin(distance), distance.shape))


def _check_curate(job: Job, tool: str, result: Path, meta: dict[str, Any], tmp: Path) -> None:
    """A review's decisions (accept one, reject one, merge the two nearest neurons) curated twice by the
    tool's ``curate``: the same bytes, the layout, curation.json, the merged footprint; and a bad file refused."""
    import scipy.sparse

    k = meta["n_neurons"]
    assert k >= 4, f"{tool}: {k} neurons are too few to review"
    pair = _nearest_pair(meta)
    rest = [i for i in range(k) if i not in pair]
    final = {"accepted": rest[:1], "rejected": rest[1:2], "merges": [pair]}
    decisions = tmp / "decisions.json"
    decisions.write_text(
        json.dumps(
            {"format": "ncaas-review/1", "job": "j", "dataset": "d", "certificate_sha256": "c" * 64,
             "n_neurons": k, "final": final, "log": []},
            sort_keys=True,
        )
    )  # fmt: skip
    outs = [tmp / f"curated-{n}" for n in (1, 2)]
    for out in outs:
        done = _tool(job, tmp, "-m", f"run_{tool}", "curate", "--result", str(result), "--decisions", str(decisions),
                     "--output", str(out))  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(outs[1]) for p in outs[1].rglob("*") if p.is_file())
    for name in files:
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), f"{name} differs between two curations"
    curated = _check_layout(outs[0], {image["kind"] for image in meta["images"]})
    assert curated["n_neurons"] == k - 2
    curation = json.loads((outs[0] / "curation.json").read_text())
    froms = {tuple(n["from"]): n for n in curation["neurons"]}
    assert froms[tuple(pair)]["status"] == "merged" and froms[(rest[0],)]["status"] == "accepted"
    assert (rest[1],) not in froms and [n["id"] for n in curation["neurons"]] == list(range(k - 2))
    assert [n["from"][0] for n in curation["neurons"]] == sorted(n["from"][0] for n in curation["neurons"])
    before = scipy.sparse.load_npz(result / "neurons" / "A.npz").tocsc()
    after = scipy.sparse.load_npz(outs[0] / "neurons" / "A.npz").tocsc()
    merged = after[:, [froms[tuple(pair)]["id"]]]
    union = set(before[:, pair].indices.tolist())
    assert merged.nnz > 0 and set(merged.indices.tolist()) <= union and (merged.data >= 0).all()
    raw = np.load(result / "neurons" / "C_raw.npy")
    kept = froms[(rest[0],)]["id"]
    assert np.array_equal(np.load(outs[0] / "neurons" / "C_raw.npy")[kept], raw[rest[0]])
    bad = tmp / "bad.json"
    bad.write_text(
        json.dumps({"format": "ncaas-review/1", "n_neurons": k, "final": {"rejected": [pair[0]], "merges": [pair]}})
    )
    refused = _tool(job, tmp, "-m", f"run_{tool}", "curate", "--result", str(result), "--decisions", str(bad),
                    "--output", str(tmp / "refused"))  # fmt: skip
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 3 and lines == [f"NCAAS_ERROR decisions: neuron {pair[0]} is rejected and in a merge"]
    assert not (tmp / "refused").exists()


def _read_nwb(path: Path) -> dict[str, Any]:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        ophys = nwb.processing["ophys"]
        planes = next(iter(ophys["ImageSegmentation"].plane_segmentations.values()))
        fluorescence = ophys["Fluorescence"]
        series = {name: np.asarray(s.data[:]) for name, s in fluorescence.roi_response_series.items()}
        return {"rois": len(planes), "series": series}


# suite2p's own NWB writer sets the Device's manufacturer, which newer pynwb reads with this warning.
@pytest.mark.filterwarnings("ignore:The 'manufacturer' field is deprecated:DeprecationWarning")
def test_suite2p_runs_on_a_real_two_photon_movie(tmp_path):
    if not SIMA.exists():
        pytest.skip(f"real recording {SIMA} is not on this machine (../shared/data beside the repository)")
    dataset = tmp_path / "example.tif"
    dataset.write_bytes(SIMA.read_bytes())
    job = _submit(tmp_path, "suite2p", dataset, SUITE2P_CONFIG)

    plane = job.outputs / "suite2p" / "plane0"
    for name in ("F.npy", "Fneu.npy", "spks.npy", "stat.npy", "iscell.npy", "ops.npy", "data.bin"):
        assert (plane / name).is_file(), f"suite2p wrote no {name}: {sorted(p.name for p in plane.iterdir())}"
    F, spks, iscell = np.load(plane / "F.npy"), np.load(plane / "spks.npy"), np.load(plane / "iscell.npy")
    assert F.ndim == 2 and F.shape[1] == 20 and F.shape[0] > 0 and spks.shape == F.shape and len(iscell) == len(F)
    assert np.isfinite(F).all()

    nwb = _read_nwb(job.outputs / "suite2p" / "ophys.nwb")  # suite2p's own NWB writer
    assert nwb["rois"] == len(F)
    assert any(data.shape == F.T.shape for data in nwb["series"].values()), {
        k: v.shape for k, v in nwb["series"].items()
    }

    for picture in ("images.png", "traces.png", "registration.png"):
        assert (job.outputs / "qc" / picture).stat().st_size > 5000
    summary = json.loads((job.outputs / "summary.json").read_text())
    assert summary["planes"]["plane0"]["rois"] == len(F) and summary["version"] == "1.1.0"
    assert {"suite2p/ophys.nwb", "suite2p/plane0/F.npy", "qc/images.png"} <= _certified_outputs(job)
    assert job.status["peak_memory_bytes"] > 0
    _schema_in_step(job, "suite2p", tmp_path)

    meta = _check_layout(job.outputs, {"mean", "max", "Cn"})
    assert meta["n_neurons"] == int(iscell[:, 0].sum()) and meta["dims"] == [128, 256]
    assert meta["session_ids"] == ["example"] and meta["n_frames"] == 20
    # 20 frames leave suite2p's classifier unsure of every ROI: relabel them as a user does in its GUI
    # (iscell.npy), the layout written again from them by the entry's own function
    edited = tmp_path / "edited"
    shutil.copytree(job.outputs, edited)
    plane0 = edited / "suite2p" / "plane0"
    np.save(plane0 / "iscell.npy", np.stack([(iscell[:, 1] >= np.sort(iscell[:, 1])[-8]), iscell[:, 1]], axis=1))
    shutil.rmtree(edited / "neurons")
    done = _tool(job, tmp_path, "-c", f"import run_suite2p, pathlib; run_suite2p.write_neurons("
                 f"pathlib.Path({str(plane0)!r}), pathlib.Path({str(edited)!r}))")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    meta = _check_layout(edited, {"mean", "max", "Cn"})
    assert meta["n_neurons"] >= 8
    _check_curate(job, "suite2p", edited, meta, tmp_path)


def test_minian_runs_on_a_crop_of_a_real_one_photon_movie(tmp_path):
    if not MINIAN_DEMO.exists():
        pytest.skip(f"real recording {MINIAN_DEMO} is not on this machine (../shared/data beside the repository)")
    if shutil.which("ffmpeg") is None:
        pytest.skip("minian's blueprint declares the Debian package ffmpeg, which is not installed (make system-deps)")
    import tifffile

    from caliali.io import open_video

    with open_video(MINIAN_DEMO, crop=MINIAN_CROP) as reader:
        movie = reader.read().astype(np.uint8)[:MINIAN_FRAMES]
    dataset = tmp_path / "session1"
    dataset.mkdir()
    tifffile.imwrite(dataset / "msCam1.tif", movie)
    job = _submit(tmp_path, "minian", dataset, MINIAN_CONFIG)

    native = job.outputs / "minian"
    for name in ("A", "C", "S", "b", "f", "b0", "c0", "motion", "max_proj"):
        assert (native / f"{name}.zarr").is_dir(), f"minian saved no {name}: {sorted(p.name for p in native.iterdir())}"
    summary = json.loads((job.outputs / "summary.json").read_text())
    assert summary["frames"] == MINIAN_FRAMES and summary["units"] > 0 and summary["version"] == "2.0.2"

    nwb = _read_nwb(job.outputs / "minian.nwb")
    assert nwb["rois"] == summary["units"]
    assert nwb["series"]["C"].shape == (MINIAN_FRAMES, summary["units"]) == nwb["series"]["S"].shape
    assert np.isfinite(nwb["series"]["C"]).all() and nwb["series"]["C"].max() > 0

    for picture in ("footprints.png", "traces.png", "motion.png"):
        assert (job.outputs / "qc" / picture).stat().st_size > 5000
    assert {"minian.nwb", "qc/footprints.png", "summary.json"} <= _certified_outputs(job)
    _schema_in_step(job, "minian", tmp_path)

    meta = _check_layout(job.outputs, {"max", "mean"})
    assert meta["n_neurons"] == summary["units"] and meta["session_ids"] == ["session1"]
    assert np.allclose(np.load(job.outputs / "neurons" / "C.npy"), nwb["series"]["C"].T, rtol=1e-5, atol=1e-6)
    _check_curate(job, "minian", job.outputs, meta, tmp_path)


def test_a_mistyped_tool_option_is_refused_before_anything_runs(tmp_path):
    """The schema is the tool's own table: a misspelt suite2p option is named, with what is allowed."""
    dataset = tmp_path / "movie.tif"
    dataset.write_bytes(b"not read: the config is refused first")
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"detection": {"threshhold_scaling": 0.5}}))
    done = ncaas(
        "submit", "suite2p", str(dataset), "--config", str(cfg), "--group", GROUP, "--root", str(tmp_path / "root"),
    )  # fmt: skip
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode != 0 and "threshhold_scaling" in said and "Traceback" not in said, said
