"""caliali through ncaas, end to end: the real `ncaas submit caliali ... --wait` command.

Each job builds (once, then reuses) caliali's immutable environment from its lock
in the environment cache (``$NCAAS_ENVS``, else ``~/.cache/ncaas/envs``, shared
with `make demo` and the other platform tests) and runs the analysis in its
sandbox. Two experiments go through it:

* a small simulated two-session experiment, one session arriving as ``_b<k>``
  sub-files without a manifest: the job must succeed, find the simulated
  neurons (F1 >= 0.8 by ``caliali score``) and return every output readable,
  listed with its sha256 in the certificate;
* the real one-photon recording in ../shared/data/minian_demo (its raw
  top-left quadrant), skipped when that folder is absent: neurons are found
  and every output is present and readable.

A wrong caliali config is refused by the platform before anything runs; a zero-byte
recording fails with caliali's one-line reason as the task's cause.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from ncaas_testutil import REPO, ncaas

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REAL_MOVIE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "minian_demo" / "minian_demo.mp4"
LOCK = REPO / "analyses" / "caliali" / "requirements.lock"
GROUP = "lab"
# A cold environment build plus a run on a loaded 2-core machine.
JOB_TIMEOUT = 3000
# These tests are of the platform (isolation, certificates, reruns): caliali's runs are made quick (no seeds
# in the residual, the real recording at half resolution); analyses/caliali/tests test its defaults.
SMALL = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "256MB", "residual_seeds": False}
REAL = {
    "gSig": 6,
    "spatial_ds": 2,
    "fs": 25,
    "min_corr": 0.5,
    "min_pnr": 6,
    "memory_budget": "256MB",
    "residual_seeds": False,
}
# Files every multi-session run returns (relative to the dataset's outputs folder).
OUTPUTS = [
    "summary.json",
    "neurons.nwb",
    "qc/contours.png",
    "qc/traces.png",
    "arrays/A.npz",
    "arrays/C.npy",
    "arrays/C_raw.npy",
    "arrays/S.npy",
    "arrays/Cn.npy",
    "arrays/PNR.npy",
    "arrays/session_bounds.npy",
    "arrays/meta.json",
    "arrays/valid_mask.npy",
    "caiman.hdf5",
]
ALIGNMENT = [
    "alignment/fields.npy",
    "alignment/valid_mask.npy",
    "alignment/translations.npy",
    "alignment/projections.npy",
    "alignment/alignment.json",
]


def _caliali(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "caliali", *args], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"caliali {' '.join(args)}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class Job:
    """A finished job: its results folder and the outputs of its one dataset."""

    def __init__(self, root: Path, dataset: str, run: subprocess.CompletedProcess[str]) -> None:
        ends = list((root / GROUP / "results").glob("*/end.json"))
        assert len(ends) == 1, f"expected one finished job under {root}:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
        self.run = run
        self.results = ends[0].parent
        self.outputs = self.results / "outputs" / dataset
        self.end = json.loads(ends[0].read_text())
        self.status = json.loads((self.results / "status" / f"{dataset}.json").read_text())
        self.certificate = json.loads((self.results / "certificate.json").read_text())
        self.log = (self.results / "logs" / f"{dataset}.log").read_text()

    def explain(self) -> str:
        return f"{self.end}\n{self.status}\n--- log tail ---\n{self.log[-3000:]}\n{self.run.stderr[-2000:]}"


def _submit(root: Path, dataset: Path, config: dict[str, Any]) -> Job:
    """`ncaas submit caliali DATASET --config CFG --wait`, as a scientist runs it."""
    cfg = root.parent / f"{dataset.name}-config.yaml"
    cfg.write_text(yaml.safe_dump(config))
    run = ncaas(
        "submit",
        "caliali",
        str(dataset),
        "--config",
        str(cfg),
        "--group",
        GROUP,
        "--root",
        str(root),
        "--wait",
        timeout=JOB_TIMEOUT,
    )
    job = Job(root, dataset.name, run)
    assert run.returncode == 0 and job.end["state"] == "succeeded", job.explain()
    return job


def _read(path: Path) -> Any:
    """Open an output file the way a user would; fails if it is not what its name says."""
    suffix = path.suffix
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    if suffix == ".json":
        return json.loads(path.read_text())
    if suffix == ".csv":
        return np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if suffix == ".png":
        import matplotlib.image

        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50 and np.ptp(image) > 0, path
        return image
    if suffix == ".nwb":
        from pynwb import NWBHDF5IO

        with NWBHDF5IO(str(path), "r") as io:
            nwb = io.read()
            ophys = nwb.processing["ophys"]
            [segmentation] = ophys["ImageSegmentation"].plane_segmentations.values()
            return {"rois": len(segmentation.id), "series": sorted(ophys.data_interfaces)}
    if suffix == ".hdf5":  # CaImAn's layout: estimates/A as a sparse matrix, the traces beside it
        import h5py

        with h5py.File(path, "r") as f:
            return {
                "dims": f["estimates/dims"][()].tolist(),
                "A_shape": f["estimates/A/shape"][()].tolist(),
                "C_shape": list(f["estimates/C"].shape),
            }
    raise AssertionError(f"unexpected output file {path}")


def _check_outputs(job: Job, *, sessions: list[str], frames: int, alignment: bool) -> dict[str, Any]:
    """Every expected output exists, every output file opens, arrays agree with each other."""
    expected = OUTPUTS + (ALIGNMENT if alignment else [])
    expected += [f"qc/sessions/session_{s}_qc.png" for s in sessions]
    missing = [rel for rel in expected if not (job.outputs / rel).is_file()]
    assert not missing, f"missing outputs {missing} in {job.outputs}"
    assert not (job.outputs / "work").exists(), "intermediates left behind after a successful run"
    read = {p.relative_to(job.outputs).as_posix(): _read(p) for p in sorted(job.outputs.rglob("*")) if p.is_file()}
    import scipy.sparse

    a = scipy.sparse.load_npz(job.outputs / "arrays" / "A.npz")
    meta, k = read["arrays/meta.json"], a.shape[1]
    h, w = meta["dims"]
    assert a.shape == (h * w, k) and k >= 1
    for name in ("C", "C_raw", "S"):
        trace = read[f"arrays/{name}.npy"]
        assert trace.shape == (k, frames) and np.isfinite(trace).all(), name
    assert read["arrays/Cn.npy"].shape == read["arrays/PNR.npy"].shape == (h, w)
    assert read["arrays/session_bounds.npy"][[0, -1]].tolist() == [0, frames]
    assert len(read["arrays/session_bounds.npy"]) == len(sessions) + 1
    assert read["neurons.nwb"]["rois"] == k
    assert read["caiman.hdf5"] == {"dims": [h, w], "A_shape": [h * w, k], "C_shape": [k, frames]}
    summary = read["summary.json"]
    assert summary["sessions"] == sessions and summary["neurons"] == k
    if alignment:
        assert read["alignment/fields.npy"].shape == (len(sessions), 2, h, w)
        assert read["alignment/valid_mask.npy"].shape == (h, w) and read["alignment/valid_mask.npy"].any()
    return read


def _check_certificate(job: Job) -> None:
    """The certificate lists every output with its sha256, and the environment it ran in."""
    cert = job.certificate
    assert cert["job"]["state"] == "succeeded" and cert["blueprint"]["name"] == "caliali"
    env = cert["environment"]
    assert env["lock_hash"] == _sha256(LOCK)
    assert len(env["manifest_hash"]) == 64 and len(env["env_hash"]) == 64
    [task] = cert["tasks"]
    assert task["state"] == "succeeded" and task["exit_code"] == 0
    assert task["argv"][0] == str(Path(env["path"]) / "bin" / "python")
    listed = {o["path"]: o["sha256"] for o in task["outputs"]}
    on_disk = {p.relative_to(job.outputs).as_posix(): _sha256(p) for p in job.outputs.rglob("*") if p.is_file()}
    assert listed == on_disk
    assert task["input"]["kind"] == "folder" and len(task["input"]["sha256"]) == 64
    if os.environ.get("NCAAS_SANDBOX", "") != "off":
        assert cert["isolation"].startswith("bubblewrap"), cert["isolation"]
    text = (job.results / "certificate.txt").read_text()
    assert env["lock_hash"] in text and listed["neurons.nwb"] in text


# -- a simulated experiment -------------------------------------------------------------


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> tuple[Path, Path]:
    """Two sessions of 400 frames, 120x160, 25 neurons; session 1 as ses01_b1/_b2 without a manifest."""
    base = tmp_path_factory.mktemp("caliali-sim")
    _caliali(
        "simulate",
        str(base / "sim"),
        "--sessions",
        "2",
        "--frames",
        "400",
        "--neurons",
        "25",
        "--seed",
        "3",
        "--height",
        "120",
        "--width",
        "160",
    )
    _caliali("split", str(base / "sim" / "ses01.tif"), "--max-frames", "250", "--out", str(base / "pieces"))
    experiment = base / "experiment"
    experiment.mkdir()
    for piece in sorted((base / "pieces").glob("ses01_b*.tif")):
        piece.rename(experiment / piece.name)
    (base / "sim" / "ses02.tif").rename(experiment / "ses02.tif")
    assert sorted(p.name for p in experiment.iterdir()) == ["ses01_b1.tif", "ses01_b2.tif", "ses02.tif"]
    return experiment, base / "sim" / "ground_truth"


@pytest.fixture(scope="module")
def simulated_job(simulated, tmp_path_factory) -> Job:
    experiment, _ = simulated
    return _submit(tmp_path_factory.mktemp("caliali-root") / "root", experiment, SMALL)


def test_a_simulated_experiment_runs_through_the_platform_and_finds_its_neurons(simulated_job, simulated):
    job = simulated_job
    _, truth = simulated
    assert job.status["state"] == "succeeded" and job.status["progress"] == 1.0
    assert job.status["peak_memory_bytes"] > 0 and job.status["cpu_seconds"] > 0
    progress = [line for line in job.log.splitlines() if line.startswith("NCAAS_PROGRESS")]
    for stage in ("motion", "projections", "alignment", "apply", "extraction"):
        assert any(f" {stage}:" in line for line in progress), f"no progress from stage {stage}"
    scores = truth.parent.parent / "score.json"  # outside the platform's storage
    _caliali("score", str(job.outputs), str(truth), "--json", str(scores))
    neurons = json.loads(scores.read_text())["neurons"]
    assert neurons["f1"] >= 0.8, neurons


def test_a_simulated_experiment_returns_every_output_readable(simulated_job):
    read = _check_outputs(simulated_job, sessions=["ses01", "ses02"], frames=800, alignment=True)
    # The two sub-files of ses01 are one session: 400 + 400 frames, one alignment field each.
    assert read["arrays/session_bounds.npy"].tolist() == [0, 400, 800]
    assert read["summary.json"]["session_frames"] == [400, 400]
    assert read["neurons.nwb"]["series"]  # traces and footprints under processing/ophys


def test_the_certificate_lists_every_output_and_the_environment(simulated_job):
    _check_certificate(simulated_job)


def test_the_nwb_identifier_derives_from_the_certificates_hashes(simulated_job, simulated):
    """caliali names its NWB file by the content hashes the platform gave it, which are the ones the
    certificate records; run alone, caliali hashes the same dataset and config to the same values."""
    from pynwb import NWBHDF5IO

    cert = simulated_job.certificate
    [task] = cert["tasks"]
    hashes = {
        "blueprint": cert["blueprint"]["sha256"],
        "config": cert["config"]["sha256"],
        "input": task["input"]["sha256"],
        "lock": cert["environment"]["lock_hash"],
    }
    rule = "".join(f"{name}={value}\n" for name, value in sorted(hashes.items()))
    expected = "caliali-" + hashlib.sha256(rule.encode()).hexdigest()
    with NWBHDF5IO(str(simulated_job.outputs / "neurons.nwb"), "r") as io:
        assert io.read().identifier == expected
    summary = json.loads((simulated_job.outputs / "summary.json").read_text())["nwb"]
    assert summary["identifier"] == expected and summary["from"] == hashes and summary["hashes_by"] == "ncaas"
    assert summary["session_start_time_from"] == "default"  # simulated TIFFs say no time; the config neither
    experiment, _ = simulated
    config = simulated_job.results.parent.parent.parent.parent / f"{experiment.name}-config.yaml"
    alone = subprocess.run(
        [
            sys.executable,
            "-c",
            "import json, sys; from caliali.config import config_mapping; "
            "from caliali.provenance import config_sha256, input_sha256; "
            "print(json.dumps([input_sha256(sys.argv[1]), config_sha256(config_mapping(sys.argv[2]))]))",
            str(experiment),
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(alone.stdout) == [hashes["input"], hashes["config"]]


def test_a_wrong_config_is_refused_before_anything_runs_naming_the_field(simulated, tmp_path):
    experiment, _ = simulated
    root = tmp_path / "root"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SMALL, "spatial_ds": 0, "gsig": 3}))
    run = ncaas(
        "submit", "caliali", str(experiment), "--config", str(bad), "--group", GROUP, "--root", str(root), "--wait"
    )
    said = " ".join(run.stderr.split())
    assert run.returncode == 2, run.stdout + run.stderr
    assert "submission rejected" in said and "Traceback" not in said
    assert "config field 'spatial_ds': 0 is less than the minimum of 1" in said
    assert "config field 'gsig': unknown option" in said and "gSig" in said
    [results] = (root / GROUP / "results").iterdir()
    assert sorted(p.name for p in results.iterdir()) == ["end.json", "error.txt"]  # no outputs, no logs
    assert json.loads((results / "end.json").read_text())["state"] == "rejected"
    assert not (root / ".ncaas" / "runs").exists()  # no task was ever started


def test_a_zero_byte_recording_fails_with_one_line_naming_it(tmp_path):
    """caliali tells the platform why it failed (NCAAS_ERROR_FILE): the task's cause says it."""
    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    root = tmp_path / "root"
    run = ncaas("submit", "caliali", str(empty), "--group", GROUP, "--root", str(root), "--wait", timeout=JOB_TIMEOUT)
    assert run.returncode != 0 and "Traceback" not in run.stdout + run.stderr
    [results] = (root / GROUP / "results").iterdir()
    status = json.loads((results / "status" / "empty.tif.json").read_text())
    inside = root / GROUP / "inputs" / "empty.tif"
    reason = f"{inside}: input empty.tif is empty (0 bytes); upload it again"
    assert (status["reason"], status["cause"]) == (reason, f"exited with code 2: {reason}")
    shown = " ".join(ncaas("status", results.name, "--root", str(root)).stdout.split())
    assert f"empty.tif: exited with code 2: {reason}" in shown


