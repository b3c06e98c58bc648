"""A job's results folder read through :class:`ncaas.storage.Storage`, for roots in object storage.

On a local root the API reads results straight from disk (:mod:`ncaas.server.results`,
descriptors checked against links and FIFOs). An ``s3://`` root holds plain objects only,
no links or special files, so the same answers are built from storage calls: a listing
with sizes, a file streamed in blocks, a zip streamed file by file.
"""

from __future__ import annotations

import itertools
import posixpath
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..storage import Storage
from .results import _BLOCK, _STORED, _Sink

__all__ = ["StoredFile", "StoredInputs", "iter_stored", "iter_stored_zip", "list_stored", "read_stored"]


@dataclass(frozen=True)
class StoredFile:
    rel: str  # posix path relative to the listed folder
    path: str  # storage path
    size: int


class StoredInputs:
    """Where the server places completed uploads when the storage root is object storage."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def _path(self, group: str, path: str) -> str:
        return self.storage.resolve(group, "inputs", path)

    def kind(self, group: str, path: str) -> str:
        """What ``inputs/<path>`` is: "file", "folder" or "missing"."""
        return self.storage.entry_kind(self._path(group, path))

    def size(self, group: str, path: str) -> int:
        full = self._path(group, path)
        return self.storage.size(full) if self.storage.entry_kind(full) == "file" else 0

    def publish(self, group: str, path: str, part: Path) -> None:
        """Copy the completed upload ``part`` (a local file) to ``inputs/<path>``."""
        self.storage.put(part, self._path(group, path))

    def usage(self, group: str) -> int:
        """Bytes of every file in the group's storage."""
        return sum(f.size for f in list_stored(self.storage, self.storage.group_dir(group)))


def list_stored(storage: Storage, base: str) -> list[StoredFile]:
    """Every file under ``base`` (a folder in storage), sorted, with its size; [] when there is none."""
    if not storage.isdir(base):
        return []
    return [StoredFile(posixpath.relpath(p, base), p, storage.size(p)) for p in storage.files(base)]


def read_stored(storage: Storage, path: str, offset: int = 0, limit: int = -1) -> bytes:
    """Up to ``limit`` bytes of ``path`` from ``offset`` (all of the rest when -1); b"" if it is missing."""
    try:
        data = storage.read_from(path, offset)
    except FileNotFoundError:
        return b""
    return data if limit < 0 else data[:limit]


def iter_stored(storage: Storage, path: str, size: int) -> Iterator[bytes]:
    """The ``size`` bytes of ``path`` in blocks, never the whole file in memory."""
    offset = 0
    while offset < size:
        block = storage.read_range(path, offset, min(_BLOCK, size - offset))
        if not block:
            return
        offset += len(block)
        yield block


def iter_stored_zip(storage: Storage, files: list[StoredFile]) -> Iterator[bytes]:
    """A zip of ``files`` produced piece by piece, in constant memory; a file gone meanwhile is left out."""
    sink = _Sink()
    when = time.localtime()[:6]
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for entry in files:
            info = zipfile.ZipInfo(entry.rel, when)
            info.external_attr = 0o100600 << 16
            info.file_size = entry.size
            stored = posixpath.splitext(entry.rel)[1].lower() in _STORED
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            blocks = iter_stored(storage, entry.path, entry.size)
            try:
                first = next(blocks, b"")
            except FileNotFoundError:
                continue
            with zf.open(info, "w", force_zip64=entry.size > (1 << 31)) as dst:
                for block in itertools.chain((first,), blocks):
                    dst.write(block)
                    if chunk := sink.drain():
                        yield chunk
            if chunk := sink.drain():
                yield chunk
    yield sink.drain()
