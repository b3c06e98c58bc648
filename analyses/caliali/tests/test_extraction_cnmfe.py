"""CNMF-E source extraction on small synthetic movies with known footprints and traces."""

from __future__ import annotations

import numpy as np
import pytest

from caliali.config import CalialiConfig
from caliali.extraction import ExtractionError, ExtractionParams, extract, plan_batches
from caliali.extraction._footprints import Footprints
from caliali.extraction._merge import merge_components
from caliali.io import VideoReader

GSIG = 2.0


def _movie(centres, *, sessions=2, frames=400, dims=(40, 48), active=None, noise=0.04, seed=0, rate=0.02):
    """Gaussian neurons, spikes convolved with a double exponential, smooth drifting background, noise."""
    rng = np.random.default_rng(seed)
    h, w = dims
    yy, xx = np.mgrid[:h, :w]
    a = np.array([np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.6**2)) for cy, cx in centres], np.float32)
    a[a < 0.05] = 0
    t_total = sessions * frames
    s = (rng.random((len(centres), t_total)) < rate).astype(np.float32)
    if active is not None:
        for k, ses in enumerate(active):
            for j in range(sessions):
                if j not in ses:
                    s[k, j * frames : (j + 1) * frames] = 0
    t = np.arange(40)
    kernel = np.exp(-t / 5.8) - np.exp(-t / 1.25)
    c = np.concatenate(
        [
            [np.convolve(row, kernel / kernel.max())[:frames] for row in s[:, j * frames : (j + 1) * frames]]
            for j in range(sessions)
        ],
        axis=1,
    ).astype(np.float32)  # no carry-over between days
    background = 1.0 + 0.3 * np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (2 * 15.0**2))
    drift = 1 + 0.02 * np.sin(np.arange(t_total) / 150.0)
    y = (
        background[None] * drift[:, None, None]
        + np.tensordot(c, a, axes=(0, 0)) * 0.5
        + noise * rng.standard_normal((t_total, h, w))
    ).astype(np.float32)
    return y, a, c, np.arange(sessions + 1) * frames


def _cos(x, y):
    x, y = np.ravel(x).astype(float), np.ravel(y).astype(float)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-12))


def _match(result, a, c):
    """For every true neuron, the (footprint cosine, trace cosine) of its best estimated neuron."""
    images = result.footprint_images()
    out = []
    for k in range(len(a)):
        sims = [_cos(images[j], a[k]) for j in range(result.n_neurons)]
        j = int(np.argmax(sims))
        out.append((sims[j], _cos(result.C[j], c[k]), j))
    return out


def test_a_single_neuron_is_recovered():
    y, a, c, bounds = _movie([(20, 24)])
    y_before = y.copy()
    result = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400)
    assert np.array_equal(y, y_before), "the input movie was modified"
    assert result.n_neurons == 1
    ((fp, tr, _),) = _match(result, a, c)
    assert fp > 0.9 and tr > 0.9
    assert result.C.shape == result.S.shape == result.C_raw.shape == (1, 800)
    assert [part.shape[1] for part in result.by_session("C")] == [400, 400]


def test_two_overlapping_neurons_are_separated():
    y, a, c, bounds = _movie([(20, 20), (20, 25)], seed=3)
    assert _cos(a[0], a[1]) > 0.05  # the footprints do overlap
    result = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400)
    assert result.n_neurons == 2
    matches = _match(result, a, c)
    assert {j for _, _, j in matches} == {0, 1}
    for fp, tr, _ in matches:
        assert fp > 0.85 and tr > 0.85


def test_a_neuron_silent_in_one_session_stays_near_zero_there():
    y, a, c, bounds = _movie([(14, 14), (26, 34)], active=[{0, 1}, {0}], seed=5)
    result = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400)
    matches = _match(result, a, c)
    fp, tr, j = matches[1]
    assert fp > 0.9 and tr > 0.9
    first, second = result.by_session("C")
    assert second[j].max() < 0.1 * first[j].max()
    assert result.by_session("S")[1][j].sum() < 0.1 * result.by_session("S")[0][j].sum()


