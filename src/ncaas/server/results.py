"""Reading a job's results folder for the API: files, QC images, a streamed zip."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["IMAGE_TYPES", "iter_zip", "list_files"]

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".svg": "image/svg+xml", ".webp": "image/webp"}
# Already compressed: stored as they are, deflating them only burns CPU.
_STORED = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".zip", ".gz", ".bz2", ".xz", ".zst", ".npz",
           ".mp4", ".avi", ".h5", ".nwb"}
_BLOCK = 1 << 20


def list_files(base: Path) -> list[tuple[str, Path]]:
    """``(relative posix path, path)`` of every regular file under ``base``, sorted.

    Symbolic links are skipped: an analysis could otherwise publish a link to
    a file outside its results.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            out.append((full.relative_to(base).as_posix(), full))
    return sorted(out)


class _Sink(io.RawIOBase):
    """An unseekable byte sink: zipfile writes into it, the generator drains it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def iter_zip(files: list[tuple[str, Path]]) -> Iterator[bytes]:
    """A zip of ``files`` produced piece by piece, in constant memory, of any size."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", allowZip64=True) as zf:
        for name, path in files:
            info = zipfile.ZipInfo.from_file(path, name)
            stored = path.suffix.lower() in _STORED
            info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
            if not stored:
                info._compresslevel = 1  # fast; results are mostly numbers and text
            size = path.stat().st_size
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=size > (1 << 31)) as dst:
                while block := src.read(_BLOCK):
                    dst.write(block)
                    if chunk := sink.drain():
                        yield chunk
            if chunk := sink.drain():
                yield chunk
    yield sink.drain()
