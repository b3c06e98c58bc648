"""Reading a job's results folder for the API: files, QC images, a streamed zip."""

from __future__ import annotations

import io
import os
import posixpath
import stat
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import SpecialFileRefused
from ..storage import localtree

__all__ = ["IMAGE_TYPES", "ResultFile", "iter_zip", "list_files"]

IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
    ".webp": "image/webp",
}
# Already compressed: stored as they are, deflating them only burns CPU.
_STORED = {
    ".png",
    ".jpg",
    ".jpeg",
    ".gif",
    ".webp",
    ".zip",
    ".gz",
    ".bz2",
    ".xz",
    ".zst",
    ".npz",
    ".mp4",
    ".avi",
    ".h5",
    ".nwb",
}
_BLOCK = 1 << 20


@dataclass(frozen=True)
class ResultFile:
    rel: str  # posix path relative to the listed folder
    path: Path
    stat: os.stat_result  # as listed: the file read later must be this very file


def list_files(base: Path) -> list[ResultFile]:
    """Every regular file under ``base``, sorted.

    Symbolic links, FIFOs, devices and sockets are left out, neither followed nor
    opened: an analysis could otherwise publish a link to a file outside its
    results, or stall whoever reads a FIFO.
    """
    found = localtree.regular_files(str(base))
    return sorted((ResultFile(posixpath.relpath(p, base), Path(p), st) for p, st in found), key=lambda f: f.rel)


def _zip_info(name: str, st: os.stat_result) -> zipfile.ZipInfo:
    """What ``ZipInfo.from_file`` says, from the listed stat (a file dated before 1980 gets 1980)."""
    when = time.localtime(st.st_mtime)[:6]
    info = zipfile.ZipInfo(name, when if when[0] >= 1980 else (1980, 1, 1, 0, 0, 0))
    info.external_attr = (stat.S_IMODE(st.st_mode) | stat.S_IFREG) << 16
    info.file_size = st.st_size
    return info


class _Sink(io.RawIOBase):
    """An unseekable byte sink: zipfile writes into it, the generator drains it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def iter_zip(files: list[ResultFile]) -> Iterator[bytes]:
    """A zip of ``files`` produced piece by piece, in constant memory, of any size.

    A file replaced since it was listed (by a link, a FIFO, another file) is left out.
    """
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for entry in files:
            try:
                fd = localtree.open_regular(str(entry.path), expect=entry.stat)
            except (SpecialFileRefused, FileNotFoundError):
                continue
            info = _zip_info(entry.rel, entry.stat)
            stored = entry.path.suffix.lower() in _STORED
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            if not stored:
                info._compresslevel = 1  # type: ignore[attr-defined]  # fast; results are mostly numbers and text
            with os.fdopen(fd, "rb") as src, zf.open(info, "w", force_zip64=entry.stat.st_size > (1 << 31)) as dst:
                while block := src.read(_BLOCK):
                    dst.write(block)
                    if chunk := sink.drain():
                        yield chunk
            if chunk := sink.drain():
                yield chunk
    yield sink.drain()