def test_duplicates_are_merged():
    dims = (30, 30)
    yy, xx = np.mgrid[:30, :30]
    blob = np.exp(-((yy - 15) ** 2 + (xx - 15) ** 2) / 8.0).astype(np.float32)
    left, right = np.where(xx < 15, blob, 0), np.where(xx >= 15, blob, 0)
    box = (5, 26, 5, 26)
    fp = Footprints(
        dims, [box, box, (0, 10, 0, 10)], [left[5:26, 5:26], right[5:26, 5:26], blob[10:20, 10:20] * 0 + 0.5]
    )
    rng = np.random.default_rng(0)
    trace = np.maximum(rng.normal(size=500), 0).astype(np.float32)
    other = np.maximum(rng.normal(size=500), 0).astype(np.float32)
    c = np.stack([trace, trace + 0.01 * rng.random(500), other]).astype(np.float32)
    merged, c_new, c_raw, n = merge_components(fp, c, c.copy(), merge_thr=0.65)
    assert n == 1 and len(merged) == 2 and c_new.shape == (2, 500)
    whole = merged.dense(0)
    assert _cos(whole, blob) > 0.97
    assert _cos(c_new[0], trace) > 0.99
    np.testing.assert_allclose(merged.dense(1), fp.dense(2))


class _ArrayReader(VideoReader):
    """A VideoReader over an in-memory movie that records the largest read."""

    def __init__(self, frames):
        self._frames, self.largest = frames, 0
        self.n_frames, self.frame_shape, self.dtype = frames.shape[0], frames.shape[1:], frames.dtype

    def _read(self, start, stop):
        self.largest = max(self.largest, stop - start)
        return self._frames[start:stop]


def test_the_video_is_read_one_bounded_batch_at_a_time():
    y, a, c, bounds = _movie([(20, 24)], sessions=2, frames=300)
    reader = _ArrayReader(y)
    reports = []
    result = extract(
        reader,
        session_bounds=bounds,
        gSig=GSIG,
        min_corr=0.3,
        min_pnr=5,
        batch_frames=120,
        progress=lambda fraction, message: reports.append((fraction, message)),
    )
    assert reader.largest <= 120
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and 0 <= fractions[0] and fractions[-1] == 1.0
    assert reports[-1][1] == "extraction done: 1 neurons"
    assert result.params["n_batches"] == 6
    assert result.n_neurons == 1


def test_batches_follow_the_budget_and_never_straddle_sessions():
    bounds = np.array([0, 1000, 1500, 4000])
    batches = plan_batches(bounds, (100, 100), memory_budget="96MB", copies=6)  # 400 frames fit
    assert all(b.stop - b.start <= 400 for b in batches) and len(batches) == 3 + 2 + 7
    for b in batches:
        assert bounds[b.session] <= b.start < b.stop <= bounds[b.session + 1]
    assert sum(b.stop - b.start for b in batches) == 4000
    assert plan_batches(bounds, (100, 100), batch_frames=5000) == [(0, 1000, 0), (1000, 1500, 1), (1500, 4000, 2)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"session_bounds": [0, 100, 90]}, "session_bounds must increase"),
        ({"session_bounds": [0, 50]}, "session_bounds must increase strictly from 0 to the number of frames"),
        ({"gSig": -1}, "gSig"),
        ({"memory_budget": "lots"}, "memory_budget 'lots' is not understood"),
        ({"min_corr": 0.99, "min_pnr": 500}, "no seed passes"),
        ({"cn": np.zeros((3, 3)), "pnr": np.zeros((3, 3))}, "cn and pnr must have the frame shape"),
    ],
)
def test_bad_input_gives_a_named_error(kwargs, message):
    y = np.random.default_rng(0).normal(size=(100, 20, 20)).astype(np.float32)
    options = {"gSig": GSIG, "batch_frames": 100, "min_corr": 0.3, "min_pnr": 5, **kwargs}
    if "memory_budget" in kwargs:
        options.pop("batch_frames")
    with pytest.raises(ExtractionError, match=message):
        extract(y, **options)


