"""Resumable, streamed, checksummed uploads into a group's ``inputs/``.

The protocol (all calls authenticated, all uploads private to the group):

``POST /api/uploads`` ``{"path", "size", "sha256"?, "overwrite"?}``
    announce a file; answers its ``id`` and ``offset`` 0.
``PUT /api/uploads/{id}?offset=N`` (raw body, optional ``X-Chunk-SHA256``)
    append bytes at ``N``, which must equal the bytes received so far (else
    409 with the right offset). The body is streamed to disk as it arrives;
    a dropped connection keeps what arrived (unless a chunk checksum was
    given, then the unverified chunk is dropped), so the client asks
    ``GET /api/uploads/{id}`` for the offset and goes on from there.
``POST /api/uploads/{id}/complete`` ``{"sha256"?}``
    once all bytes are in: the server's SHA-256 of the whole file is checked
    against the one given (on create or here), the file is flushed to disk and
    moved into ``inputs/<path>`` atomically.

The SHA-256 is computed while streaming (kept per upload in memory; after a
server restart it is recomputed from the partial file), so completing a
1 GB upload costs no second read. Whole disk blocks are written with
``O_DIRECT`` where the file system allows it (``NCAAS_UPLOAD_DIRECT_IO=0``
turns that off): on the development machine this cut the server's CPU time
per uploaded GB by about a third (2.6-2.7 s to 1.7-1.9 s) and the upload's
wall time as much, and the final fsync has almost nothing left to write.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import mmap
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
from sqlalchemy import BigInteger, Boolean, String, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from ..storage import check_user_path
from .accounts import Principal
from .errors import BadRequest, ChecksumMismatch, Conflict, NotFound, ServerError, TooLarge

__all__ = ["StorageFull", "UploadInfo", "Uploads", "keep_freed_memory_for_streaming"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_BLOCK = 4 << 20  # hand received bytes to the writer and hasher in 4 MiB blocks: bounded memory
_WRITEBACK = 32 << 20  # start writing to the disk every 32 MiB instead of all at the final fsync
_IOV_MAX = 1024  # os.writev takes at most this many buffers at once (Linux)
_ALIGN = 4096  # O_DIRECT writes whole disk blocks (512 or 4096 bytes) at block offsets
_DIRECT_IO = hasattr(os, "O_DIRECT") and os.environ.get("NCAAS_UPLOAD_DIRECT_IO", "1") != "0"


class StorageFull(ServerError):
    """The server's disk (or the group's quota) has no room for the bytes sent."""

    status = 507  # Insufficient Storage


class _Base(DeclarativeBase):
    pass


class _Upload(_Base):
    __tablename__ = "server_uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    overwrite: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    completed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    final_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)


@dataclass(frozen=True)
class UploadInfo:
    id: str
    path: str
    size: int
    offset: int
    complete: bool
    sha256: str | None
    user: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def check_sha256(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not _HEX64.match(value):
        raise BadRequest(f"{what} must be 64 hexadecimal characters (a SHA-256), got {value[:80]!r}")
    return value


class _HashState:
    """A running SHA-256 over the first ``offset`` bytes of a partial file."""

    def __init__(self, offset: int = 0, hasher=None):
        self.offset = offset
        self.hasher = hasher or hashlib.sha256()


def _hash_prefix(path: Path, nbytes: int) -> _HashState:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = nbytes
        while left:
            block = f.read(min(left, 8 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return _HashState(nbytes, h)


def _update(hashers: list, pieces: list[bytes]) -> None:
    """Feed ``pieces`` to every hasher (hashlib releases the GIL for large updates)."""
    for piece in pieces:
        for h in hashers:
            h.update(piece)


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux: the kernel flushes on its own schedule, the final fsync does the rest
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    write_only = 2  # SYNC_FILE_RANGE_WRITE: start writeback of the range, do not wait for it

    def start(fd: int, offset: int, nbytes: int) -> None:
        fn(fd, offset, nbytes, write_only)  # advisory: an error only means the fsync does it all

    return start


_sync_file_range = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` to the disk now, without waiting.

    Without it, the dirty pages of a large upload sit in memory until the final
    fsync writes them all at once, and writers are throttled while the machine
    holds many dirty pages: writing 1 GB in 4 MiB blocks and fsyncing took a
    median 3.9 s (4 runs) on the busy 2-cpu development machine, 0.9 s (8 runs)
    with writeback started every 32 MiB, and the fsync itself 0.3 s against 0.02 s.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes)


class _BlockWriter:
    """Writes lists of pieces at the end of a partial file.

    Where the file system allows it, whole disk blocks go to the disk directly
    (``O_DIRECT``, from one reused aligned buffer): no copy into the page cache
    and nothing left for the final fsync. What does not fill a disk block waits
    in ``tail`` for the next write, and is written through the page cache when
    the request ends. Elsewhere the writes go through the page cache, with
    writeback started as they go (:func:`_start_writeback`).
    """

    def __init__(self, path: Path, offset: int):
        self.fd = os.open(path, os.O_WRONLY)
        self.written = offset  # bytes on file
        self.tail = bytearray()  # bytes accepted after ``written``, fewer than a disk block
        self.flushed = offset
        self.closed = False
        self.direct: int | None = None
        self.buffer: mmap.mmap | None = None
        if _DIRECT_IO:
            try:
                self.direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
                self.buffer = mmap.mmap(-1, _BLOCK)  # page-aligned, as O_DIRECT wants
            except OSError:
                self.direct = None  # this file system does not do O_DIRECT (tmpfs, ...)

    @property
    def position(self) -> int:
        """Bytes accepted: on file, or waiting in ``tail``."""
        return self.written + len(self.tail)

    def write(self, pieces: list[bytes]) -> None:
        if self.direct is None:
            self._write_buffered(pieces)
            return
        tail, self.tail = self.tail, bytearray()
        buf, fill = memoryview(self.buffer), 0
        for source in (tail, *pieces):
            view = memoryview(source)
            while view:
                if fill == 0 and self.written % _ALIGN:  # get to a block boundary through the page cache
                    n = os.pwrite(self.fd, view[:_ALIGN - self.written % _ALIGN], self.written)
                    self.written += n
                    view = view[n:]
                    continue
                n = min(len(view), len(buf) - fill)
                buf[fill:fill + n] = view[:n]
                fill += n
                view = view[n:]
                if fill == len(buf):
                    self._write_direct(buf)
                    fill = 0
        aligned = fill - fill % _ALIGN
        if aligned:
            self._write_direct(buf[:aligned])
        self.tail = bytearray(buf[aligned:fill])

    def _write_direct(self, view: memoryview) -> None:
        if self.direct is None:
            self._write_buffered([view])
            return
        done = 0
        while done < len(view):
            try:
                n = os.pwrite(self.direct, view[done:], self.written)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # The disk wants another alignment: go on through the page cache.
                os.close(self.direct)
                self.direct = None
                self._write_buffered([view[done:]])
                return
            done += n
            self.written += n

    def _write_buffered(self, pieces: list) -> None:
        if self.tail:
            pieces, self.tail = [bytes(self.tail), *pieces], bytearray()
        os.lseek(self.fd, self.written, os.SEEK_SET)
        for i in range(0, len(pieces), _IOV_MAX):
            batch = pieces[i:i + _IOV_MAX]
            want = sum(map(len, batch))
            done = os.writev(self.fd, batch)
            if done < want:  # a short write (rare on a regular file): finish it piece by piece
                rest = memoryview(b"".join(batch))[done:]
                while rest:
                    rest = rest[os.write(self.fd, rest):]
            self.written += want
        if self.written - self.flushed >= _WRITEBACK:
            _start_writeback(self.fd, self.flushed, self.written - self.flushed)
            self.flushed = self.written

    def close(self, *, truncate: int | None = None) -> None:
        try:
            if truncate is not None:
                os.ftruncate(self.fd, truncate)
                self.written, self.tail = truncate, bytearray()
            elif self.tail:
                os.pwrite(self.fd, self.tail, self.written)
                self.written, self.tail = self.written + len(self.tail), bytearray()
        finally:
            os.close(self.fd)
            if self.direct is not None:
                os.close(self.direct)
            self.closed = True
            if self.buffer is not None:
                try:
                    self.buffer.close()
                except BufferError:
                    pass  # a failed write's traceback still holds a view of it: freed with that


def keep_freed_memory_for_streaming() -> bool:
    """Have glibc keep freed memory for reuse instead of handing it back to the system at once.

    Streaming an upload allocates and frees a 256 KiB buffer per socket read in
    the HTTP stack; with glibc's defaults each one comes from fresh pages (mmap,
    or the heap top just trimmed), so a 1 GB upload took about 63,000 page faults
    in the server, and none with these settings; the event loop thread's CPU time
    per GB dropped by about a fifth (1.0-1.2 s to 0.8-1.0 s, 4 runs each, on a
    busy 2-cpu machine). Freed memory kept this way stays below 128 MiB. Returns
    whether the C library took the settings (not glibc: nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 128 << 20))