# -- the real recording -----------------------------------------------------------------


@contextlib.contextmanager
def _busy_cpu():
    """A busy-loop process beside the work: the machine is loaded while it runs."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait()


@pytest.fixture(scope="module")
def real_job(tmp_path_factory) -> tuple[Path, Job]:
    """minian's demo movie is a 2x2 montage; its top-left quadrant is the raw one-photon recording.

    Submitted with a busy-loop process running beside it.
    """
    if not REAL_MOVIE.exists():
        pytest.skip(f"real recording {REAL_MOVIE} is not on this machine")
    import cv2
    import tifffile

    capture = cv2.VideoCapture(str(REAL_MOVIE))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame[:240, :376], cv2.COLOR_BGR2GRAY))
    capture.release()
    assert len(frames) == 500
    base = tmp_path_factory.mktemp("real")
    dataset = base / "minian"
    dataset.mkdir()
    tifffile.imwrite(dataset / "session1.tif", np.stack(frames))
    with _busy_cpu():
        job = _submit(base / "root", dataset, REAL)
    return base / "root", job


def test_a_real_miniscope_recording_runs_through_the_platform(real_job):
    _, job = real_job
    read = _check_outputs(job, sessions=["session1"], frames=500, alignment=False)
    assert read["arrays/meta.json"]["dims"] == [120, 188]  # spatial_ds 2
    assert read["summary.json"]["neurons"] >= 3, "no neurons found in the real recording"
    _check_certificate(job)


def _rerun(root: Path, job: Job) -> subprocess.CompletedProcess[str]:
    return ncaas("rerun", job.certificate["job"]["id"], "--root", str(root), timeout=JOB_TIMEOUT)


def _verdicts(run: subprocess.CompletedProcess[str], job: Job) -> None:
    """Every output file is reported identical, in the table and the summary line."""
    n = len(job.certificate["tasks"][0]["outputs"])
    said = " ".join(run.stdout.split())
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"{n} identical, 0 equal within tolerance, 0 different" in said, run.stdout[-3000:]


def test_a_real_recording_reruns_identically_under_cpu_load(real_job):
    """Same input, config and environment, a busy machine both times: every output byte for byte."""
    root, job = real_job
    with _busy_cpu():
        run = _rerun(root, job)
    _verdicts(run, job)


def test_a_rerun_after_the_environment_is_rebuilt_from_the_same_lock_is_identical(real_job):
    root, job = real_job
    env = Path(job.certificate["environment"]["path"])
    manifest = env.parent / f"{env.name}.json"
    built_before = json.loads(manifest.read_text())["built_at"]
    rebuilt = ncaas("env", "build", "caliali", "--force", timeout=JOB_TIMEOUT)
    assert rebuilt.returncode == 0, rebuilt.stdout[-3000:] + rebuilt.stderr[-3000:]
    assert json.loads(manifest.read_text())["built_at"] > built_before, "the environment was not rebuilt"
    _verdicts(_rerun(root, job), job)


def test_a_changed_config_is_reported_with_the_numbers_that_differ(real_job, tmp_path):
    """The same recording with a stricter seed threshold: `ncaas compare` says how many neurons each found."""
    root, job = real_job
    cfg = tmp_path / "stricter.yaml"
    cfg.write_text(yaml.safe_dump({**REAL, "min_pnr": 10}))
    dataset = Path(job.certificate["tasks"][0]["input"]["path"]).name
    before = set((root / GROUP / "results").iterdir())
    run = ncaas(
        "submit", "caliali", str(root.parent / dataset), "--config", str(cfg), "--group", GROUP, "--root",
        str(root), "--wait", timeout=JOB_TIMEOUT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    [results] = set((root / GROUP / "results").iterdir()) - before
    changed = json.loads((results / "certificate.json").read_text())
    compared = ncaas("compare", job.certificate["job"]["id"], changed["job"]["id"], "--root", str(root), timeout=600)
    said = " ".join(compared.stdout.split())
    assert compared.returncode == 1, compared.stdout[-3000:] + compared.stderr[-3000:]
    mine = json.loads((job.outputs / "summary.json").read_text())["neurons"]
    theirs = json.loads((results / "outputs" / dataset / "summary.json").read_text())["neurons"]
    assert mine != theirs
    assert f"neurons: {mine} vs {theirs}" in said, compared.stdout[-3000:]