def test_options_as_params_or_keywords_give_the_same_extraction():
    y, _, _, bounds = _movie([(20, 24)], frames=200)
    params = ExtractionParams(gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=200)
    by_params = extract(y, params, session_bounds=bounds)
    by_keywords = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=200)
    overridden = extract(
        y, ExtractionParams(gSig=GSIG, min_corr=0.9), session_bounds=bounds, min_corr=0.3, min_pnr=5, batch_frames=200
    )
    for other in (by_keywords, overridden):
        np.testing.assert_array_equal(other.A.toarray(), by_params.A.toarray())
        np.testing.assert_array_equal(other.C, by_params.C)
        assert other.params == by_params.params
    assert by_params.params["min_corr"] == 0.3 and by_params.params["n_batches"] == 2


def test_params_refuse_bad_values_and_unknown_options_by_name():
    with pytest.raises(ExtractionError, match="merge_thr must lie in"):
        ExtractionParams(merge_thr=0)
    with pytest.raises(ExtractionError, match="min_snr must be a number >= 0 or 'auto', got 'high'"):
        ExtractionParams(min_snr="high")
    with pytest.raises(ExtractionError, match="unknown extraction option.*gsig.*known options are: gSig"):
        extract(np.zeros((10, 8, 8), np.float32), gsig=3)


def test_params_from_a_run_config_share_its_names_and_defaults():
    assert ExtractionParams.from_config(CalialiConfig(gSig=5)) == ExtractionParams(gSig=5.0, memory_budget="1GB")
    config = CalialiConfig(gSig=6, spatial_ds=2, batch_frames=300, min_corr=0.2, min_snr=2.5)
    assert ExtractionParams.from_config(config) == ExtractionParams(
        gSig=3.0, batch_frames=300, min_corr=0.2, min_snr=2.5, memory_budget="1GB"
    )


def test_a_movie_that_is_not_3d_is_refused():
    with pytest.raises(ExtractionError, match=r"shaped \(t, h, w\)"):
        extract(np.zeros((10, 10), np.float32), gSig=GSIG, batch_frames=10)


def test_components_fitted_to_noise_are_removed_and_weak_neurons_kept():
    from caliali.extraction._deconv import deconvolve_trace
    from caliali.extraction.cnmfe import _remove_false_positives

    rng = np.random.default_rng(1)
    frames, bounds = 2000, np.array([0, 2000, 4000])
    t = np.arange(40)
    kernel = np.exp(-t / 5.8) - np.exp(-t / 1.25)
    kernel /= kernel.max()
    spikes = np.zeros(2 * frames)
    spikes[[300, 900, 1500]] = 4.0  # a weak neuron (4 noise sd at its peaks), active in the first session only
    neuron = np.convolve(spikes, kernel)[: 2 * frames] + rng.standard_normal(2 * frames)
    neuron_c = np.concatenate([deconvolve_trace(neuron[s0:s1], p=1).c for s0, s1 in zip(bounds[:-1], bounds[1:])])
    # A component fitted to noise, as iterations leave it: its raw trace jumps for two frames now and
    # then, and its denoised trace claims a transient of 4 noise sd there that the raw trace never sustains.
    noise = rng.standard_normal(2 * frames)
    jumps = np.zeros(2 * frames)
    for i in rng.choice(2 * frames - 2, 6, replace=False):
        noise[i : i + 2] = (5.0, 3.5)
        jumps[i] = 4.0
    noise_c = np.convolve(jumps, 0.85 ** np.arange(40))[: 2 * frames]
    c_raw = np.stack([neuron, noise]).astype(np.float32)
    c = np.stack([neuron_c, noise_c]).astype(np.float32)
    resid = c_raw[1] - c[1]
    assert c[1].max() / (np.median(np.abs(resid - np.median(resid))) / 0.6745) > 3  # its peak alone passes 3 sd
    image = np.ones((3, 3), np.float32) / 3
    fp = Footprints((20, 20), [(2, 5, 2, 5), (10, 13, 10, 13)], [image, image])
    keep, _ = _remove_false_positives(fp, c, c_raw, min_pixels=3, min_snr=3.0, bounds=bounds)
    assert keep.tolist() == [0]


