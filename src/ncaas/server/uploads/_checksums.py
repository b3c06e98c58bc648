"""The running checksums of an upload (CRC-32C, and SHA-256 when asked for)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from crc32c import CRC32CHash


class _Checksums:
    """The running CRC-32C (and, when asked for, SHA-256) of the first ``offset`` bytes of a file."""

    def __init__(self, offset: int = 0, *, sha256: bool = False):
        self.offset = offset
        self.crc = CRC32CHash()
        self.sha = hashlib.sha256() if sha256 else None

    @property
    def hashers(self) -> list:
        return [self.crc] + ([self.sha] if self.sha is not None else [])

    def copy(self) -> _Checksums:
        other = _Checksums(self.offset)
        other.crc, other.sha = self.crc.copy(), self.sha.copy() if self.sha is not None else None
        return other


def _checksum_prefix(path: Path, nbytes: int, *, sha256: bool) -> _Checksums:
    state = _Checksums(sha256=sha256)
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while state.offset < nbytes and (n := f.readinto(view[: min(len(buf), nbytes - state.offset)])):
            _update(state.hashers, [view[:n]])
            state.offset += n
    return state


def _update(hashers: list, pieces: Sequence[bytes | memoryview]) -> None:
    """Feed ``pieces`` to every hasher (hashlib and crc32c release the GIL for large updates)."""
    for piece in pieces:
        for h in hashers:
            h.update(piece)
