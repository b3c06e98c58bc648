"""`caliali run` twice on the same input and config, in two processes: every output is the same
file, and summary.json differs only in its ``run`` section; the NWB file says where it comes from."""

from __future__ import annotations

import datetime
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tifffile
import yaml

from caliali.config import config_mapping
from caliali.provenance import config_sha256, input_sha256

CONFIG = {"gSig": 3, "min_corr": 0.2, "min_pnr": 4, "min_snr": "auto", "memory_budget": "64MB", "fs": 10}
RECORDED = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=datetime.UTC)


def _run(experiment: Path, config: Path, out: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "caliali",
            "run",
            "--input",
            str(experiment),
            "--config",
            str(config),
            "--output",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(simulation, tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """One session of 200 frames, 80 x 96 px, as a TIFF that says when it was recorded; run twice."""
    sim = simulation(sessions=1)
    base = tmp_path_factory.mktemp("twice")
    experiment = base / "experiment"
    experiment.mkdir()
    with tifffile.TiffFile(sim.out / "ses01.tif") as tif:
        frames = tif.asarray()
    tifffile.imwrite(experiment / "day1.tif", frames, datetime=RECORDED.replace(tzinfo=None))
    config = base / "config.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    _run(experiment, config, base / "one")
    time.sleep(1.1)  # another second on the clock
    _run(experiment, config, base / "two")
    return experiment, config, base / "one", base / "two"


def _nwb_identity(path: Path) -> dict:
    from pynwb import NWBHDF5IO

    with NWBHDF5IO(str(path), mode="r") as io:
        nwb = io.read()
        return {
            "identifier": nwb.identifier,
            "session_start_time": nwb.session_start_time,
            "file_create_date": list(nwb.file_create_date),
            "object_ids": sorted(c.object_id for c in nwb.all_children()),
        }


def test_two_runs_differ_in_nothing_of_the_moment(runs):
    """Everything but the numbers the analysis computes is the same: the same files, summary.json
    keys, NWB identity (identifier, start, creation date, object ids) and PNG metadata; paths,
    host, process, times and memory only in summary.json's ``run`` section. (Whether the computed
    numbers are the same run to run is the analysis' own determinism, tested with it.)"""
    from PIL import Image

    _, _, one, two = runs
    first, again = _files(one), _files(two)
    assert sorted(first) == sorted(again)
    a, b = json.loads(first["summary.json"]), json.loads(again["summary.json"])
    assert list(a) == sorted(a) and first["summary.json"].endswith(b"}\n")  # sorted keys, one layout
    for key in ("caliali_version", "config", "sessions", "session_frames", "nwb"):
        assert a[key] == b[key], key
    assert (
        set(a)
        == set(b)
        == {
            "alignment",
            "caliali_version",
            "config",
            "convergence",
            "crop",
            "frame_shape_original",
            "fs",
            "fs_from",
            "fs_note",
            "gSig",
            "gSig_from",
            "min_snr",
            "neurons",
            "nwb",
            "roi_mask",
            "run",
            "seed_thresholds",
            "session_frames",
            "sessions",
        }
    )
    for key in ("fs", "fs_from", "fs_note", "crop", "frame_shape_original", "roi_mask", "min_snr"):
        assert a[key] == b[key], key
    # min_snr 'auto' (reproducible too): the event SNR each round asked of a component, 3 at most, lower
    # where the traces' noise, read from their dips, stays further below
    assert a["min_snr"]["set"] == "auto" and a["min_snr"]["from"].startswith(
        "auto: 3, or, if less, the level a run expects 0.05"
    )
    assert len(set(a["min_snr"]["per_round"])) == 1  # settled in the first round, held
    assert len(a["min_snr"]["per_round"]) == a["convergence"]["rounds"]
    assert all(0 < level <= 3.0 for level in a["min_snr"]["per_round"])
    assert set(a["run"]) == {"input", "output", "host", "pid", "started", "seconds", "stages", "peak_rss_mb"}
    assert a["run"]["output"] != b["run"]["output"] and set(a["run"]["stages"]) >= {"motion", "extraction"}
    outside = json.dumps({k: v for k, v in a.items() if k != "run"})
    for fact in (a["run"]["host"], str(one), str(a["run"]["started"])):  # nothing of the run outside its section
        assert fact not in outside
    assert _nwb_identity(one / "neurons.nwb") == _nwb_identity(two / "neurons.nwb")
    for png in [name for name in first if name.endswith(".png")]:
        with Image.open(one / png) as image:
            assert image.text == {"Software": "caliali"}, png


def test_the_nwb_file_says_where_it_comes_from(runs):
    from pynwb import NWBHDF5IO

    experiment, config, one, _ = runs
    summary = json.loads((one / "summary.json").read_text())["nwb"]
    hashes = {"input": input_sha256(experiment), "config": config_sha256(config_mapping(config))}
    rule = "".join(f"{name}={value}\n" for name, value in sorted(hashes.items()))
    identifier = "caliali-" + hashlib.sha256(rule.encode()).hexdigest()
    assert summary == {
        "identifier": identifier,
        "from": hashes,
        "hashes_by": "caliali",
        "session_start_time": "2024-05-01T09:30:00+00:00",
        "session_start_time_from": "recording",
    }
    with NWBHDF5IO(str(one / "neurons.nwb"), mode="r") as io:
        nwb = io.read()
        assert nwb.identifier == identifier
        assert nwb.session_start_time == RECORDED and list(nwb.file_create_date) == [RECORDED]
        assert len(nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]) >= 1
