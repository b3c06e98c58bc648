"""Simulated multi-session one-photon experiments with ground truth.

``simulate(out, sessions=3, frames=1000, neurons=100, seed=0)`` writes
``out/manifest.yaml``, one video per session (or ``_b<k>`` pieces), and
``out/ground_truth/``:

- ``A.npy`` (K, H, W) float32 footprints (without halos) in the common reference frame
- ``C.npy`` (K, T_total) calcium traces; ``S.npy`` (K, T_total) spikes (0/1)
- ``fields.npy`` (n_sessions, 2, H, W) backward fields (dy, dx):
  ``aligned[y, x] = session[y + dy[y, x], x + dx[y, x]]``, translation included
- ``shifts.npy`` (T_total, 2) per-frame within-session shifts (dy, dx) that
  correct each frame (``corrected[y, x] = frame[y + dy, x + dx]``), only with ``within_motion``
- ``background.npy``, ``vessels.npy`` (H, W) the reference background and its vessel map
- ``session_frames.json``; ``meta.json`` (every parameter, active neurons per
  session, spike rates, video encoding)
"""

from caliali.simulate._deform import invert_field
from caliali.simulate._params import VARIANTS, VIDEO_FORMATS, SimulationParams
from caliali.simulate._simulate import Simulation, simulate

__all__ = ["VARIANTS", "VIDEO_FORMATS", "Simulation", "SimulationParams", "invert_field", "simulate"]
