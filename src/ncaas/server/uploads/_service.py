"""The upload protocol: announce, append at an offset, resume, complete, abort; room and quotas."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import mmap
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from crc32c import CRC32CHash
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from ...schema import create_or_update
from ...storage import check_user_path
from ..accounts import Principal
from ..errors import BadRequest, ChecksumMismatch, Conflict, NotFound, TooLarge
from ..space import Reserve, StorageFull, free_bytes, no_room_on_disk, over_quota, tree_size
from ._buffers import _Buffers
from ._checksums import _checksum_prefix, _Checksums, _update
from ._constants import _AHEAD, _ALIGN, _BLOCK, USAGE_CACHE_S
from ._model import UploadInfo, _Base, _Upload, check_digest
from ._writer import _BlockWriter, _fsync

if TYPE_CHECKING:
    from ..stored import StoredInputs


def _raise_if_disk_full(exc: BaseException, upload_id: str, offset: int) -> None:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise StorageFull(
            f"the server's disk is full; upload {upload_id} keeps its first {offset} bytes: "
            "resume it once the administrator has freed space"
        ) from None


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
    reserve
        Free space kept on the disk: an upload that would leave less is refused (507).
    quota_of
        ``group -> bytes`` the group may hold (None: no quota); an upload that would take the
        group's storage (``scratch_dir``'s parent) over it is refused (507).
    store
        For a storage root in object storage: where completed uploads are placed (and the
        group's usage read) instead of ``resolve_input``'s local path; ``scratch_dir`` is then a
        folder of this machine.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        resolve_input: Callable[[str, str], Path],
        scratch_dir: Callable[[str], Path],
        max_bytes: int,
        reserve: Reserve = Reserve(),
        quota_of: Callable[[str], int | None] = lambda group: None,
        store: StoredInputs | None = None,
    ):
        self.engine = engine
        self.resolve_input = resolve_input
        self.scratch_dir = scratch_dir
        self.max_bytes = max_bytes
        self.reserve = reserve
        self.quota_of = quota_of
        self.store = store
        self._stored: dict[str, tuple[float, int]] = {}  # group -> (when, bytes its files held)
        self._sums: dict[str, _Checksums] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._buffers = _Buffers()
        self._session = sessionmaker(engine, expire_on_commit=False)
        create_or_update(_Base.metadata, engine)

    # -- where a completed upload goes -----------------------------------
    def _kind(self, group: str, path: str) -> str:
        """What stands at ``inputs/<path>`` now: "file", "folder" or "missing"."""
        if self.store is not None:
            return self.store.kind(group, path)
        target = self.resolve_input(group, path)
        return "folder" if target.is_dir() else "file" if target.exists() else "missing"

    def _size(self, group: str, path: str) -> int:
        """Bytes of the file at ``inputs/<path>`` (0 if there is none)."""
        if self.store is not None:
            return self.store.size(group, path)
        target = self.resolve_input(group, path)
        return target.stat().st_size if target.is_file() else 0

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
        return UploadInfo(
            id=up.id,
            path=up.path,
            size=up.size,
            offset=offset,
            complete=up.completed_ms is not None,
            crc32c=up.final_crc32c,
            sha256=up.final_sha256,
            user=up.user,
        )

    def create(
        self,
        who: Principal,
        *,
        path: str,
        size: int,
        sha256: str | None = None,
        crc32c: str | None = None,
        overwrite: bool = False,
    ) -> UploadInfo:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"size must be a non-negative integer number of bytes, got {size!r}")
        if size > self.max_bytes:
            raise TooLarge(f"{path!r} is {size} bytes; this server accepts uploads up to {self.max_bytes} bytes")
        sha256 = check_digest(sha256, "sha256", "SHA-256")
        crc32c = check_digest(crc32c, "crc32c", "CRC-32C")
        path = check_user_path(path, "inputs")
        kind = self._kind(who.group, path)
        if kind == "folder":
            raise Conflict(f"inputs/{path} is a folder; choose another name for the file")
        if kind != "missing" and not overwrite:
            raise Conflict(f"inputs/{path} already exists; upload with overwrite=true to replace it")
        self._check_room(who.group, path, size=size, remaining=size, upload_id=None, replacing=overwrite)
        up = _Upload(
            id=secrets.token_hex(16),
            group=who.group,
            user=who.user,
            path=path,
            size=size,
            sha256=sha256,
            crc32c=crc32c,
            overwrite=overwrite,
            created_ms=int(time.time() * 1000),
        )
        self._part(up).touch()
        with self._session() as s, s.begin():
            s.add(up)
        return self._info(up)

    def get(self, who: Principal, upload_id: str) -> UploadInfo:
        return self._info(self._load(who, upload_id))

    def pending(self, who: Principal) -> list[UploadInfo]:
        with self._session() as s:
            rows = s.scalars(
                select(_Upload)
                .where(_Upload.group == who.group, _Upload.completed_ms.is_(None))
                .order_by(_Upload.created_ms)
            ).all()
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
        self._sums.pop(up.id, None)
        with self._session() as s, s.begin():
            s.delete(s.get(_Upload, up.id))

    # -- room ----------------------------------------------------------
    def _check_disk(self, group: str, path: str, needed: int) -> None:
        """Refuse (507) when writing ``needed`` more bytes would leave less than the reserve free."""
        free, total = free_bytes(self.scratch_dir(group))
        reserve = self.reserve.bytes_of(total)
        if free - needed < reserve:
            raise no_room_on_disk(path, needed, free, reserve)

    def _usage(self, group: str, *, besides: str | None) -> int:
        """Bytes the group holds: its files (partial uploads left out) plus the declared size of its
        unfinished uploads other than ``besides``."""
        seen = self._stored.get(group)
        if seen is None or time.monotonic() - seen[0] > USAGE_CACHE_S:
            if self.store is not None:
                stored = self.store.usage(group)
            else:
                stored = tree_size(self.scratch_dir(group).parent, skip=(self.scratch_dir(group).name,))
            seen = (time.monotonic(), stored)
            self._stored[group] = seen
        stored = seen[1]
        with self._session() as s:
            pending = s.scalars(
                select(_Upload.size).where(
                    _Upload.group == group, _Upload.completed_ms.is_(None), _Upload.id != (besides or "")
                )
            ).all()
        return stored + sum(pending)

    def _check_room(
        self, group: str, path: str, *, size: int, remaining: int, upload_id: str | None, replacing: bool
    ) -> None:
        """Refuse (507) an upload of ``size`` bytes, ``remaining`` of them still to arrive, that
        would leave the disk below its reserve or take the group over its quota."""
        self.scratch_dir(group).mkdir(parents=True, exist_ok=True)
        self._check_disk(group, path, remaining)
        quota = self.quota_of(group)
        if quota is None:
            return
        used = self._usage(group, besides=upload_id)
        if replacing:
            used -= self._size(group, path)  # replaced on completion: its bytes are freed
        if used + size > quota:
            raise over_quota(group, path, size, used, quota)

    # -- bytes ---------------------------------------------------------
    async def _checksums(self, up: _Upload, part: Path, offset: int) -> _Checksums:
        """The running checksums of the first ``offset`` bytes (recomputed from the file if not known)."""
        state = self._sums.get(up.id)
        if state is None or state.offset != offset:
            state = await anyio.to_thread.run_sync(lambda: _checksum_prefix(part, offset, sha256=up.sha256 is not None))
            self._sums[up.id] = state
        return state

    async def receive(
        self,
        who: Principal,
        upload_id: str,
        offset: int,
        body: AsyncIterator[bytes],
        *,
        chunk_crc32c: str | None = None,
        chunk_sha256: str | None = None,
    ) -> UploadInfo:
        """Append the streamed ``body`` at ``offset``; returns the new state.

        The event loop copies the arriving pieces into 4 MiB blocks and updates
        the CRC-32C; a worker thread writes each full block (a second one
        computes the SHA-256, if any) while the next one fills. Written blocks
        are on their way to the disk at once (``O_DIRECT``, or
        :func:`_start_writeback`), so the fsync on completion finds little left
        to do.
        """
        up = self._load(who, upload_id)
        chunk_crc32c = check_digest(chunk_crc32c, "X-Chunk-CRC32C", "CRC-32C")
        chunk_sha256 = check_digest(chunk_sha256, "X-Chunk-SHA256", "SHA-256")
        if up.completed_ms is not None:
            raise Conflict(f"upload {upload_id} is already complete")
        lock = self._locks.setdefault(up.id, asyncio.Lock())
        if lock.locked():
            raise Conflict(f"upload {upload_id} is being written by another request; wait for it")
        async with lock:
            part = self._part(up)
            current = part.stat().st_size if part.exists() else 0
            if offset != current:
                raise Conflict(f"upload {upload_id} has {current} bytes; send from offset={current}", offset=current)
            await anyio.to_thread.run_sync(
                lambda: self._check_room(
                    up.group, up.path, size=up.size, remaining=up.size - offset, upload_id=up.id, replacing=up.overwrite
                )
            )
            state = await self._checksums(up, part, current)
            before = state.copy()
            room = up.size - offset
            # (checksum, its hasher, the value the client gave) of this request's bytes, if given
            chunk = [
                (kind, hasher, expected)
                for kind, hasher, expected in (
                    ("CRC-32C", CRC32CHash(), chunk_crc32c),
                    ("SHA-256", hashlib.sha256(), chunk_sha256),
                )
                if expected is not None
            ]
            fast = [state.crc] + [h for kind, h, _ in chunk if kind == "CRC-32C"]
            slow = [h for h in (state.sha, *(h for kind, h, _ in chunk if kind == "SHA-256")) if h is not None]
            writer = _BlockWriter(part, offset)
            accepted = offset
            kept = False  # an interrupted request keeps what arrived
            broken = False  # a write or checksum failed: nothing is kept
            # The event loop copies each arriving piece, while it is still in the CPU's cache,
            # into a 4 MiB block and updates the CRC-32C, and lets the piece go at once: holding
            # received pieces until a worker thread copied them made every copy in the HTTP
            # stack miss the cache (benchmarks/README.md). One thread
            # writes the full blocks in order (another computes the SHA-256, if any); up to
            # _AHEAD blocks wait for it, so the socket is read on while the disk is busy.
            workers = [ThreadPoolExecutor(1, thread_name_prefix="ncaas-upload") for _ in range(2 if slow else 1)]
            loop = asyncio.get_running_loop()
            in_flight: list[tuple[mmap.mmap, list[asyncio.Future]]] = []  # oldest first
            block, start = self._buffers.take(), offset % _ALIGN
            fill = memoryview(block)
            pos = start

            async def settle(keep: int = 0) -> None:
                # Wait until at most ``keep`` blocks are in flight; a failed write fails the request.
                nonlocal broken
                while len(in_flight) > keep:
                    buffer, futures = in_flight[0]  # popped once done: an interruption still sees it
                    results = await asyncio.gather(*futures, return_exceptions=True)
                    in_flight.pop(0)
                    self._buffers.give(buffer)
                    for result in results:
                        if isinstance(result, BaseException):
                            broken = True
                            raise result

            async def hand_off() -> None:
                nonlocal block, fill, start, pos
                if pos == start:
                    return
                # Other uploads and jobs write to the same disk: what was free at the start may be gone.
                self._check_disk(up.group, up.path, up.size - writer.written)
                await settle(keep=_AHEAD - 1)
                futures = [loop.run_in_executor(workers[0], writer.write, block, start, pos)]
                if slow:
                    futures.append(loop.run_in_executor(workers[1], _update, slow, [memoryview(block)[start:pos]]))
                in_flight.append((block, futures))
                fill.release()
                block = self._buffers.take()
                fill, start, pos = memoryview(block), 0, 0

            try:
                try:
                    async for piece in body:
                        if not piece:
                            continue
                        if accepted + len(piece) > up.size:
                            raise TooLarge(
                                f"upload {upload_id} is declared as {up.size} bytes; "
                                f"this request sends more than the {room} still expected"
                            )
                        accepted += len(piece)
                        _update(fast, [piece])
                        view = memoryview(piece)
                        while view:
                            n = min(len(view), _BLOCK - pos)
                            fill[pos : pos + n] = view[:n]
                            pos += n
                            view = view[n:]
                            if pos == _BLOCK:
                                await hand_off()
                    await hand_off()
                    await settle()
                    writer.close()
                except BaseException as exc:
                    for worker in workers:  # no write may still run while we decide what to keep
                        worker.shutdown(wait=True)  # (a few blocks at most)
                    if in_flight:
                        await asyncio.wait([f for _, futures in in_flight for f in futures])
                    if (
                        isinstance(exc, OSError | TooLarge | StorageFull)
                        or chunk
                        or broken
                        or any(f.cancelled() or f.exception() for _, futures in in_flight for f in futures)
                    ):
                        raise
                    # Interrupted: keep what arrived so the client can resume from there.
                    writer.write(block, start, pos)
                    _update(slow, [fill[start:pos]])
                    writer.close()
                    state.offset, kept = accepted, True
                    raise
            except BaseException as exc:
                if not kept:  # refused, failed or unverified: as if the request never came
                    if writer.closed:
                        os.truncate(part, offset)
                    else:
                        writer.close(truncate=offset)
                    self._sums[up.id] = before
                _raise_if_disk_full(exc, upload_id, offset)
                if isinstance(exc, StorageFull):
                    exc.extra["offset"] = offset  # this request's bytes were dropped; resume from here
                raise
            finally:
                for worker in workers:
                    worker.shutdown(wait=False)
                fill.release()
                self._buffers.give(block)
            for kind, hasher, expected in chunk:
                if hasher.hexdigest() != expected:
                    os.truncate(part, offset)
                    self._sums[up.id] = before
                    raise ChecksumMismatch(
                        f"the chunk at offset {offset} arrived corrupted ({kind} "
                        f"{hasher.hexdigest()} instead of {expected}); send it again"
                    )
            state.offset = accepted
        return self.get(who, upload_id)

    async def complete(
        self, who: Principal, upload_id: str, *, crc32c: str | None = None, sha256: str | None = None
    ) -> UploadInfo:
        up = self._load(who, upload_id)
        crc32c = check_digest(crc32c, "crc32c", "CRC-32C")
        sha256 = check_digest(sha256, "sha256", "SHA-256")
        if up.completed_ms is not None:
            return self._info(up)
        part = self._part(up)
        have = part.stat().st_size if part.exists() else 0
        if have != up.size:
            raise Conflict(
                f"upload {upload_id} is incomplete: {have} of {up.size} bytes received; "
                f"send the rest from offset={have}",
                offset=have,
            )
        state = await self._checksums(up, part, have)
        if sha256 is not None and state.sha is None:  # asked for only now: a second read of the file
            state = await anyio.to_thread.run_sync(lambda: _checksum_prefix(part, have, sha256=True))
        digests = {"CRC-32C": state.crc.hexdigest(), "SHA-256": state.sha.hexdigest() if state.sha else None}
        for name, expected in (
            ("CRC-32C", crc32c),
            ("CRC-32C", up.crc32c),
            ("SHA-256", sha256),
            ("SHA-256", up.sha256),
        ):
            if expected is not None and expected != digests[name]:
                self.abort(who, upload_id)
                raise ChecksumMismatch(
                    f"{up.path}: the received bytes have {name} {digests[name]}, not {expected}; "
                    "the upload was discarded, start it again"
                )
        kind = await anyio.to_thread.run_sync(self._kind, up.group, up.path)
        if kind != "missing" and not up.overwrite:
            raise Conflict(f"inputs/{up.path} appeared meanwhile; upload with overwrite=true to replace it")
        if kind == "folder":
            raise Conflict(f"inputs/{up.path} is a folder; choose another name")
        # Durable before acknowledged: a completed upload survives a crash of the machine.
        try:
            await anyio.to_thread.run_sync(_fsync, part)
        except OSError as exc:
            _raise_if_disk_full(exc, upload_id, have)
            raise
        try:
            if self.store is not None:  # a copy into object storage, then the local part goes
                await anyio.to_thread.run_sync(self.store.publish, up.group, up.path, part)
                part.unlink()
            else:
                target = self.resolve_input(up.group, up.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(part, target)
                await anyio.to_thread.run_sync(_fsync, target.parent)
        except (NotADirectoryError, FileExistsError) as exc:
            raise Conflict(
                f"cannot place inputs/{up.path}: a file stands where a folder is needed ({exc.filename})"
            ) from None
        self._sums.pop(up.id, None)
        self._locks.pop(up.id, None)
        self._stored.pop(up.group, None)  # its bytes moved from an unfinished upload into its files
        with self._session() as s, s.begin():
            row = s.get(_Upload, up.id)
            assert row is not None  # ``up`` was read from it under this upload's lock
            row.completed_ms = int(time.time() * 1000)
            row.final_crc32c = digests["CRC-32C"]
            row.final_sha256 = digests["SHA-256"]
        return self.get(who, upload_id)
