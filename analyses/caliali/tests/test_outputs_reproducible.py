"""The same extraction written twice, in two processes seconds apart, gives the same bytes.

Nothing of the moment or the process may reach a file: NWB's ``file_create_date`` and
``object_id`` s, HDF5 object times (in the NWB and the CaImAn file) and uninitialised bytes,
PNG metadata.
"""

from __future__ import annotations

import datetime
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

WRITERS = Path(__file__).resolve().with_name("test_outputs_writers.py")

WRITE = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("writers", sys.argv[2])
writers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(writers)
from caliali.outputs import write_outputs
write_outputs(writers._extraction(), sys.argv[1], fs=20.0, session_ids=["a", "b"], identifier="caliali-test")
"""


def _extraction():
    """The small extraction of test_outputs_writers (its module loaded by path: tests are no package)."""
    spec = importlib.util.spec_from_file_location("writers", WRITERS)
    writers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(writers)
    return writers._extraction()


def _write(out: Path) -> dict[str, bytes]:
    subprocess.run([sys.executable, "-c", WRITE, str(out), str(WRITERS)], check=True, timeout=120)
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_two_writes_seconds_apart_in_two_processes_give_the_same_bytes(tmp_path):
    from pynwb import NWBHDF5IO

    first = _write(tmp_path / "one")
    time.sleep(1.1)  # the clock's second has changed: a timestamp written anywhere would show
    again = _write(tmp_path / "two")
    assert {"neurons.nwb", "caiman.hdf5", "arrays/dff.npy", "qc/contours.png", "qc/traces.png", "arrays/A.npz"} <= set(
        first
    )
    assert sorted(first) == sorted(again)
    differing = [name for name in first if first[name] != again[name]]
    assert differing == []
    with Image.open(tmp_path / "two" / "qc" / "traces.png") as png:
        assert png.text == {"Software": "caliali"}  # set, not matplotlib's version string

    with NWBHDF5IO(str(tmp_path / "two" / "neurons.nwb"), mode="r") as io:
        nwb = io.read()
        assert nwb.identifier == "caliali-test"
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        assert nwb.session_start_time == epoch and list(nwb.file_create_date) == [epoch]
        ids = [c.object_id for c in nwb.all_children()]
        assert len(ids) == len(set(ids)) > 20  # one distinct id per object
        planes = nwb.processing["ophys"]["ImageSegmentation"]["PlaneSegmentation"]
        assert len(planes) == 3
        c = nwb.processing["ophys"]["Fluorescence"]["C"].data[()]
        assert c.shape == (120, 3)
        np.testing.assert_array_equal(c.T, np.load(tmp_path / "two" / "arrays" / "C.npy"))


def test_another_identifier_gives_other_object_ids(tmp_path):
    from pynwb import NWBHDF5IO

    from caliali.outputs import write_nwb

    def ids(name):
        with NWBHDF5IO(str(write_nwb(_extraction(), tmp_path / f"{name}.nwb", identifier=name)), mode="r") as io:
            return {c.name: c.object_id for c in io.read().all_children()}

    one, other = ids("one"), ids("other")
    assert one.keys() == other.keys() and not set(one.values()) & set(other.values())
