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
1 GB upload costs no second read.
"""

from __future__ import annotations

import asyncio
import hashlib
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
from .errors import BadRequest, ChecksumMismatch, Conflict, NotFound, TooLarge

__all__ = ["UploadInfo", "Uploads"]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_FLUSH = 4 << 20  # write in 4 MiB blocks: few thread hops, bounded memory


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
        """Append the streamed ``body`` at ``offset``; returns the new state."""
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
            chunk_hash = hashlib.sha256() if chunk_sha256 else None
            received = 0

            def _write(f, block: bytes) -> None:
                f.write(block)
                state.hasher.update(block)
                if chunk_hash is not None:
                    chunk_hash.update(block)

            def _rollback(f) -> None:
                f.truncate(offset)
                state.offset, state.hasher = offset, before

            with open(part, "r+b") as f:
                f.seek(offset)
                pieces: list[bytes] = []
                buffered = 0
                # Double buffering: the next block is received while the last one is
                # written and hashed in a worker thread (hashlib and write release the GIL).
                pending: asyncio.Future | None = None

                async def flush() -> None:
                    nonlocal pending, pieces, buffered
                    block, pieces, buffered = b"".join(pieces), [], 0
                    if pending is not None:
                        await pending
                    pending = asyncio.ensure_future(anyio.to_thread.run_sync(_write, f, block))

                try:
                    async for piece in body:
                        received += len(piece)
                        if received > room:
                            raise TooLarge(f"upload {upload_id} is declared as {up.size} bytes; "
                                           f"this request sends more than the {room} still expected")
                        pieces.append(piece)
                        buffered += len(piece)
                        if buffered >= _FLUSH:
                            await flush()
                    if pieces:
                        await flush()
                    if pending is not None:
                        await pending
                except BaseException as exc:
                    if pending is not None:
                        await asyncio.wait([pending])
                    if isinstance(exc, TooLarge) or chunk_hash is not None:
                        _rollback(f)
                    else:
                        # Interrupted: keep what arrived so the client can resume.
                        if pieces:
                            _write(f, b"".join(pieces))
                        state.offset = f.tell()
                    raise
                if chunk_hash is not None and chunk_hash.hexdigest() != chunk_sha256:
                    _rollback(f)
                    raise ChecksumMismatch(
                        f"the chunk at offset {offset} arrived corrupted (SHA-256 "
                        f"{chunk_hash.hexdigest()} instead of {chunk_sha256}); send it again")
                state.offset = f.tell()
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
        await anyio.to_thread.run_sync(_fsync, part)
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
