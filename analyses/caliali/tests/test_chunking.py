"""Memory budgets, chunk sizes, and the shared chunk loop."""

from __future__ import annotations

import numpy as np
import pytest

from caliali.chunking import batch_frames_for, iter_chunks, parse_memory_budget, print_progress, run_chunks
from caliali.exceptions import InputError, MemoryBudgetError
from caliali.experiment import load_experiment
from caliali.io import open_video


@pytest.mark.parametrize(
    "value,expected",
    [
        (1024, 1024),
        ("2GB", 2_000_000_000),
        ("512MiB", 512 * 2**20),
        ("1.5 GiB", int(1.5 * 2**30)),
        ("300k", 300_000),
        (" 7 ", 7),
        (2.5e9, 2_500_000_000),
    ],
)
def test_parse_memory_budget(value, expected):
    assert parse_memory_budget(value) == expected


@pytest.mark.parametrize("value", ["lots", "2 parsecs", "-1GB", 0, "GB"])
def test_bad_memory_budget_says_how_to_write_it(value):
    with pytest.raises(MemoryBudgetError, match="memory_budget"):
        parse_memory_budget(value)


def test_auto_budget_is_half_of_available_memory():
    import psutil

    assert 0 < parse_memory_budget("auto") <= psutil.virtual_memory().total // 2


def test_batch_frames_from_budget():
    # 600 x 600 float32 = 1.44 MB a frame; 4 copies = 5.76 MB
    assert batch_frames_for("576MB", (600, 600)) == 100
    assert batch_frames_for("576MB", (600, 600), copies=8) == 50
    assert batch_frames_for("576MB", (600, 600), max_frames=30) == 30
    with pytest.raises(MemoryBudgetError, match="cannot hold one 600x600 frame.*raise memory_budget"):
        batch_frames_for("1MB", (600, 600))


@pytest.fixture
def experiment(tmp_path, write_video):
    """Two sessions: s1 = 23 + 9 frames in two files, s2 = 14 frames; frame t has value t."""
    values = np.arange(46, dtype=np.float32)[:, None, None] * np.ones((1, 6, 7), np.float32)
    write_video(tmp_path / "s1_b1.tif", values[:23])
    write_video(tmp_path / "s1_b2.tif", values[23:32])
    write_video(tmp_path / "s2.tif", values[32:])
    return load_experiment(tmp_path)


def test_chunks_cover_every_frame_in_order_without_spanning_files(experiment):
    chunks = list(iter_chunks(experiment, batch_frames=10))
    assert [(c.start, c.stop) for c in chunks] == [(0, 10), (10, 20), (20, 23), (23, 32), (32, 42), (42, 46)]
    assert [c.session_id for c in chunks] == ["s1"] * 4 + ["s2"] * 2
    assert [c.session_start for c in chunks] == [0, 10, 20, 23, 0, 10]
    assert [c.first_in_session for c in chunks] == [True, False, False, False, True, False]
    assert [c.last_in_session for c in chunks] == [False, False, False, True, False, True]
    assert [c.index for c in chunks] == list(range(6))
    for c in chunks:
        np.testing.assert_array_equal(c.data[:, 0, 0], np.arange(c.start, c.stop))


def test_start_skips_without_reading_and_keeps_indices(experiment):
    chunks = list(iter_chunks(experiment, batch_frames=10, start=30))
    assert [(c.start, c.stop, c.index) for c in chunks] == [(30, 32, 3), (32, 42, 4), (42, 46, 5)]


def test_sources_session_reader_and_path(experiment, tmp_path):
    assert [c.stop for c in iter_chunks(experiment.sessions[1], batch_frames=100)] == [14]
    with open_video(tmp_path / "s2.tif") as video:
        assert [len(c.data) for c in iter_chunks(video, batch_frames=5)] == [5, 5, 4]
        assert video.read(0, 1).shape == (1, 6, 7)  # the loop did not close a reader it was lent
    assert sum(len(c.data) for c in iter_chunks(tmp_path, batch_frames=7)) == 46


