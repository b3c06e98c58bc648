"""The same input gives the same bits, in any process.

Three sources of run-to-run differences were found on real recordings and
removed: OpenCV's IPP kernels (``cv2.magnitude`` in the blood-vessel filter gave
different bits in different processes), OpenCV's threads (a DFT-based
``cv2.filter2D`` from kernels of 11 x 11 up gave different bits from call to
call) and OASIS's AR estimate, which draws from NumPy's unseeded global random
state. Each test runs the code in fresh
processes, where those differences showed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

BV_SCRIPT = textwrap.dedent(
    """
    import hashlib
    import numpy as np
    from scipy.ndimage import gaussian_filter
    from caliali.projections.vessels import bv_filter
    rng = np.random.default_rng(1)
    frames = (100 + 20 * gaussian_filter(rng.standard_normal((20, 120, 188)), (0, 2, 2))).astype(np.float32)
    print(hashlib.sha256(bv_filter(frames, gSig=3).tobytes()).hexdigest())
    """
)


def _run(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_blood_vessel_filter_gives_the_same_bits_in_every_process():
    digests = {_run(BV_SCRIPT) for _ in range(3)}
    assert len(digests) == 1, f"bv_filter gave {len(digests)} different results for one input in 3 processes"


def test_opencv_is_used_without_ipp_wherever_caliali_imports_it():
    from pathlib import Path

    import caliali
    from caliali._cv2 import cv2

    assert not cv2.ipp.useIPP()
    root = Path(caliali.__file__).parent
    direct = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if p.name != "_cv2.py" and any(line.strip() == "import cv2" for line in p.read_text().splitlines())
    ]
    assert direct == [], f"import cv2 through caliali._cv2 (IPP off), not directly: {direct}"


@pytest.mark.parametrize("gsig", [4, 6])
def test_the_high_pass_filter_gives_the_same_bits_every_call_with_a_large_kernel(gsig):
    """From gSig 4 the kernel is 13 x 13 or more, which OpenCV filters through a DFT; with OpenCV's
    threads on, its parallel parts summed in a changing order (5 different results in 6 calls)."""
    from caliali._cv2 import cv2
    from caliali.extraction._summary import highpass, highpass_kernel

    assert cv2.getNumThreads() == 1
    rng = np.random.default_rng(2)
    frames = (100 + 20 * rng.standard_normal((2, 480, 752))).astype(np.float32)
    kernel = highpass_kernel(gsig)
    assert kernel.shape[0] >= 11
    digests = {highpass(frames, kernel).tobytes() for _ in range(6)}
    assert len(digests) == 1, f"the high-pass gave {len(digests)} different results for one input in 6 calls"


def _noise_traces(n: int = 40, t: int = 300) -> np.ndarray:
    """Calcium-like traces in noise; OASIS's AR(2) fit of several falls back on its random draw."""
    rng = np.random.default_rng(7)
    spikes = (rng.random((n, t)) < 0.02).astype(np.float64)
    kernel = np.exp(-np.arange(40) / 8.0)
    calcium = np.stack([np.convolve(s, kernel)[:t] for s in spikes])
    return calcium * rng.uniform(0, 3, (n, 1)) + rng.standard_normal((n, t))


def test_oasis_alone_depends_on_the_global_random_state():
    """The reason for the fix below: without it the same trace deconvolves differently."""
    from oasis.functions import deconvolve

    traces = _noise_traces()

    def run(seed: int) -> list[np.ndarray]:
        np.random.seed(seed)
        return [deconvolve(y, tau_d=None, tau_r=None, sn=1.0, penalty=1)[0] for y in traces]

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OASIS's own numerical warnings
        first, second = run(1), run(2)
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))


def test_deconvolution_does_not_depend_on_or_change_the_global_random_state():
    from caliali.extraction._deconv import deconvolve_trace

    traces = _noise_traces()
    np.random.seed(1)
    first = [deconvolve_trace(y, p=2, sn=1.0) for y in traces]
    np.random.seed(2)
    before = np.random.get_state()[1].copy()
    second = [deconvolve_trace(y, p=2, sn=1.0) for y in traces]
    assert np.array_equal(np.random.get_state()[1], before), "deconvolution changed the caller's random state"
    for a, b in zip(first, second):
        assert np.array_equal(a.c, b.c) and np.array_equal(a.s, b.s) and a.g == b.g