def test_the_automatic_seed_threshold_comes_from_the_pnr_image_and_is_recorded():
    from caliali.extraction import auto_min_pnr

    rng = np.random.default_rng(0)
    pnr = 3.0 + 0.5 * rng.standard_normal((60, 80))
    pnr[10:13, 10:13] = 12.0  # a neuron's centre: far above the bulk, and does not move the threshold
    level, how = auto_min_pnr(pnr)
    assert 3.8 < level < 4.2 and how.startswith("auto: median 2.99 + 2 x robust sd 0.51")
    mask = np.zeros(pnr.shape, bool)
    mask[:, :40] = True
    assert auto_min_pnr(pnr, mask)[0] == pytest.approx(auto_min_pnr(pnr[:, :40])[0])

    y, a, c, bounds = _movie([(20, 24)])
    result = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, batch_frames=400)
    assert result.n_neurons == 1
    assert isinstance(result.params["min_pnr"], float) and result.params["min_pnr_from"].startswith("auto: median")
    fixed = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400)
    assert fixed.params["min_pnr"] == 5 and fixed.params["min_pnr_from"] == "set"


def test_a_run_that_removes_every_component_says_what_to_check():
    y, _, _, bounds = _movie([(20, 24)])
    with pytest.raises(ExtractionError) as caught:
        extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400, min_snr=50)
    message = str(caught.value)
    assert message.startswith("every component was removed as a false positive (round 1: the last ")
    assert "scored an event SNR below 50.00" in message and f"check gSig ({GSIG:g} px; a radius well below" in message
    assert message.endswith("else lower min_snr, min_pnr or min_corr")


def test_footprints_smaller_than_gsig_squared_are_dropped_when_the_rounds_end(tmp_path):
    """CNMF-E's min_pixel (gSig^2) once the rounds end: the small footprint goes with its trace, the others keep
    theirs in order; when every footprint is that small, all stay (the user sees what the gSig found)."""
    from caliali.extraction._traces import TraceFile
    from caliali.extraction.cnmfe import _drop_too_small

    images = [np.ones((4, 4), np.float32), np.ones((2, 2), np.float32), np.ones((3, 3), np.float32)]
    fp = Footprints((20, 20), [(0, 4, 0, 4), (10, 12, 10, 12), (15, 18, 15, 18)], images)
    traces = np.arange(3 * 50, dtype=np.float32).reshape(3, 50)
    c = TraceFile((3, 50), directory=tmp_path)
    c[:] = traces
    kept, c2, dropped = _drop_too_small(fp, c, 9)  # gSig 3
    assert dropped == 1 and [im.size for im in kept.images] == [16, 9]
    assert np.array_equal(c2[:], traces[[0, 2]]) and kept.boxes == [(0, 4, 0, 4), (15, 18, 15, 18)]
    kept, c3, dropped = _drop_too_small(kept, c2, 17)  # every footprint too small: all stay
    assert dropped == 0 and len(kept) == 2 and c3 is c2


def test_a_footprint_that_sprawls_over_several_cells_is_told_from_cells_large_and_small():
    """A footprint whose mask (0.2 x max) covers more than 4 x the median one is a sprawl, not a cell; a
    cell 3 x the median, two merged neighbours and edge-cut cells are not. Fewer than 5 footprints: none."""
    from caliali.extraction.cnmfe import too_large_footprints

    yy, xx = np.mgrid[0:41, 0:41]

    def cell(sigma: float, width: int = 41) -> np.ndarray:
        return np.exp(-((yy - 20) ** 2 + (xx[:, :width] - 20) ** 2) / (2 * sigma**2))[:, :width].astype(np.float32)

    rng = np.random.default_rng(0)
    flat = (0.5 + 0.1 * rng.random((41, 41))).astype(np.float32)  # a noisy plateau, like the sprawls seen
    pair = cell(3) + np.roll(cell(3), 7, axis=1)  # two neighbours in one footprint
    images = [cell(3), cell(3.2), cell(2.8), cell(3.1), cell(3 * np.sqrt(3)), pair, cell(3)[:, :22], flat]
    fp = Footprints((200, 200), [(0, 41, 0, im.shape[1]) for im in images], images)
    areas = [np.count_nonzero(im > 0.2 * im.max()) for im in images]
    assert areas[4] > 2.5 * np.median(areas) and areas[-1] > 4 * np.median(areas)
    assert too_large_footprints(fp).tolist() == [False] * 7 + [True]
    assert not too_large_footprints(fp.subset([0, 1, 2, 7])).any()


