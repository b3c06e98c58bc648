"""Traces handed to pynwb a buffer of frames at a time (an hdmf data iterator)."""

from __future__ import annotations

import numpy as np
from hdmf.data_utils import GenericDataChunkIterator

from ._blocks import frame_block

__all__ = ["TraceFrames"]


class TraceFrames(GenericDataChunkIterator):
    """The frames (T, K) of neurons x frames ``traces`` (K, T), read one buffer at a time.

    hdmf asks `_get_data` for one buffer (a block of frames, all neurons)
    after another and writes each to the HDF5 dataset, so neither the traces
    nor their transpose is ever whole in memory. Takes ``chunk_shape`` and
    ``buffer_shape`` like `hdmf.data_utils.GenericDataChunkIterator`.
    """

    def __init__(self, traces, **kwargs):
        self._traces = traces
        super().__init__(**kwargs)
        self._buffer = None

    def _get_data(self, selection: tuple[slice, slice]) -> np.ndarray:
        # hdmf writes each buffer to the file before asking for the next: one array is refilled every time
        if self._buffer is None:
            self._buffer = np.empty(self.buffer_shape, self.dtype)
        frames, neurons = selection
        block = frame_block(self._traces, frames, neurons, out=self._buffer)
        if frames.stop >= self.maxshape[0] and neurons.stop >= self.maxshape[1]:
            self._buffer = None  # the last buffer: freed once written, not kept with the NWB objects
        return block

    def _get_maxshape(self) -> tuple[int, int]:
        k, t = np.shape(self._traces)
        return int(t), int(k)

    def _get_dtype(self) -> np.dtype:
        return np.dtype(np.float32)