# -- whole runs ---------------------------------------------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    """Every output file's bytes; summary.json without its ``run`` section (this run's timings and host)."""
    out = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    summary = json.loads(out["summary.json"])
    assert set(summary["run"]) >= {"seconds", "stages"}, "summary.json keeps its run facts in its run section"
    del summary["run"]
    out["summary.json"] = json.dumps(summary, sort_keys=True).encode()
    return out


def _differing(a: Path, b: Path) -> list[str]:
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb), "the two runs wrote different files"
    return [name for name in fa if fa[name] != fb[name]]


def _start_run(movie: Path, config: dict, out: Path) -> subprocess.Popen:
    cfg = out.parent / f"{out.name}.json"
    cfg.write_text(json.dumps(config))
    return subprocess.Popen(
        [sys.executable, "-m", "caliali", "run", "--input", str(movie), "--config", str(cfg), "--output", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    output, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, output[-3000:]


@pytest.mark.slow
def test_two_runs_of_a_real_recording_at_once_write_the_same_bytes(quadrant_runs):
    """Run side by side (each loads the machine for the other): every output file byte for byte."""
    (run1, code1, said1), (run2, code2, said2) = quadrant_runs  # without the residual's seeds, for time
    assert code1 == 0 and code2 == 0, said1[-3000:] + said2[-3000:]
    assert _differing(run1, run2) == []


@pytest.mark.slow
def test_two_runs_of_a_real_recording_at_full_resolution_write_the_same_bytes(minian_fixture_runs):
    """gSig 4 at full resolution (minian's 100-frame fixture): a 13 x 13 high-pass, which OpenCV filters
    through a DFT; with OpenCV's threads on, these two runs wrote different A, C, Cn and PNR."""
    (run1, code1, said1), (run2, code2, said2) = minian_fixture_runs
    assert code1 == 0 and code2 == 0, said1[-3000:] + said2[-3000:]
    assert _differing(run1, run2) == []


def _same(a, b) -> bool:
    """Equal values, NaN equal to NaN (an unknown wavelength is NaN in the NWB file)."""
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
    except TypeError:  # text: no NaN to care about
        return a == b


def _h5_tree(path: Path) -> dict[str, object]:
    """Every dataset's values and every attribute of an HDF5 file, by path."""
    import h5py

    out: dict[str, object] = {}
    with h5py.File(path, "r") as f:

        def visit(name, obj):
            for key, value in obj.attrs.items():
                # an object reference is its target's path (comparing references compares addresses)
                plain = f[value].name if isinstance(value, h5py.Reference) else np.asarray(value).tolist()
                out[f"{name}@{key}"] = plain
            if isinstance(obj, h5py.Dataset):
                out[name] = np.asarray(obj[()]).tolist()

        f.visititems(visit)
    return out


@pytest.mark.slow
def test_memory_budget_with_fixed_batch_frames_changes_only_what_records_the_config(
    quadrant_movie, quadrant_config, tmp_path
):
    """memory_budget only sizes the chunks: with batch_frames set, the arrays and figures are the same bytes.

    What differs records the config itself: meta.json's memory_budget, and the NWB identifier (and the
    object ids made from it), which derive from the config's hash, as summary.json says.
    """
    fixed = {**quadrant_config, "batch_frames": 250}  # no residual's seeds: the full-resolution test has them
    runs = [
        _start_run(quadrant_movie, {**fixed, "memory_budget": budget}, tmp_path / name)
        for name, budget in (("small", "64MB"), ("large", "1GB"))
    ]
    for proc in runs:
        _finish(proc)
    small, large = tmp_path / "small", tmp_path / "large"
    assert _differing(small, large) == ["arrays/meta.json", "neurons.nwb", "summary.json"]
    meta = [json.loads((d / "arrays" / "meta.json").read_text()) for d in (small, large)]
    assert meta[0]["params"].pop("memory_budget") != meta[1]["params"].pop("memory_budget")
    assert meta[0] == meta[1]
    summary = [json.loads((d / "summary.json").read_text()) for d in (small, large)]
    for s in summary:
        del s["run"], s["nwb"]["identifier"], s["nwb"]["from"]["config"]
        s["config"].pop("memory_budget")
    assert summary[0] == summary[1]
    trees = [_h5_tree(d / "neurons.nwb") for d in (small, large)]
    differ = sorted(k for k in trees[0] if not _same(trees[0][k], trees[1].get(k))) + sorted(
        set(trees[1]) - set(trees[0])
    )
    assert {k.split("@")[-1] if "@" in k else k for k in differ} <= {"identifier", "object_id"}, differ