def test_the_footprint_floor_never_exceeds_a_quarter_of_the_median_footprint():
    # gSig set 1.6 x too large (4.8 px for cells of 3): gSig^2 = 23 px would drop the smaller true cells
    from caliali.extraction.cnmfe import least_pixels

    sizes = [18, 20, 21, 21, 24, 25, 28, 32, 33, 35, 37, 39, 40, 43, 47, 50, 54, 58]
    fp = Footprints((200, 200), [(0, 1, 0, n) for n in sizes], [np.ones((1, n), np.float32) for n in sizes])
    assert least_pixels(fp, 4.8) == round(np.median(sizes) / 4) < min(sizes)
    assert least_pixels(fp, 3.0) == 8  # the right gSig: about CNMF-E's min_pixel (9; a quarter of the median 8.5)
    assert least_pixels(Footprints((200, 200), [(0, 1, 0, 60)] * 3, [np.ones((1, 60), np.float32)] * 3), 3.0) == 9
    assert least_pixels(fp, 1.0) == 3  # never under 3
    assert least_pixels(Footprints((5, 5), [], []), 3.0) == 9


def test_the_seed_threshold_of_one_batch_follows_the_peak_of_noise_over_its_frames():
    """min_pnr is set on the PNR image, each pixel's peak over the whole recording; a batch's peaks are lower.
    On white noise the batch threshold from the whole recording's median peak sits at the batches' median
    peak or a little above it (sqrt(2 ln n) overstates short maxima): like is compared with like."""
    from caliali._noise import psd_noise
    from caliali.extraction._initialize import batch_min_pnr

    y = np.random.default_rng(0).standard_normal((2000, 3000)).astype(np.float32)
    whole = float(np.median(y.max(axis=0) / psd_noise(y)))
    for frames in (100, 400):
        peaks = [
            np.median(y[i : i + frames].max(axis=0) / psd_noise(y[i : i + frames])) for i in range(0, 2000, frames)
        ]
        assert np.mean(peaks) <= batch_min_pnr(whole, frames, 2000) <= 1.08 * np.mean(peaks)
    assert batch_min_pnr(4.0, 2000, 2000) == 4.0 and batch_min_pnr(4.0, 3000, 2000) == 4.0  # one batch: as set
    assert batch_min_pnr(4.0, 1, 2000) == 0.0  # one frame has no noise to measure: the batch drops every seed


def test_how_the_rounds_ended_is_recorded():
    y, _, _, bounds = _movie([(20, 24)])
    done = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400)
    record, last = done.convergence, done.history[-1]
    assert record["converged"] and record["stop"] == last["stop"] in ("tol", "noise")
    assert record["rounds"] == len(done.history) and record["change"] == last["change"]
    assert record["why"].startswith("converged: ") and f"after {len(done.history)} round" in record["why"]
    assert all(h["too_large"] == 0 for h in done.history)  # one cell: nothing sprawls
    assert last["too_small"] >= 0 and all(n >= GSIG**2 for n in np.diff(done.A.tocsc().indptr))
    cut = extract(y, session_bounds=bounds, gSig=GSIG, min_corr=0.3, min_pnr=5, batch_frames=400, max_iter=1, tol=1e-9)
    assert cut.convergence["stop"] == "max_iter" and not cut.convergence["converged"]
    assert cut.convergence["why"].startswith("not converged after 1 round (max_iter): change ")
    assert "stop" not in cut.history[-1]


def _event_traces(seed: int, amplitudes: list[float], n_noise: int, frames: int = 2000):
    """Raw and AR(1)-denoised traces: one neuron per amplitude (4 transients, unit noise), then ``n_noise``
    traces of noise alone (components fitted to noise)."""
    from caliali.extraction._deconv import deconvolve_trace

    rng = np.random.default_rng(seed)
    t = np.arange(60)
    kernel = np.exp(-t / 5.8) - np.exp(-t / 1.25)
    kernel /= kernel.max()
    raws = []
    for amplitude in amplitudes:
        spikes = np.zeros(frames)
        spikes[rng.choice(frames - 60, 4, replace=False)] = amplitude
        raws.append(np.convolve(spikes, kernel)[:frames] + rng.standard_normal(frames))
    raws += [rng.standard_normal(frames) for _ in range(n_noise)]
    c_raw = np.stack(raws).astype(np.float32)
    c = np.stack([deconvolve_trace(r, p=1).c for r in raws]).astype(np.float32)
    return c, c_raw


