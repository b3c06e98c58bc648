"""Where a run's outputs say they come from: the recording's start time from the file's own
metadata (every format that has one), else the config, else a fixed epoch; the identifier
from the platform's content hashes, or the same hashes computed here."""

from __future__ import annotations

import datetime
import hashlib
import json
import os

import numpy as np
import pytest
import tifffile

from caliali.config import config_mapping, load_config
from caliali.provenance import EPOCH, RunHashes, config_sha256, input_sha256, run_hashes, session_start

UTC = datetime.UTC
MAY_1 = datetime.datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
CONFIGURED = datetime.datetime(2022, 2, 2, 2, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
OME = (
    '<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
    '<Image ID="Image:0"><AcquisitionDate>2023-02-03T04:05:06</AcquisitionDate>'
    '<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="32" SizeY="24" SizeC="1" SizeZ="1" '
    'SizeT="37"><Channel ID="Channel:0:0" SamplesPerPixel="1"/><TiffData/></Pixels></Image></OME>'
)


def _start(path, configured=None, dataset=None):
    return session_start(path, dataset=dataset, configured=configured)


def test_a_tiff_says_when_by_its_datetime_tag_else_the_config_else_the_epoch(tmp_path, movie):
    dated = tmp_path / "dated.tif"
    tifffile.imwrite(dated, movie, datetime=datetime.datetime(2024, 5, 1, 9, 30))
    assert _start(dated, CONFIGURED) == (MAY_1, "recording")  # the file wins over the config
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, movie)
    assert _start(plain, CONFIGURED) == (CONFIGURED, "config")
    assert _start(plain) == (EPOCH, "default")


def test_an_ome_tiff_says_when_by_its_acquisition_date(tmp_path, movie):
    path = tmp_path / "scope.ome.tif"
    tifffile.imwrite(path, movie, description=OME, metadata=None)
    assert _start(path) == (datetime.datetime(2023, 2, 3, 4, 5, 6, tzinfo=UTC), "recording")


def test_an_nwb_input_gives_its_session_start_time(tmp_path, movie, write_video):
    path = write_video(tmp_path / "rec.nwb", movie)
    assert _start(path, CONFIGURED) == (datetime.datetime(2024, 1, 1, tzinfo=UTC), "recording")


def test_hdf5_and_zarr_attributes_named_like_a_start_time(tmp_path, movie):
    import h5py
    import zarr

    with h5py.File(tmp_path / "rec.h5", "w") as file:
        file.create_group("acq").create_dataset("mov", data=movie)
        file["acq"].attrs["session_start_time"] = "2024-05-01T11:30:00+02:00"
        file.attrs["start_time"] = "1999-01-01T00:00:00"  # less specific than the group holding the movie
    assert _start(tmp_path / "rec.h5") == (MAY_1, "recording")
    with h5py.File(tmp_path / "bad.h5", "w") as file:
        file.create_dataset("mov", data=movie).attrs["start_time"] = "yesterday"  # not a time: ignored
    assert _start(tmp_path / "bad.h5", CONFIGURED) == (CONFIGURED, "config")

    group = zarr.open_group(str(tmp_path / "rec.zarr"), mode="w")
    group.create_array("mov", data=movie)
    group.attrs["session_start_time"] = "2024-05-01T09:30:00Z"
    assert _start(tmp_path / "rec.zarr") == (MAY_1, "recording")


def test_the_config_time_is_unset_by_default_and_read_with_its_offset():
    assert load_config(None).start_time is None
    assert load_config({"session_start_time": "2022-02-02T02:02+02:00"}).start_time == CONFIGURED


def test_outside_the_platform_the_identifier_comes_from_input_and_config_hashed_as_ncaas_does(tmp_path, movie):
    folder = tmp_path / "experiment"
    (folder / "sub").mkdir(parents=True)
    tifffile.imwrite(folder / "a.tif", movie)
    (folder / "sub" / "notes.txt").write_text("day 1")
    os.symlink("a.tif", folder / "link.tif")
    lines = sorted(
        [
            ("a.tif", hashlib.sha256((folder / "a.tif").read_bytes()).hexdigest()),
            ("link.tif", "symlink:a.tif"),
            ("sub/notes.txt", hashlib.sha256(b"day 1").hexdigest()),
        ]
    )
    expected = hashlib.sha256("".join(f"{p}\0{h}\n" for p, h in lines).encode()).hexdigest()
    assert input_sha256(folder) == expected
    assert input_sha256(folder / "a.tif") == hashlib.sha256((folder / "a.tif").read_bytes()).hexdigest()

    config = tmp_path / "cfg.yaml"
    config.write_text("fs: 25\ngSig: 3\n")
    mapping = config_mapping(config)
    assert mapping["fs"] == 25 and isinstance(mapping["fs"], int)  # as written, like the platform's copy
    text = json.dumps(mapping, sort_keys=True, separators=(",", ":"))
    assert config_sha256(mapping) == hashlib.sha256(text.encode()).hexdigest()

    hashes = run_hashes(folder, mapping, environ={})
    assert hashes.source == "caliali" and hashes.hashes == {"input": expected, "config": config_sha256(mapping)}
    rule = f"config={config_sha256(mapping)}\ninput={expected}\n"
    assert hashes.identifier == "caliali-" + hashlib.sha256(rule.encode()).hexdigest()


def test_under_the_platform_its_hashes_are_used_as_given():
    given = {
        "NCAAS_INPUT_SHA256": "a" * 64,
        "NCAAS_CONFIG_SHA256": "b" * 64,
        "NCAAS_BLUEPRINT_SHA256": "c" * 64,
        "NCAAS_LOCK_SHA256": "d" * 64,
    }
    hashes = run_hashes("/nowhere", {}, environ=given)  # nothing is hashed: the input need not even exist
    assert hashes == RunHashes(
        {"input": "a" * 64, "config": "b" * 64, "blueprint": "c" * 64, "lock": "d" * 64}, "ncaas"
    )
    rule = "".join(f"{k}={v * 64}\n" for k, v in (("blueprint", "c"), ("config", "b"), ("input", "a"), ("lock", "d")))
    assert hashes.describe()["identifier"] == "caliali-" + hashlib.sha256(rule.encode()).hexdigest()


@pytest.mark.parametrize("value", ["2024-05-01T09:30:00Z", b"2024-05-01T09:30:00", np.bytes_(b"2024-05-01 09:30:00")])
def test_start_times_in_the_forms_files_store_them(value):
    from caliali.io._recorded import parse_time

    assert parse_time(value) == MAY_1
