"""Motion correction into a resumable zarr store.

After every chunk the corrected frames are committed to a
:class:`caliali.store.FrameStore` and then the corrector's state (template,
shifts so far, gap-filling state) is replaced atomically beside them. A run
killed at any point restarts after its last committed chunk; if the store
and the state disagree (killed between the two writes) it starts afresh.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from caliali.store import FrameStore

from ._corrector import Corrector
from .result import MotionResult

__all__ = ["correct_into_store"]

STATE_FILE = "motion_state.npz"


def _save_state(store: FrameStore, corrector: Corrector) -> None:
    tmp = store.path / f".{STATE_FILE}.tmp.npz"
    np.savez(tmp, written=np.array(store.n_frames), **corrector.state())
    os.replace(tmp, store.path / STATE_FILE)


def _load_state(store: FrameStore) -> dict[str, Any] | None:
    path = store.path / STATE_FILE
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            state = {k: z[k] for k in z.files}
    except (OSError, ValueError):
        return None
    if int(state.pop("written")) != store.n_frames:
        return None
    return state


def correct_into_store(
    path: Path | str,
    chunks_from: Callable[[int], Iterator[np.ndarray]],
    corrector: Corrector,
    *,
    frame_shape: tuple[int, int],
    params: dict[str, Any],
    temporal_ds: int = 1,
) -> MotionResult:
    """Correct ``chunks_from(start_raw_frame)`` into the store at ``path``,
    resuming a previous run made with the same ``params``."""
    store = FrameStore.resume(path, frame_shape, params=params)
    state = _load_state(store)
    if state is None and (store.n_frames or (store.path / STATE_FILE).exists()):
        store = FrameStore.create(path, frame_shape, params=params)
    if state is not None:
        corrector.restore(state)
        if store.complete:
            return corrector.result()
    # Downsampling groups start at multiples of temporal_ds from the session
    # start, so whole processed groups map back to raw frames exactly.
    unwritten = 0  # chunk frames whose output the corrector still holds (seed, gaps)
    for chunk in chunks_from(corrector.done * int(temporal_ds)):
        ready = corrector.process(chunk)
        unwritten += len(chunk)
        if ready is not None:
            store.append(ready, source_frames=unwritten)
            unwritten = 0
        _save_state(store, corrector)
    tail = corrector.flush()
    if tail is not None:
        store.append(tail, source_frames=unwritten)
    store.mark_complete()
    _save_state(store, corrector)
    return corrector.result()
