"""`caliali run`: the whole pipeline on simulated and real experiments, its config, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from caliali.config import CalialiConfig, ConfigError, config_schema, default_config, load_config
from caliali.score import score
from caliali.simulate import SimulationParams, simulate

BLUEPRINT = Path(__file__).resolve().parents[1] / "blueprint.yaml"
SMALL = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "256MB"}


def _caliali(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caliali", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    """Two sessions of 400 frames, the first cut into two pieces (one session id)."""
    out = tmp_path_factory.mktemp("exp") / "sim"
    simulate(
        out,
        SimulationParams(sessions=2, frames=400, neurons=25, seed=3, height=120, width=160, max_frames_per_file=None),
    )
    # Cut session 1 by hand the way `caliali split` does: pieces named <name>_b<k>.
    r = _caliali("split", str(out / "ses01.tif"), "--max-frames", "250", "--out", str(out / "pieces"))
    assert r.returncode == 0, r.stderr
    exp = out.parent / "experiment"
    exp.mkdir()
    for p in sorted((out / "pieces").glob("*.tif")):
        p.rename(exp / p.name)
    (out / "ses02.tif").rename(exp / "ses02.tif")
    return exp


@pytest.fixture(scope="module")
def result(experiment, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cfg = tmp_path_factory.mktemp("cfg") / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = tmp_path_factory.mktemp("run") / "out"
    r = _caliali("run", "--input", str(experiment), "--config", str(cfg), "--output", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, r


def test_blueprint_schema_is_generated_from_the_config_model():
    blueprint = yaml.safe_load(BLUEPRINT.read_text())
    assert blueprint["config_schema"] == config_schema()
    assert blueprint["default_config"] == default_config()
    assert set(blueprint["default_config"]) == set(blueprint["config_schema"]["properties"])


def test_every_parameter_is_described():
    for name, prop in config_schema()["properties"].items():
        assert len(prop.get("description", "")) > 15, name


def test_unknown_key_is_refused_naming_the_known_ones():
    with pytest.raises(ConfigError, match=r"gsig: unknown parameter; known parameters are: .*gSig"):
        load_config({"gsig": 3})


def test_out_of_range_value_names_the_field():
    with pytest.raises(
        ConfigError,
        match=r"min_pnr: must be a number greater than or equal to 0 and at most 100, or .auto. \(got -1\)$",
    ):
        load_config({"min_pnr": -1})


def test_bad_memory_budget_names_the_field():
    with pytest.raises(ConfigError, match="memory_budget"):
        load_config({"memory_budget": "lots"})


def test_cli_refuses_a_wrong_config_before_running(tmp_path, experiment):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("spatial_ds: 0\n")
    r = _caliali("run", "--input", str(experiment), "--config", str(cfg), "--output", str(tmp_path / "o"))
    assert r.returncode == 2
    assert "spatial_ds" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_cli_takes_the_config_as_json_text(tmp_path, experiment):
    r = _caliali("run", "--input", str(experiment), "--config", '{"spatial_ds": 0}', "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "spatial_ds" in r.stderr and "Traceback" not in r.stderr
    r = _caliali("run", "--input", str(experiment), "--config", '{"gSig": 3, ', "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a valid JSON or YAML mapping" in r.stderr and "Traceback" not in r.stderr
    assert load_config('{"gSig": 3, "min_pnr": 5}').min_pnr == 5


def test_cli_names_a_missing_input(tmp_path):
    r = _caliali("run", "--input", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"))
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "nothing" in r.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (root only): a disk that fills up during a run; unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_named_as_such_and_the_run_resumes_once_there_is_room(tmp_path, experiment, small_disk):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out, told = small_disk / "out", tmp_path / "reason.txt"
    cmd = ["run", "--input", str(experiment), "--config", str(cfg), "--output", str(out)]
    r = _caliali(*cmd, env={**os.environ, "NCAAS_ERROR_FILE": str(told)})
    assert r.returncode == 1 and "Traceback" not in r.stderr and "bug in caliali" not in r.stderr
    reason = told.read_text()
    # the file it was writing when the file system says so, else the run's output folder
    assert reason.startswith("no space left on the disk writing ") and str(out) in reason.splitlines()[0], reason
    assert "give --output and --work folders on a disk with room, and run again" in reason
    assert " ".join(r.stderr.split()).startswith("error: no space left on the disk writing")
    subprocess.run(["mount", "-o", "remount,size=400m", str(small_disk)], check=True)
    again = _caliali(*cmd)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (out / "arrays" / "A.npz").is_file()


def test_a_work_folder_holding_the_users_files_is_refused_and_left_as_it_was(tmp_path, experiment):
    # caliali clears its work folder: pointed at a folder of the user's, it would have deleted its files
    work = tmp_path / "data"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    r = _caliali("run", "--input", str(experiment), "--output", str(tmp_path / "out"), "--work", str(work))
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert "already holds files caliali did not write (notes.txt)" in r.stderr and "Traceback" not in r.stderr
    assert (work / "notes.txt").read_text() == "mine"


def test_an_output_or_input_inside_the_work_folder_is_refused(tmp_path, experiment):
    # the work folder is deleted when the run ends: the results written inside it would go with it
    work = tmp_path / "scratch"
    r = _caliali("run", "--input", str(experiment), "--output", str(work / "out"), "--work", str(work))
    assert r.returncode == 2 and "--output" in r.stderr and "lies inside the work folder" in r.stderr, r.stderr
    r = _caliali("run", "--input", str(experiment), "--output", str(tmp_path / "out"), "--work", str(experiment.parent))
    assert r.returncode == 2 and "--input" in r.stderr and "lies inside the work folder" in r.stderr, r.stderr
    assert any(experiment.iterdir())


def test_defaults_are_the_methods():
    c = CalialiConfig()
    assert (c.gSig, c.min_corr, c.min_pnr, c.merge_thr, c.max_shift, c.bg_ssub) == ("auto", 0.1, "auto", 0.65, 20, 2)


def test_run_finds_the_neurons_and_writes_every_output(result, experiment):
    out, run = result
    for rel in [
        "arrays/A.npz",
        "arrays/C.npy",
        "arrays/C_raw.npy",
        "arrays/S.npy",
        "arrays/Cn.npy",
        "arrays/PNR.npy",
        "arrays/session_bounds.npy",
        "arrays/meta.json",
        "neurons.nwb",
        "alignment/fields.npy",
        "alignment/valid_mask.npy",
        "alignment/alignment.json",
        "qc/contours.png",
        "qc/traces.png",
        "summary.json",
    ]:
        assert (out / rel).is_file(), rel
    assert sorted(p.name for p in (out / "qc" / "sessions").glob("*_qc.png")) == [
        "session_ses01_qc.png",
        "session_ses02_qc.png",
    ]
    assert not (out / "work").exists()  # intermediates removed after success
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sessions"] == ["ses01", "ses02"]  # the two pieces form one session
    assert summary["session_frames"] == [400, 400]
    for row in summary["alignment"]["heldout"]["sessions"]:  # whether each session kept its non-rigid field, and why
        assert isinstance(row["nonrigid_used"], bool) and row["why"].startswith("held-out score"), row
    assert [row["session"] for row in summary["alignment"]["heldout"]["sessions"]] == ["ses01", "ses02"]
    assert (summary["gSig"], summary["gSig_from"]) == (3, "set")  # a number given is used as given
    assert np.load(out / "arrays" / "session_bounds.npy").tolist() == [0, 400, 800]
    progress = [line for line in run.stdout.splitlines() if line.startswith("NCAAS_PROGRESS")]
    fractions = [float(line.split()[1]) for line in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for stage in ["motion", "projections", "alignment", "apply", "extraction"]:
        assert any(f" {stage}:" in line for line in progress), stage
    convergence = summary["convergence"]  # outside `run`: the same for every run of this input
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert meta["convergence"] == convergence and convergence["rounds"] == len(meta["history"])
    assert convergence["converged"] == (convergence["stop"] in ("tol", "noise"))
    assert progress[-1].endswith(f"; {convergence['why']}")  # the status message the platform shows last
    assert (out / "qc" / "convergence.png").is_file()
    s = score(out, experiment.parent / "sim" / "ground_truth")
    assert s.neurons.f1 >= 0.8, s
    assert s.alignment is not None and s.alignment.median_px <= 0.6


def test_nwb_output_opens_with_pynwb(result):
    from pynwb import NWBHDF5IO

    out, _ = result
    with NWBHDF5IO(str(out / "neurons.nwb"), "r") as io:
        nwb = io.read()
        assert len(nwb.processing["ophys"]["ImageSegmentation"].plane_segmentations) == 1
        summary = json.loads((out / "summary.json").read_text())
        assert nwb.processing["ophys"].description.endswith(f"; {summary['convergence']['why']}")


def test_an_interrupted_run_resumes_from_its_last_stage(tmp_path, experiment):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "caliali",
        "run",
        "--input",
        str(experiment),
        "--config",
        str(cfg),
        "--output",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    state = out / "work" / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = json.loads(state.read_text())["done"] if state.exists() else {}
        if "projections_0" in done or proc.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = json.loads(state.read_text())["done"]
    assert {"motion_0", "motion_1"} <= set(done) and "extraction" not in done
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert not any("motion:" in line for line in lines if line.startswith("NCAAS_PROGRESS"))
    assert (out / "arrays" / "A.npz").is_file()


def test_real_miniscope_recording(quadrant_runs, minian_demo_quadrant):
    """minian's demo movie: its top-left quadrant is the raw one-photon recording (at half resolution, gSig and
    the seed thresholds set; the run is one of the pair test_determinism compares)."""
    out, code, said = quadrant_runs[0]
    assert code == 0, said[-3000:]
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert meta["dims"] == [120, 188]
    import scipy.sparse

    a = scipy.sparse.load_npz(out / "arrays" / "A.npz")
    c = np.load(out / "arrays" / "C.npy")
    assert a.shape[1] >= 3 and c.shape == (a.shape[1], len(minian_demo_quadrant))
    assert np.isfinite(c).all()
    for rel in ["neurons.nwb", "qc/contours.png", "qc/traces.png", "qc/sessions/session_session1_qc.png"]:
        assert (out / rel).stat().st_size > 0, rel
    assert meta["convergence"]["converged"], meta["history"]


def test_real_miniscope_recording_converges_with_only_its_frame_rate(tmp_path, minian_demo_quadrant):
    """The raw quadrant with nothing but ``fs`` set: gSig and the seed thresholds come from the data, and the
    refinement rounds converge."""
    import tifffile

    movie = tmp_path / "movie"
    movie.mkdir()
    tifffile.imwrite(movie / "session1.tif", minian_demo_quadrant)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"fs": 25}))
    out = tmp_path / "out"
    r = _caliali("run", "--input", str(movie), "--config", str(cfg), "--output", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert meta["convergence"]["converged"], meta["history"]
    # each round refits the traces before the footprints (Gauss-Seidel): 11 rounds here (7 without the seeds in
    # the residual, whose components join in round 3 and settle with the rest); footprints fitted to the last
    # round's traces while the same pass refitted the traces (Jacobi) followed them a round late: 17 rounds
    # without the residual's seeds, not converged after 20 with them
    assert meta["convergence"]["rounds"] <= 12, [round(h["change"], 3) for h in meta["history"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["convergence"]["why"].startswith("converged: footprint change")


def test_session_start_time_is_read_as_a_time_with_its_offset():
    assert CalialiConfig().start_time is None  # unset: the recording's own time, else the epoch
    assert CalialiConfig(session_start_time="2024-05-01T09:30").start_time.isoformat() == "2024-05-01T09:30:00+00:00"
    assert CalialiConfig(session_start_time="2024-05-01T09:30:00Z").start_time.utcoffset().total_seconds() == 0
    with pytest.raises(ConfigError, match="is not a date and time; write e.g. 2024-05-01T09:30:00"):
        load_config({"session_start_time": "2024-13-01T00:00"})