def test_progress_is_monotonic_and_reaches_one(experiment, capsys):
    seen = []
    list(iter_chunks(experiment, batch_frames=10, progress=lambda f, m: seen.append((f, m)), label="demo"))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert seen[0][1].startswith("demo: session s1 (1/2)")
    print_progress(0.5, "half")
    assert capsys.readouterr().out == "NCAAS_PROGRESS 0.5000 half\n"


def test_run_chunks_without_output_calls_every_chunk(experiment):
    sums = []
    assert run_chunks(experiment, lambda c: sums.append(c.data.sum()), batch_frames=16) is None
    assert len(sums) == 4  # 16 + 7 | 9 | 14: chunks never span files


def test_run_chunks_resumes_after_interruption(experiment, tmp_path):
    calls = []

    class Interrupted(Exception):
        pass

    def centre(chunk, fail_at=None):
        calls.append(chunk.index)
        if chunk.index == fail_at:
            raise Interrupted
        return chunk.data - chunk.data.mean(axis=0)

    with pytest.raises(Interrupted):
        run_chunks(experiment, lambda c: centre(c, fail_at=3), batch_frames=10, out=tmp_path / "c.zarr")
    assert calls == [0, 1, 2, 3]
    calls.clear()
    store = run_chunks(experiment, centre, batch_frames=10, out=tmp_path / "c.zarr")
    assert calls == [3, 4, 5]  # chunks 0-2 were committed and not recomputed
    reference = run_chunks(experiment, centre, batch_frames=10, out=tmp_path / "ref.zarr")
    np.testing.assert_array_equal(store.read(), reference.read())
    assert store.complete
    calls.clear()
    again = run_chunks(experiment, centre, batch_frames=10, out=tmp_path / "c.zarr")
    assert calls == [] and again.n_frames == 46  # complete: nothing recomputed


def test_run_chunks_recomputes_when_params_change(experiment, tmp_path):
    run_chunks(experiment, lambda c: c.data, batch_frames=10, out=tmp_path / "x.zarr", params={"gain": 1})
    store = run_chunks(experiment, lambda c: 2 * c.data, batch_frames=10, out=tmp_path / "x.zarr", params={"gain": 2})
    assert store.read(5, 6)[0, 0, 0] == 10.0


def test_run_chunks_output_of_other_length_resumes(experiment, tmp_path):
    """A stage halving time (mean of frame pairs) resumes by input frames."""
    halve = lambda c: c.data[: len(c.data) // 2 * 2].reshape(-1, 2, 6, 7).mean(axis=1)  # noqa: E731

    def flaky(c):
        if c.index == 2 and not flaky.failed:
            flaky.failed = True
            raise RuntimeError("stop")
        return halve(c)

    flaky.failed = False
    with pytest.raises(RuntimeError):
        run_chunks(experiment, flaky, batch_frames=10, out=tmp_path / "h.zarr")
    store = run_chunks(experiment, flaky, batch_frames=10, out=tmp_path / "h.zarr")
    assert store.source_frames == 46
    np.testing.assert_array_equal(
        store.read(), run_chunks(experiment, halve, batch_frames=10, out=tmp_path / "r.zarr").read()
    )


def test_run_chunks_rejects_missing_results(experiment, tmp_path):
    with pytest.raises(InputError, match="returned nothing"):
        run_chunks(experiment, lambda c: None, batch_frames=10, out=tmp_path / "n.zarr")
    with pytest.raises(InputError, match="batch_frames must be a positive integer"):
        list(iter_chunks(experiment, batch_frames=0))


def test_store_chunks_align_with_batches():
    from caliali.chunking import aligned_chunk_frames

    assert aligned_chunk_frames(177, (300, 300)) == 177  # one 64 MiB chunk per append
    assert aligned_chunk_frames(600, (300, 300)) == 150  # 16 MiB default is 46 frames; at most 4x that
    assert aligned_chunk_frames(10, (6, 7)) == 10
    assert aligned_chunk_frames(97, (300, 300)) == 97
    assert aligned_chunk_frames(197, (300, 300)) == 46  # a prime over 64 MiB: keep ~16 MiB chunks