def test_false_alarm_level_extrapolates_the_tail_of_the_dips():
    """The level where noise like the dips would pass ``expected`` of them, from their upper tail: on scores with
    a Gumbel tail (a best run's score is an extreme value) it finds the true quantile, beyond the largest dip."""
    from caliali.extraction._quality import false_alarm_level

    for k in (200, 2000):
        true = 1.3 - 0.1 * np.log(-np.log1p(-0.05 / k))  # P(score > true) = 0.05 / k
        found = [false_alarm_level(np.random.default_rng(s).gumbel(1.3, 0.1, k), expected=0.05) for s in range(40)]
        assert abs(np.median(found) - true) < 0.05, (k, true, np.median(found))
        samples = [np.random.default_rng(s).gumbel(1.3, 0.1, k) for s in range(40)]
        assert all(false_alarm_level(d) >= d.max() for d in samples)
    assert false_alarm_level(np.arange(9.0)) == np.inf  # too few to tell a tail
    assert false_alarm_level(np.full(20, 1.5)) == 1.5


def test_automatic_min_snr_lets_noise_through_rarely_up_to_3():
    """``min_snr="auto"``: a weak neuron (event SNR between the noise and 3) is kept where 3 would drop it, none of
    80 components fitted to noise passes, and over 20 draws of the noise about one in 20 runs lets one through
    where the deepest dip as the level (the record) lets about one through in every run; a trace that dips
    beyond 3 caps the level at 3."""
    from caliali.extraction._quality import dip_snrs, event_frames, event_snr, false_alarm_level
    from caliali.extraction.cnmfe import _remove_false_positives

    bounds = np.array([0, 2000])
    c, c_raw = _event_traces(0, [8.0] * 10 + [2.0], 80)  # ten clear neurons, then a weak one (index 10)
    n = event_frames(c, c_raw)
    weak, record = event_snr(c_raw[10], c[10], bounds, n), dip_snrs(c, c_raw, bounds, n).max()
    level = false_alarm_level(dip_snrs(c, c_raw, bounds, n))
    assert record < level < weak < 3.0
    image = np.ones((3, 3), np.float32) / 3
    fp = Footprints((20, 20), [(2, 5, 2, 5)] * len(c), [image] * len(c))
    keep, used = _remove_false_positives(fp, c, c_raw, min_pixels=3, min_snr="auto", bounds=bounds)
    assert used == level and keep.tolist() == list(range(11))
    keep, used = _remove_false_positives(fp, c, c_raw, min_pixels=3, min_snr=3.0, bounds=bounds)
    assert used == 3.0 and keep.tolist() == list(range(10))
    passed_level = passed_record = 0
    for draw in range(1, 21):
        c, c_raw = _event_traces(draw, [8.0] * 10, 80)
        n = event_frames(c, c_raw)
        snr = np.array([event_snr(c_raw[k], c[k], bounds, n) for k in range(10, len(c))])
        dips = dip_snrs(c, c_raw, bounds, n)
        passed_level += int((snr >= false_alarm_level(dips)).sum())
        passed_record += int((snr >= dips.max()).sum())
    assert passed_record >= 10 and passed_level <= 3, (passed_record, passed_level)
    # one neuron's trace dipping 4 noise sd for 15 frames: the noise reaches beyond 3, so 'auto' asks 3
    c, c_raw = _event_traces(0, [8.0] * 10, 80)
    c_raw[0, 500:515] -= 4.0
    fp = fp.subset(range(len(c)))
    keep, used = _remove_false_positives(fp, c, c_raw, min_pixels=3, min_snr="auto", bounds=bounds)
    assert dip_snrs(c, c_raw, bounds, n).max() > 3.0 and used == 3.0 and keep.tolist() == list(range(10))
    # traces too short to score a run (2 frames): no dips, so the cap; every event scores -inf
    keep, used = _remove_false_positives(fp, c[:, :2], c_raw[:, :2], min_pixels=3, min_snr="auto", bounds=[0, 2])
    assert used == 3.0 and keep.size == 0
