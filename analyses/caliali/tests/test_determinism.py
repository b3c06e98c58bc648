"""The same input gives the same bits, in any process.

Two sources of run-to-run differences were found on a real recording and
removed: OpenCV's IPP kernels (``cv2.magnitude`` in the blood-vessel filter gave
different bits in different processes) and OASIS's AR estimate, which draws from
NumPy's unseeded global random state. Each test runs the code in fresh
processes, where those differences showed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np

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
