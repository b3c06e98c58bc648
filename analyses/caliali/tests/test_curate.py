"""`caliali curate`: a review's decisions applied to a run's result, as a new result in the same layout.

A small simulated two-session experiment is run once; one of its well-found neurons is then split in
two (its footprint cut down the middle, each half with the neuron's raw trace plus noise of its own,
deconvolved on its own), as
an extraction with too small a gSig would find it, and the review merges the halves back: the merged
neuron must again match the simulated neuron, footprint and trace.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import yaml

from caliali.extraction._deconv import deconvolve_trace
from caliali.score import footprint_masks, iou_matrix

SMALL = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "memory_budget": "256MB"}
FORMAT = "ncaas-review/1"


def _caliali(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caliali", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def run(simulation, tmp_path_factory) -> tuple[Path, Path]:
    """(outputs of a caliali run, its simulation's ground truth)."""
    sim = simulation(sessions=2, frames=200)
    cfg = tmp_path_factory.mktemp("cfg") / "config.yaml"
    cfg.write_text(yaml.safe_dump(SMALL))
    out = tmp_path_factory.mktemp("run") / "out"
    r = _caliali("run", "--input", str(sim.manifest), "--config", str(cfg), "--output", str(out))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out, sim.ground_truth


def _truth(ground_truth: Path) -> tuple[np.ndarray, np.ndarray]:
    a = np.load(ground_truth / "A.npy")
    return a.reshape(len(a), -1).T, np.load(ground_truth / "C.npy")


def _best_match(a, truth_a) -> tuple[int, int, float]:
    """The found neuron best matching a true one by mask IoU: (found id, true id, IoU)."""
    iou = iou_matrix(footprint_masks(a), footprint_masks(truth_a))
    k = int(np.argmax(iou.max(axis=1)))
    j = int(np.argmax(iou[k]))
    return k, j, float(iou[k, j])


@pytest.fixture(scope="module")
def split(run, tmp_path_factory) -> dict:
    """The run with its best-found neuron split in two: the left half stays neuron k, the right half is appended."""
    out, ground_truth = run
    truth_a, _ = _truth(ground_truth)
    a = scipy.sparse.load_npz(out / "arrays" / "A.npz").tocsc()
    k, j, iou = _best_match(a, truth_a)
    assert iou >= 0.7, f"the run found no simulated neuron well enough to split (best IoU {iou:.2f})"
    result = tmp_path_factory.mktemp("split") / "out"
    shutil.copytree(out, result)
    arrays = result / "arrays"
    meta = json.loads((arrays / "meta.json").read_text())
    width = meta["dims"][1]
    col = a[:, [k]].toarray().ravel()
    x = np.arange(col.size) % width
    cx = meta["centers"][k][1]
    left, right = np.where(x < cx, col, 0), np.where(x >= cx, col, 0)
    n = a.shape[1]
    columns = [a[:, i].toarray().ravel() for i in range(n)]
    columns[k] = left
    columns.append(right)
    scipy.sparse.save_npz(arrays / "A.npz", scipy.sparse.csc_matrix(np.stack(columns, axis=1), dtype=np.float32))
    # each half sees its own pixels' noise, and is deconvolved from it as the extraction does (AR(2), per session)
    rng = np.random.default_rng(1)
    raw = np.load(arrays / "C_raw.npy")
    halves = {"C_raw": raw[[k, k]] + rng.standard_normal((2, raw.shape[1])).astype(np.float32)}
    halves["C"], halves["S"] = np.zeros_like(halves["C_raw"]), np.zeros_like(halves["C_raw"])
    bounds = np.load(arrays / "session_bounds.npy")
    for h in range(2):
        for s0, s1 in zip(bounds[:-1], bounds[1:]):
            fit = deconvolve_trace(halves["C_raw"][h, s0:s1], p=2, sn=1.0)
            halves["C"][h, s0:s1], halves["S"][h, s0:s1] = fit.c, fit.s
    for name in ("C_raw", "C", "S"):
        traces = np.load(arrays / f"{name}.npy")
        traces[k] = halves[name][0]
        np.save(arrays / f"{name}.npy", np.concatenate([traces, halves[name][1:]]))
    meta["n_neurons"] = n + 1
    for key in ("snr", "centers", "noise", "f0"):
        meta[key].append(meta[key][k])
    (arrays / "meta.json").write_text(json.dumps(meta, indent=1))
    return {"result": result, "k": k, "half": n, "truth": j, "n_neurons": n + 1, "iou": iou}


def _decisions(path: Path, n_neurons: int, final: dict, **fields) -> Path:
    data = {
        "format": FORMAT,
        "job": "job-1",
        "dataset": "sim",
        "certificate_sha256": "c" * 64,
        "n_neurons": n_neurons,
        "final": final,
        "log": [{"seq": 1, "action": "reject", "neurons": [0], "user": "alice", "at": "2026-12-06T19:30:01.123456Z"}],
        **fields,
    }
    path.write_text(json.dumps(data, sort_keys=True))
    return path


@pytest.fixture(scope="module")
def curated(split, tmp_path_factory) -> dict:
    """The split run curated twice with the same decisions: reject two, accept two, merge the halves."""
    k, half = split["k"], split["half"]
    others = [i for i in range(split["n_neurons"]) if i not in (k, half)]
    final = {"accepted": others[2:4], "rejected": others[:2], "merges": [sorted([k, half])]}
    folder = tmp_path_factory.mktemp("curated")
    decisions = _decisions(folder / "decisions.json", split["n_neurons"], final)
    outs = []
    for name in ("a", "b"):
        out = folder / name
        r = _caliali("curate", "--result", str(split["result"]), "--decisions", str(decisions), "--output", str(out))
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        outs.append(out)
    return {**split, "final": final, "decisions": decisions, "outs": outs}


def test_the_merged_halves_are_the_simulated_neuron_again(curated, run):
    _, ground_truth = run
    truth_a, truth_c = _truth(ground_truth)
    j = curated["truth"]
    halves = scipy.sparse.load_npz(curated["result"] / "arrays" / "A.npz").tocsc()[:, [curated["k"], curated["half"]]]
    half_iou = iou_matrix(footprint_masks(halves), footprint_masks(truth_a[:, [j]])).ravel()
    assert half_iou.max() < 0.7, f"a half alone already matches the neuron (IoU {half_iou})"
    out = curated["outs"][0]
    curation = json.loads((out / "curation.json").read_text())
    (merged,) = [n for n in curation["neurons"] if n["status"] == "merged"]
    assert merged["from"] == sorted([curated["k"], curated["half"]])
    a = scipy.sparse.load_npz(out / "arrays" / "A.npz").tocsc()
    iou = float(iou_matrix(footprint_masks(a[:, [merged["id"]]]), footprint_masks(truth_a[:, [j]]))[0, 0])
    assert iou >= 0.7, f"merged footprint IoU {iou:.2f} with the simulated neuron"
    assert iou >= curated["iou"] - 0.05, f"merged IoU {iou:.2f}, the unsplit neuron's {curated['iou']:.2f}"
    for name, least in (("C", 0.8), ("C_raw", 0.6)):
        trace = np.load(out / "arrays" / f"{name}.npy")[merged["id"]]
        r = float(np.corrcoef(trace, truth_c[j])[0, 1])
        assert r >= least, f"merged {name} correlates {r:.2f} with the simulated trace"
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert meta["snr"][merged["id"]] > 0
    assert np.all(np.isfinite(meta["f0"][merged["id"]])) and min(meta["f0"][merged["id"]]) > 0


def test_kept_neurons_keep_their_order_and_values_and_rejected_ones_go(curated):
    out, result = curated["outs"][0], curated["result"]
    curation = json.loads((out / "curation.json").read_text())
    final = curated["final"]
    kept = [n["from"] for n in curation["neurons"]]
    assert [n["id"] for n in curation["neurons"]] == list(range(len(kept)))
    assert all(i not in sum(kept, []) for i in final["rejected"])
    assert [f[0] for f in kept] == sorted(f[0] for f in kept), "neurons are not in their original order"
    assert len(kept) == curated["n_neurons"] - len(final["rejected"]) - 1
    status = {tuple(n["from"]): n["status"] for n in curation["neurons"]}
    assert all(status[(i,)] == "accepted" for i in final["accepted"])
    assert sum(s == "unreviewed" for s in status.values()) == len(kept) - 1 - len(final["accepted"])
    assert curation["source"] == {"job": "job-1", "dataset": "sim", "certificate_sha256": "c" * 64}
    digest = hashlib.sha256(curated["decisions"].read_bytes()).hexdigest()
    assert curation["decisions_sha256"] == digest
    before = np.load(result / "arrays" / "C_raw.npy", mmap_mode="r")
    after = np.load(out / "arrays" / "C_raw.npy", mmap_mode="r")
    a_before = scipy.sparse.load_npz(result / "arrays" / "A.npz").tocsc()
    a_after = scipy.sparse.load_npz(out / "arrays" / "A.npz").tocsc()
    meta_before = json.loads((result / "arrays" / "meta.json").read_text())
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    for n in curation["neurons"]:
        if n["status"] != "merged":
            (i,) = n["from"]
            assert np.array_equal(after[n["id"]], before[i])
            assert (a_after[:, [n["id"]]] != a_before[:, [i]]).nnz == 0
            assert meta["snr"][n["id"]] == meta_before["snr"][i]
            assert meta["centers"][n["id"]] == meta_before["centers"][i]


def test_the_curated_result_has_the_whole_layout(curated):
    out = curated["outs"][0]
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    k, t = meta["n_neurons"], meta["n_frames"]
    assert k == len(json.loads((out / "curation.json").read_text())["neurons"])
    assert scipy.sparse.load_npz(out / "arrays" / "A.npz").shape == (meta["dims"][0] * meta["dims"][1], k)
    for name in ("C_raw", "C", "S", "dff"):
        assert np.load(out / "arrays" / f"{name}.npy", mmap_mode="r").shape == (k, t)
    assert np.load(out / "arrays" / "session_bounds.npy").tolist() == [0, 200, 400]
    assert len(meta["snr"]) == len(meta["centers"]) == len(meta["f0"]) == k
    kinds = {(i["kind"], i["session"]) for i in meta["images"]}
    assert kinds == {(kind, s) for kind in ("Cn", "PNR", "mean", "max") for s in (None, "ses01", "ses02")}
    for image in meta["images"]:
        pixels = np.load(out / "arrays" / image["file"])
        assert pixels.dtype == np.float32 and pixels.shape == tuple(meta["dims"])
        assert (curated["result"] / "arrays" / image["file"]).read_bytes() == (
            out / "arrays" / image["file"]
        ).read_bytes()
    for name in ("neurons.nwb", "caiman.hdf5", "qc/contours.png", "summary.json", "curation.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["neurons"] == k and summary["merged"] == 1 and summary["rejected"] == 2


def test_the_curated_nwb_passes_nwbinspector_as_the_runs_does_and_holds_the_curated_neurons(curated):
    """nwbinspector (DANDI's level) says of the curated file exactly what it says of the run's: here, with
    the default config, that only the scientist knows the subject and the brain area; nothing invalid."""
    from nwbinspector import inspect_nwbfile, load_config
    from pynwb import NWBHDF5IO

    def findings(path: Path) -> set[tuple[str, str]]:
        messages = inspect_nwbfile(nwbfile_path=str(path), config=load_config("dandi"))
        return {(m.importance.name, m.check_function_name) for m in messages}

    path = curated["outs"][0] / "neurons.nwb"
    found = findings(path)
    assert found == findings(curated["result"] / "neurons.nwb")
    assert not {"ERROR", "PYNWB_VALIDATION"} & {importance for importance, _ in found}
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        planes = nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        meta = json.loads((curated["outs"][0] / "arrays" / "meta.json").read_text())
        assert len(planes) == meta["n_neurons"]
        series = nwb.processing["ophys"]["Fluorescence"]["C"]
        assert series.data.shape == (meta["n_frames"], meta["n_neurons"])
        described, identifier = planes.description, nwb.identifier
    with NWBHDF5IO(str(curated["result"] / "neurons.nwb"), "r") as io:
        run = io.read()
        assert described == run.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"].description
        sha = json.loads((curated["outs"][0] / "curation.json").read_text())["decisions_sha256"]
        assert identifier == f"{run.identifier}-curated-{sha[:16]}"


def test_the_same_result_and_decisions_give_the_same_bytes(curated):
    a, b = curated["outs"]
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between two curations"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"format": "ncaas-review/0"}, "has format 'ncaas-review/0', not 'ncaas-review/1'"),
        ({"n_neurons": 3}, "the decisions are for 3 neurons but the result has"),
        ({"final": {"accepted": [], "rejected": [999], "merges": []}}, "final.rejected names neuron 999"),
        ({"final": {"accepted": [], "rejected": [], "merges": [[0, 1], [1, 2]]}}, "neuron 1 is in two merges"),
        ({"final": {"accepted": [], "rejected": [0], "merges": [[0, 1]]}}, "neuron 0 is rejected and in a merge"),
        ({"final": {"accepted": [4], "rejected": [4], "merges": []}}, "neuron 4 is both accepted and rejected"),
        ({"final": {"accepted": [], "rejected": [], "merges": [[3]]}}, "a merge needs two or more neurons"),
        ({"final": {"accepted": ["a"], "rejected": [], "merges": []}}, "final.accepted must be a list of neuron ids"),
        ({"final": None}, "'final' is missing"),
    ],
)
def test_a_bad_decisions_file_fails_with_one_line_saying_what_is_wrong(split, tmp_path, change, says):
    change = dict(change)
    n = change.pop("n_neurons", split["n_neurons"])
    final = change.pop("final", {"accepted": [], "rejected": [], "merges": []})
    path = _decisions(tmp_path / "decisions.json", n, final or {}, **change)
    if final is None:
        data = json.loads(path.read_text())
        del data["final"]
        path.write_text(json.dumps(data))
    error_file = tmp_path / "error.txt"
    out = tmp_path / "out"
    r = _caliali(
        "curate",
        "--result",
        str(split["result"]),
        "--decisions",
        str(path),
        "--output",
        str(out),
        env={**os.environ, "NCAAS_ERROR_FILE": str(error_file)},
    )
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert says in error_file.read_text()
    assert not out.exists(), "a refused curation wrote outputs"


