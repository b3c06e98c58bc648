"""The blood-vessel filter: dark tubes only, scale-space Hessian, vignetting
removal, and the simulator's vessels versus its neurons."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import scipy.ndimage as ndi

from caliali.experiment import load_experiment
from caliali.io import open_video
from caliali.projections import ProjectionError, bv_filter, bv_scales, remove_vignetting


def _lines(dark: bool) -> np.ndarray:
    img = np.ones((64, 80), np.float32)
    img[:, 36:40] += -0.4 if dark else 0.4
    return img


def test_dark_tubes_respond_bright_tubes_do_not():
    dark = bv_filter(_lines(dark=True), gSig=3)
    bright = bv_filter(_lines(dark=False), gSig=3)
    assert dark.dtype == np.float32 and 0.95 < dark.max() <= 1.0
    assert dark[32, 37:39].min() > 0.5 and dark[32, 5:20].max() < 0.05
    # Bright ridges have a negative Hessian trace: no response on the ridge.
    assert bright[10:54, 36:40].max() < 0.05


def test_hessian_matches_gaussian_derivative_filters():
    rng = np.random.default_rng(0)
    img = (1 + 0.2 * ndi.gaussian_filter(rng.standard_normal((96, 96)), 2)).astype(np.float32)
    flat = remove_vignetting(img).astype(np.float64)
    ref = np.zeros_like(flat)
    for s in bv_scales(4):
        hyy = ndi.gaussian_filter(flat, s, order=(2, 0), mode="reflect")
        hxx = ndi.gaussian_filter(flat, s, order=(0, 2), mode="reflect")
        hxy = ndi.gaussian_filter(flat, s, order=(1, 1), mode="reflect")
        tr = hxx + hyy
        lam = (tr + np.sqrt((hxx - hyy) ** 2 + 4 * hxy**2)) / 2 * s * s
        ref = np.maximum(ref, np.where(tr > 0, lam, 0))
    ours = bv_filter(img, gSig=4, median=False)
    assert np.corrcoef(ours.ravel(), (ref / ref.max()).ravel())[0, 1] > 0.98


def test_vignetting_is_removed():
    yy, xx = np.mgrid[0:120, 0:160].astype(np.float32)
    vignette = np.exp(-((yy - 60) ** 2 + (xx - 80) ** 2) / (2 * 70.0**2))
    texture = 1 + 0.1 * np.sin(xx / 3) * np.sin(yy / 4)
    flat = remove_vignetting((vignette * texture).astype(np.float32))
    smooth_in = cv2.GaussianBlur(vignette * texture, (0, 0), 8)
    smooth_out = cv2.GaussianBlur(flat, (0, 0), 8)
    inner = (slice(20, 100), slice(20, 140))
    assert smooth_out[inner].std() / smooth_out[inner].mean() < 0.3 * smooth_in[inner].std() / smooth_in[inner].mean()


def test_stack_is_filtered_frame_by_frame():
    stack = np.stack([_lines(True), _lines(True)[:, ::-1].copy()])
    out = bv_filter(stack, gSig=3)
    np.testing.assert_allclose(out[1], bv_filter(stack[1], gSig=3))


def test_bad_input():
    with pytest.raises(ProjectionError, match="gSig"):
        bv_filter(_lines(True), gSig=0)
    with pytest.raises(ProjectionError, match="NaN"):
        bv_filter(np.full((20, 20), np.nan), gSig=2)
    with pytest.raises(ProjectionError, match=r"\(h, w\)"):
        bv_filter(np.zeros((4, 4)), gSig=2)


def to_reference(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """Resample a session image into the simulator's reference frame (backward field)."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return cv2.remap(
        image.astype(np.float32),
        xx + field[1].astype(np.float32),
        yy + field[0].astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )


def test_responds_on_simulated_vessels_not_on_neurons(simulation):
    sim = simulation(sessions=1, frames=200, within_motion=True)
    session = load_experiment(sim.manifest).sessions[0]
    with open_video(session.files[0]) as video:
        median = np.median(video.read(0, 100), axis=0)
    field = np.load(sim.ground_truth / "fields.npy")[0]
    bv = to_reference(bv_filter(median, gSig=sim.meta["gSig"]), field)
    vessels = np.load(sim.ground_truth / "vessels.npy")
    footprints = np.load(sim.ground_truth / "A.npy")
    on_vessel = vessels > 0.5 * vessels.max()
    on_neuron = (footprints / footprints.max(axis=(1, 2), keepdims=True)).max(axis=0) > 0.5
    on_neuron &= ~ndi.binary_dilation(on_vessel, iterations=3)
    assert bv[on_vessel].mean() > 0.3
    assert bv[on_neuron].mean() < 0.1 * bv[on_vessel].mean()
