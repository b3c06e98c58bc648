"""Resumable float32 zarr intermediates, including a process killed mid-write."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr

from caliali.exceptions import InputError, StoreError
from caliali.io import open_video
from caliali.store import FrameStore, default_chunk_frames


def test_append_read_and_reopen(tmp_path):
    store = FrameStore.create(tmp_path / "s.zarr", (5, 6), chunk_frames=4, params={"a": 1}, fs=10.0)
    data = np.random.default_rng(0).standard_normal((11, 5, 6))
    store.append(data[:3])
    store.append(data[3:].astype(np.float64))
    store.mark_complete()
    again = FrameStore.open(tmp_path / "s.zarr")
    assert (again.n_frames, again.frame_shape, again.complete, again.params, again.fs) == (
        11,
        (5, 6),
        True,
        {"a": 1},
        10.0,
    )
    np.testing.assert_array_equal(again.read(), data.astype(np.float32))
    assert [len(c) for c in again.iter_chunks(4)] == [4, 4, 3]
    array = zarr.open_array(str(tmp_path / "s.zarr"), mode="r")
    assert array.dtype == np.float32 and array.chunks == (4, 5, 6)
    with open_video(tmp_path / "s.zarr") as video:  # any zarr reader sees the frames
        assert video.n_frames == 11


def test_default_chunk_is_about_16_mib():
    assert default_chunk_frames((512, 512)) == 16
    assert default_chunk_frames((4000, 4000)) == 1


def test_resume_keeps_matching_store_and_replaces_others(tmp_path):
    path = tmp_path / "r.zarr"
    FrameStore.create(path, (4, 4), params={"k": 1}).append(np.ones((3, 4, 4)))
    assert FrameStore.resume(path, (4, 4), params={"k": 1}).n_frames == 3
    assert FrameStore.resume(path, (4, 4), params={"k": 2}).n_frames == 0
    FrameStore.create(path, (4, 4)).append(np.ones((3, 4, 4)))
    assert FrameStore.resume(path, (5, 4)).n_frames == 0


def test_bad_appends_and_read_only(tmp_path):
    store = FrameStore.create(tmp_path / "b.zarr", (4, 4))
    with pytest.raises(InputError, match="cannot append frames shaped \\(2, 3, 4\\)"):
        store.append(np.ones((2, 3, 4)))
    with pytest.raises(StoreError, match="read-only"):
        FrameStore.open(tmp_path / "b.zarr").append(np.ones((1, 4, 4)))


def test_unreadable_store_says_to_delete_it(tmp_path):
    store = FrameStore.create(tmp_path / "c.zarr", (4, 4))
    (store.path / "progress.json").write_text("{not json")
    with pytest.raises(StoreError, match="c.zarr: not a caliali frame store.*delete it"):
        FrameStore.open(tmp_path / "c.zarr")
    assert FrameStore.resume(tmp_path / "c.zarr", (4, 4)).n_frames == 0  # resume starts afresh


_WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from caliali.store import FrameStore
    store = FrameStore.resume(sys.argv[1], (64, 64), chunk_frames=7, params={"run": "kill"})
    print(store.n_frames, flush=True)
    while True:
        n = store.n_frames
        store.append(np.arange(n, n + 5, dtype=np.float32)[:, None, None] * np.ones((1, 64, 64), np.float32))
    """
)


def test_killed_writer_resumes_from_last_committed_chunk(tmp_path):
    """SIGKILL at an arbitrary moment: the store reopens consistent, tail discarded."""
    path = tmp_path / "k.zarr"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "0"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = path / "progress.json"
        if progress.exists() and json.loads(progress.read_text() or '{"frames": 0}')["frames"] >= 40:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    store = FrameStore.resume(path, (64, 64), chunk_frames=7, params={"run": "kill"})
    committed = store.n_frames
    assert committed >= 40 and committed % 5 == 0
    assert zarr.open_array(str(path), mode="r").shape[0] == committed  # uncommitted tail dropped
    np.testing.assert_array_equal(store.read()[:, 10, 20], np.arange(committed, dtype=np.float32))
    store.append(np.full((2, 64, 64), -1, np.float32))
    assert FrameStore.open(path).read(committed, committed + 2).max() == -1