def _raise_if_disk_full(exc: BaseException, upload_id: str, offset: int) -> None:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(f"the server's disk is full; upload {upload_id} keeps its first {offset} bytes: "
                          "resume it once the administrator has freed space") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Uploads:
    """Upload bookkeeping (in SQL) and byte handling (on local disk).

    Parameters
    ----------
    engine
        The server's database.
    resolve_input
        ``(group, relative_path) -> Path`` of the final file inside the
        group's ``inputs/``; refuses paths that leave it.
    scratch_dir
        ``group -> Path`` where partial files live until completed.
    max_bytes
        Largest upload accepted.
    """

    def __init__(self, engine: Engine, *, resolve_input: Callable[[str, str], Path],
                 scratch_dir: Callable[[str], Path], max_bytes: int):
        self.engine = engine
        self.resolve_input = resolve_input
        self.scratch_dir = scratch_dir
        self.max_bytes = max_bytes
        self._hashes: dict[str, _HashState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._session = sessionmaker(engine, expire_on_commit=False)
        _Base.metadata.create_all(engine)

    # -- bookkeeping ---------------------------------------------------
    def _part(self, up: _Upload) -> Path:
        return self.scratch_dir(up.group) / f"{up.id}.part"

    def _load(self, who: Principal, upload_id: str) -> _Upload:
        with self._session() as s:
            up = s.get(_Upload, upload_id) if re.fullmatch(r"[0-9a-f]{32}", upload_id) else None
            if up is None or up.group != who.group:
                # Another group's upload is indistinguishable from a missing one.
                raise NotFound(f"no upload {upload_id!r} in group {who.group!r}")
            s.expunge(up)
            return up

    def _info(self, up: _Upload) -> UploadInfo:
        part = self._part(up)
        offset = up.size if up.completed_ms else (part.stat().st_size if part.exists() else 0)
        return UploadInfo(id=up.id, path=up.path, size=up.size, offset=offset,
                          complete=up.completed_ms is not None,
                          sha256=up.final_sha256, user=up.user)

    def create(self, who: Principal, *, path: str, size: int, sha256: str | None = None,
               overwrite: bool = False) -> UploadInfo:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"size must be a non-negative integer number of bytes, got {size!r}")
        if size > self.max_bytes:
            raise TooLarge(f"{path!r} is {size} bytes; this server accepts uploads up to "
                           f"{self.max_bytes} bytes")
        sha256 = check_sha256(sha256, "sha256")
        path = check_user_path(path, "inputs")
        target = self.resolve_input(who.group, path)
        if target.is_dir():
            raise Conflict(f"inputs/{path} is a folder; choose another name for the file")
        if target.exists() and not overwrite:
            raise Conflict(f"inputs/{path} already exists; upload with overwrite=true to replace it")
        up = _Upload(id=secrets.token_hex(16), group=who.group, user=who.user, path=path,
                     size=size, sha256=sha256, overwrite=overwrite, created_ms=int(time.time() * 1000))
        scratch = self.scratch_dir(who.group)
        scratch.mkdir(parents=True, exist_ok=True)
        self._part(up).touch()
        with self._session() as s, s.begin():
            s.add(up)
        return self._info(up)

    def get(self, who: Principal, upload_id: str) -> UploadInfo:
        return self._info(self._load(who, upload_id))

    def pending(self, who: Principal) -> list[UploadInfo]:
        with self._session() as s:
            rows = s.scalars(select(_Upload).where(_Upload.group == who.group,
                                                   _Upload.completed_ms.is_(None))
                             .order_by(_Upload.created_ms)).all()
            return [self._info(u) for u in rows]

    def purge_stale(self, max_age_s: float) -> int:
        """Forget unfinished uploads untouched for ``max_age_s``; returns how many."""
        cutoff = time.time() - max_age_s
        with self._session() as s, s.begin():
            stale = []
            for up in s.scalars(select(_Upload).where(_Upload.completed_ms.is_(None))):
                part = self._part(up)
                touched = part.stat().st_mtime if part.exists() else up.created_ms / 1000
                if touched < cutoff:
                    part.unlink(missing_ok=True)
                    stale.append(up)
            for up in stale:
                s.delete(up)
        return len(stale)

    def abort(self, who: Principal, upload_id: str) -> None:
        up = self._load(who, upload_id)
        if up.completed_ms is not None:
            raise Conflict(f"upload {upload_id} is already complete")
        self._part(up).unlink(missing_ok=True)
        self._hashes.pop(up.id, None)
        with self._session() as s, s.begin():
            s.delete(s.get(_Upload, up.id))

    # -- bytes ---------------------------------------------------------
    async def receive(self, who: Principal, upload_id: str, offset: int,
                      body: AsyncIterator[bytes], *, chunk_sha256: str | None = None) -> UploadInfo:
        """Append the streamed ``body`` at ``offset``; returns the new state.

        The event loop only gathers the arriving pieces; each block of about
        4 MiB is written (``os.writev``, no joining copy) and hashed by two
        worker threads at once, while the next block arrives. Written blocks are
        handed to the disk right away (:func:`_start_writeback`), so the fsync
        on completion finds little left to do.
        """
        up = self._load(who, upload_id)
        chunk_sha256 = check_sha256(chunk_sha256, "X-Chunk-SHA256")
        if up.completed_ms is not None:
            raise Conflict(f"upload {upload_id} is already complete")
        lock = self._locks.setdefault(up.id, asyncio.Lock())
        if lock.locked():
            raise Conflict(f"upload {upload_id} is being written by another request; wait for it")
        async with lock:
            part = self._part(up)
            current = part.stat().st_size if part.exists() else 0
            if offset != current:
                raise Conflict(f"upload {upload_id} has {current} bytes; send from offset={current}",
                               offset=current)
            state = self._hashes.get(up.id)
            if state is None or state.offset != current:
                state = await anyio.to_thread.run_sync(_hash_prefix, part, current)
                self._hashes[up.id] = state
            before = state.hasher.copy()
            room = up.size - offset
            hashers = [state.hasher] + ([hashlib.sha256()] if chunk_sha256 else [])
            writer = _BlockWriter(part, offset)
            received = 0
            pieces: list[bytes] = []
            buffered = 0
            in_flight: list[asyncio.Future] = []
            kept = False  # an interrupted request keeps what arrived

            async def settle() -> None:
                # Wait for the last block's writer and hasher; a failed write fails the request.
                nonlocal in_flight
                done, in_flight = in_flight, []
                for result in await asyncio.gather(*done, return_exceptions=True):
                    if isinstance(result, BaseException):
                        raise result

            async def hand_off() -> None:
                nonlocal pieces, buffered
                block, pieces, buffered = pieces, [], 0
                await settle()
                if not block:
                    return
                in_flight.extend([
                    asyncio.ensure_future(anyio.to_thread.run_sync(writer.write, block)),
                    asyncio.ensure_future(anyio.to_thread.run_sync(_update, hashers, block)),
                ])

            try:
                try:
                    async for piece in body:
                        if not piece:
                            continue
                        received += len(piece)
                        if received > room:
                            raise TooLarge(f"upload {upload_id} is declared as {up.size} bytes; "
                                           f"this request sends more than the {room} still expected")
                        pieces.append(piece)
                        buffered += len(piece)
                        if buffered >= _BLOCK:
                            await hand_off()
                    await hand_off()
                    await settle()
                    writer.close()
                except BaseException as exc:
                    if in_flight:
                        await asyncio.wait(in_flight)
                    if isinstance(exc, OSError | TooLarge) or chunk_sha256 or any(
                            f.cancelled() or f.exception() for f in in_flight):
                        raise
                    # Interrupted: keep what arrived so the client can resume from there.
                    writer.write(pieces)
                    _update(hashers, pieces)
                    writer.close()
                    state.offset, kept = writer.position, True
                    raise
            except BaseException as exc:
                if not kept:  # refused, failed or unverified: as if the request never came
                    if writer.closed:
                        os.truncate(part, offset)
                    else:
                        writer.close(truncate=offset)
                    state.offset, state.hasher = offset, before
                _raise_if_disk_full(exc, upload_id, offset)
                raise
            if chunk_sha256 and hashers[1].hexdigest() != chunk_sha256:
                os.truncate(part, offset)
                state.offset, state.hasher = offset, before
                raise ChecksumMismatch(
                    f"the chunk at offset {offset} arrived corrupted (SHA-256 "
                    f"{hashers[1].hexdigest()} instead of {chunk_sha256}); send it again")
            state.offset = writer.position
        return self.get(who, upload_id)

    async def complete(self, who: Principal, upload_id: str, sha256: str | None = None) -> UploadInfo:
        up = self._load(who, upload_id)
        sha256 = check_sha256(sha256, "sha256")
        if up.completed_ms is not None:
            return self._info(up)
        part = self._part(up)
        have = part.stat().st_size if part.exists() else 0
        if have != up.size:
            raise Conflict(f"upload {upload_id} is incomplete: {have} of {up.size} bytes received; "
                           f"send the rest from offset={have}", offset=have)
        state = self._hashes.get(up.id)
        if state is None or state.offset != have:
            state = await anyio.to_thread.run_sync(_hash_prefix, part, have)
        digest = state.hasher.hexdigest()
        for expected in {sha256, up.sha256} - {None}:
            if expected != digest:
                self.abort(who, upload_id)
                raise ChecksumMismatch(
                    f"{up.path}: the received bytes have SHA-256 {digest}, not {expected}; "
                    "the upload was discarded, start it again")
        target = self.resolve_input(up.group, up.path)
        if target.exists() and not up.overwrite:
            raise Conflict(f"inputs/{up.path} appeared meanwhile; upload with overwrite=true to replace it")
        if target.is_dir():
            raise Conflict(f"inputs/{up.path} is a folder; choose another name")
        # Durable before acknowledged: a completed upload survives a crash of the machine.
        try:
            await anyio.to_thread.run_sync(_fsync, part)
        except OSError as exc:
            _raise_if_disk_full(exc, upload_id, have)
            raise
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            await anyio.to_thread.run_sync(_fsync, target.parent)
        except (NotADirectoryError, FileExistsError) as exc:
            raise Conflict(f"cannot place inputs/{up.path}: a file stands where a folder is needed "
                           f"({exc.filename})") from None
        self._hashes.pop(up.id, None)
        self._locks.pop(up.id, None)
        with self._session() as s, s.begin():
            row = s.get(_Upload, up.id)
            row.completed_ms = int(time.time() * 1000)
            row.final_sha256 = digest
        return self.get(who, upload_id)