def test_a_file_that_is_not_json_and_a_folder_that_is_no_result_are_refused(split, tmp_path):
    bad = tmp_path / "decisions.json"
    bad.write_text("{not json")
    r = _caliali("curate", "--result", str(split["result"]), "--decisions", str(bad), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "is not JSON" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    good = _decisions(tmp_path / "d.json", 3, {"accepted": [], "rejected": [], "merges": []})
    r = _caliali("curate", "--result", str(tmp_path), "--decisions", str(good), "--output", str(tmp_path / "o"))
    assert r.returncode == 2 and "has no arrays/meta.json" in r.stderr, r.stderr


def test_rejecting_every_neuron_gives_an_empty_result_that_reads_back(split, tmp_path):
    from pynwb import NWBHDF5IO

    k = split["n_neurons"]
    path = _decisions(tmp_path / "decisions.json", k, {"accepted": [], "rejected": list(range(k)), "merges": []})
    out = tmp_path / "out"
    r = _caliali("curate", "--result", str(split["result"]), "--decisions", str(path), "--output", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((out / "arrays" / "meta.json").read_text())
    assert meta["n_neurons"] == 0 and np.load(out / "arrays" / "C_raw.npy").shape == (0, meta["n_frames"])
    assert json.loads((out / "curation.json").read_text())["neurons"] == []
    with NWBHDF5IO(str(out / "neurons.nwb"), "r") as io:
        ophys = io.read().processing["ophys"]
        assert "ImageSegmentation" not in ophys.data_interfaces and "Fluorescence" in ophys.data_interfaces
