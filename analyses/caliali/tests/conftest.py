"""Shared caliali test fixtures: small simulations and video files in every format.

``simulation(**params)`` (session scope) simulates once per distinct set of
parameters and checks at teardown that no test modified the ground truth.
``write_video(path, frames)`` writes frames in the format the suffix names
(``.nwb`` via pynwb, the rest via :func:`caliali.io.open_writer`).
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from caliali.io import open_writer
from caliali.simulate import Simulation, simulate

REAL_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # ../shared/data beside the repository
MINIAN_DEMO = REAL_DATA / "minian_demo" / "minian_demo.mp4"
MINIAN_FIXTURE = REAL_DATA / "minian_fixture" / "org.zarr"
# minian's fixture as issue reports ran it: 100 frames at full resolution, read in chunks of 98 (a last of 2)
MINIAN_FIXTURE_CONFIG = {"gSig": 4, "fs": 30, "motion_correction": False}


def _two_runs_at_once(folder: Path, movie: Path, config: dict) -> list[tuple[Path, int, str]]:
    """``caliali run`` twice on ``movie`` with ``config``, both started at once (each loads the machine for
    the other): [(output folder, exit code, console output)] x 2."""
    import json
    import subprocess
    import sys

    path = folder / "config.json"
    path.write_text(json.dumps(config))
    command = [sys.executable, "-m", "caliali", "run", "--input", str(movie), "--config", str(path), "--output"]
    procs = [
        (out, subprocess.Popen([*command, str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        for out in (folder / "run1", folder / "run2")
    ]
    done = []
    for out, proc in procs:
        output, _ = proc.communicate(timeout=1800)
        done.append((out, proc.returncode, output))
    return done


@pytest.fixture(scope="session")
def minian_fixture_runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int, str]]:
    """Two runs at once of minian's fixture with `MINIAN_FIXTURE_CONFIG` (`_two_runs_at_once`). Skips when
    ../shared/data is not beside the repository.

    One pair of runs serves the tests of determinism (the two write the same bytes) and of the short last
    chunk (the run finishes): each was a run of its own of this movie, a minute of the test suite."""
    if not MINIAN_FIXTURE.exists():
        pytest.skip(f"{MINIAN_FIXTURE} is absent (the shared data folder is not beside the repository)")
    return _two_runs_at_once(tmp_path_factory.mktemp("minian_fixture_runs"), MINIAN_FIXTURE, MINIAN_FIXTURE_CONFIG)


# the raw quadrant, quickly: gSig and the seed thresholds set, half resolution, the rounds without the residual
QUADRANT_CONFIG = {
    "gSig": 6,
    "spatial_ds": 2,
    "fs": 25,
    "min_corr": 0.5,
    "min_pnr": 6,
    "memory_budget": "256MB",
    "residual_seeds": False,
}


@pytest.fixture(scope="session")
def quadrant_config() -> dict:
    """`QUADRANT_CONFIG`, for tests that run the quadrant with a variation of it."""
    return dict(QUADRANT_CONFIG)


@pytest.fixture(scope="session")
def quadrant_movie(minian_demo_quadrant, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the raw top-left quadrant of minian's demo movie as ``session1.tif``."""
    import tifffile

    movie = tmp_path_factory.mktemp("quadrant") / "movie"
    movie.mkdir()
    tifffile.imwrite(movie / "session1.tif", minian_demo_quadrant)
    return movie


@pytest.fixture(scope="session")
def quadrant_runs(quadrant_movie: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, int, str]]:
    """Two runs at once of the raw quadrant with `QUADRANT_CONFIG`: the determinism test compares them, the
    pipeline's test of a real recording reads the first."""
    return _two_runs_at_once(tmp_path_factory.mktemp("quadrant_runs"), quadrant_movie, QUADRANT_CONFIG)


@pytest.fixture(scope="session")
def minian_demo_quadrant() -> np.ndarray:
    """The raw one-photon recording of minian's demo movie: the top-left quadrant (rows 0-239, cols 0-375)
    of its 2x2 montage, grey, uint8 (500, 240, 376). Skips when ../shared/data is not beside the repository."""
    from caliali.io import open_video

    if not MINIAN_DEMO.exists():
        pytest.skip(f"real recording {MINIAN_DEMO} is not on this machine (../shared/data beside the repository)")
    with open_video(MINIAN_DEMO, crop=(0, 240, 0, 376)) as reader:
        movie = reader.read().astype(np.uint8)  # the reader's grey of the decoded frames: whole values
    assert len(movie) == 500, f"{MINIAN_DEMO} has {len(movie)} frames, not 500"
    movie.flags.writeable = False  # shared by every test of the session
    return movie


def write_nwb(
    path: Path,
    frames: np.ndarray,
    *,
    kind: str = "one",
    name: str = "raw",
    extra: str | None = None,
    rate: float = 10.0,
) -> Path:
    """An NWB file with a OnePhotonSeries (``kind='one'``) or TwoPhotonSeries holding ``frames`` at ``rate`` Hz."""
    from pynwb import NWBHDF5IO, NWBFile
    from pynwb.ophys import OnePhotonSeries, OpticalChannel, TwoPhotonSeries

    nwb = NWBFile(
        session_description="test",
        identifier=path.stem,
        session_start_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
    )
    device = nwb.create_device(name="Miniscope")
    channel = OpticalChannel(name="green", description="GCaMP", emission_lambda=520.0)
    plane = nwb.create_imaging_plane(
        name="plane",
        optical_channel=channel,
        description="CA1",
        device=device,
        excitation_lambda=470.0,
        indicator="GCaMP6f",
        location="CA1",
        imaging_rate=rate,
    )
    cls = OnePhotonSeries if kind == "one" else TwoPhotonSeries
    nwb.add_acquisition(cls(name=name, data=frames, imaging_plane=plane, rate=rate, unit="n.a."))
    if extra is not None:
        nwb.add_acquisition(cls(name=extra, data=frames[:2], imaging_plane=plane, rate=10.0, unit="n.a."))
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwb)
    return path


def _write(path: Path, frames: np.ndarray, **options: Any) -> Path:
    if path.suffix == ".nwb":
        return write_nwb(path, frames, **options)
    with open_writer(path, frame_shape=frames.shape[1:3], dtype=frames.dtype, n_frames=len(frames)) as writer:
        writer.write(frames)
    return path


@pytest.fixture
def write_video() -> Callable[..., Path]:
    """``write_video(path, frames, **options) -> path`` in the format of the path's suffix."""
    return _write


@pytest.fixture
def movie() -> np.ndarray:
    """A small uint16 movie (37, 24, 32) whose frames all differ."""
    rng = np.random.default_rng(3)
    return rng.integers(0, 4000, (37, 24, 32)).astype(np.uint16)


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            sha.update(path.name.encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


@pytest.fixture(scope="session")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Simulation]]:
    """``simulation(**params) -> Simulation``, simulated once per parameter set per test run.

    Defaults are small (2 sessions x 200 frames, 30 neurons, 80 x 96 px) to
    keep tests fast; pass any :class:`caliali.simulate.SimulationParams` field.
    Teardown fails if a test changed any file of a simulation.
    """
    made: dict[tuple, tuple[Simulation, str]] = {}

    def make(**params: Any) -> Simulation:
        full = {"sessions": 2, "frames": 200, "neurons": 30, "height": 80, "width": 96, "seed": 0, **params}
        key = tuple(sorted(full.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("sim")
            result = simulate(out, **full)
            made[key] = (result, _digest(out))
        return made[key][0]

    yield make
    for result, digest in made.values():
        assert _digest(result.out) == digest, f"a test modified the simulation in {result.out}"
