"""Every reader returns the frames written, chunk by chunk, as float32 grey."""

from __future__ import annotations

from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from caliali.io import open_video

REAL_DATA = Path(__file__).resolve().parents[3].parent / "shared" / "data"  # ../shared/data beside the repository
FORMATS = [".tif", ".avi", ".h5", ".zarr", ".nwb"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_reader_returns_written_frames_in_chunks(tmp_path, movie, write_video, suffix):
    frames = movie if suffix != ".avi" else (movie // 16).astype(np.uint8)
    path = write_video(tmp_path / f"movie{suffix}", frames)
    with open_video(path) as video:
        assert video.n_frames == len(frames)
        assert video.frame_shape == frames.shape[1:]
        assert video.dtype == frames.dtype
        chunks = list(video.iter_chunks(10))
        assert [len(c) for c in chunks] == [10, 10, 10, 7]
        assert all(c.dtype == np.float32 for c in chunks)
        np.testing.assert_array_equal(np.concatenate(chunks), frames.astype(np.float32))
        np.testing.assert_array_equal(video.read(20, 25), frames[20:25].astype(np.float32))
        np.testing.assert_array_equal(video.read(3, 4), frames[3:4].astype(np.float32))  # backwards


def test_sixteen_bit_avi_keeps_every_bit(tmp_path, movie, write_video):
    path = write_video(tmp_path / "deep.avi", movie * 16)
    with open_video(path) as video:
        assert video.dtype == np.uint16
        np.testing.assert_array_equal(video.read(), (movie * 16).astype(np.float32))


def test_reading_never_modifies_returned_chunks_across_calls(tmp_path, movie, write_video):
    path = write_video(tmp_path / "movie.tif", movie)
    with open_video(path) as video:
        first = video.read(0, 5)
        first += 1000
        np.testing.assert_array_equal(video.read(0, 5), movie[:5].astype(np.float32))


def test_float32_tif_is_exact_and_bigtiff_reads(tmp_path):
    frames = np.random.default_rng(1).standard_normal((12, 16, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "big.tif", frames, bigtiff=True, photometric="minisblack")
    with open_video(tmp_path / "big.tif") as video:
        assert video._tif.is_bigtiff
        np.testing.assert_array_equal(video.read(2, 9), frames[2:9])


def test_imagej_and_page_per_frame_tiffs(tmp_path, movie):
    tifffile.imwrite(tmp_path / "ij.tif", movie, imagej=True)
    tifffile.imwrite(tmp_path / "ijt.tif", movie, imagej=True, metadata={"axes": "TYX"})
    with tifffile.TiffWriter(tmp_path / "pages.tif") as tw:
        for frame in movie:
            tw.write(frame, photometric="minisblack", metadata=None)
    for name in ("ij.tif", "ijt.tif", "pages.tif"):
        with open_video(tmp_path / name) as video:
            assert video.n_frames == len(movie)
            np.testing.assert_array_equal(np.concatenate(list(video.iter_chunks(8))), movie.astype(np.float32))


def test_colour_tiff_and_hdf5_become_grey(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (5, 12, 14, 3)).astype(np.uint8)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in rgb]).astype(np.float32)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with h5py.File(tmp_path / "rgb.h5", "w") as f:
        f["mov"] = rgb
    for name in ("rgb.tif", "rgb.h5"):
        with open_video(tmp_path / name) as video:
            assert video.frame_shape == (12, 14)
            np.testing.assert_allclose(video.read(), expected, atol=0.51)  # OpenCV rounds to integers


def test_colour_avi_becomes_grey(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (6, 16, 24, 3)).astype(np.uint8)
    writer = cv2.VideoWriter(str(tmp_path / "colour.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 10, (24, 16), True)
    for frame in rgb:
        writer.write(frame)  # OpenCV writes BGR
    writer.release()
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in rgb]).astype(np.float32)
    with open_video(tmp_path / "colour.avi") as video:
        assert video.frame_shape == (16, 24)
        np.testing.assert_array_equal(video.read(), expected)


def test_hdf5_dataset_option_and_automatic_choice(tmp_path, movie):
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["analysis/mean"] = movie[0]  # 2-D: never a movie
        f["acquisition/mov"] = movie
        f["acquisition/other"] = movie[:5]
    with open_video(tmp_path / "two.h5", dataset="/acquisition/other") as video:
        assert video.n_frames == 5
    with open_video(tmp_path / "two.h5") as video:  # 'mov' is a preferred name
        assert video.n_frames == len(movie)


def test_zarr_group_and_minian_style_array(tmp_path, movie):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("varr", data=movie, chunks=(8, 24, 32))
    with open_video(tmp_path / "g.zarr") as video:
        np.testing.assert_array_equal(video.read(9, 17), movie[9:17].astype(np.float32))
    with open_video(tmp_path / "g.zarr", dataset="varr") as video:
        assert video.n_frames == len(movie)


def test_nwb_two_photon_series_by_name(tmp_path, movie, write_video):
    path = write_video(tmp_path / "two.nwb", movie, kind="two", name="raw", extra="short")
    with open_video(path, dataset="raw") as video:
        assert video.fs == 10.0
        np.testing.assert_array_equal(video.read(30, 37), movie[30:].astype(np.float32))
    with open_video(path, dataset="short") as video:
        assert video.n_frames == 2


@pytest.mark.skipif(
    not (REAL_DATA / "minian_demo").is_dir(),
    reason="real recordings in ../shared/data (beside the repository) are absent",
)
def test_real_miniscope_mp4_reads_as_grey():
    with open_video(REAL_DATA / "minian_demo" / "minian_demo.mp4") as video:
        assert (video.n_frames, video.frame_shape) == (500, (480, 752))
        chunks = list(video.iter_chunks(50, stop=120))
        assert [len(c) for c in chunks] == [50, 50, 20]
        assert chunks[0].ndim == 3 and 0 < chunks[0][:, :240, :376].mean() < 255


@pytest.mark.skipif(
    not (REAL_DATA / "sima_example").is_dir(),
    reason="real recordings in ../shared/data (beside the repository) are absent",
)
def test_real_two_photon_tif():
    path = REAL_DATA / "sima_example" / "example.tif"
    with open_video(path) as video:
        assert video.n_frames == 20 and video.frame_shape == (128, 256)
        np.testing.assert_array_equal(video.read(), tifffile.imread(path).reshape(20, 128, 256).astype(np.float32))


@pytest.mark.skipif(
    not (REAL_DATA / "minian_fixture").is_dir(),
    reason="real recordings in ../shared/data (beside the repository) are absent",
)
def test_real_minian_zarr_v2():
    with open_video(REAL_DATA / "minian_fixture" / "org.zarr") as video:
        assert video.frame_shape == (480, 752) and video.n_frames == 100
        assert video.read(0, 10).shape == (10, 480, 752)
