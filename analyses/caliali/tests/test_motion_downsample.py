"""Spatial and temporal downsampling, whole and streaming."""

from __future__ import annotations

import numpy as np
import pytest

from caliali.motion import MotionError, downsample_chunks, downsample_spatial, downsample_temporal


def test_spatial_is_block_mean_and_drops_remainder():
    rng = np.random.default_rng(0)
    movie = rng.random((3, 7, 10)).astype(np.float32)
    out = downsample_spatial(movie, 3)
    assert out.shape == (3, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[1, 1, 2], movie[1, 3:6, 6:9].mean(), rtol=1e-6)


def test_temporal_averages_groups_and_keeps_a_short_tail():
    movie = np.arange(7, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    out = downsample_temporal(movie, 3)
    np.testing.assert_allclose(out[:, 0, 0], [1.0, 4.0, 6.0])


@pytest.mark.parametrize("sizes", [[5, 5, 5, 2], [1, 1, 13, 2], [17]])
def test_streaming_equals_whole_movie(sizes):
    rng = np.random.default_rng(1)
    movie = rng.random((17, 8, 12)).astype(np.float32)
    edges = np.cumsum([0, *sizes])
    chunks = [movie[a:b] for a, b in zip(edges[:-1], edges[1:], strict=True)]
    streamed = np.concatenate(list(downsample_chunks(chunks, spatial_ds=2, temporal_ds=4)))
    whole = downsample_temporal(downsample_spatial(movie, 2), 4)
    np.testing.assert_allclose(streamed, whole, rtol=1e-6)


def test_factors_are_validated():
    with pytest.raises(MotionError, match="whole number"):
        downsample_spatial(np.zeros((2, 4, 4)), 1.5)
    with pytest.raises(MotionError, match="larger than the frame"):
        downsample_spatial(np.zeros((2, 4, 4)), 5)
    with pytest.raises(MotionError, match="temporal_ds"):
        list(downsample_chunks([np.zeros((2, 4, 4))], temporal_ds=0))
