"""Space held back on the manager's disk, so that jobs still end when it fills up.

A task that fills the disk of the storage root leaves no room for the records that end
its job: the database transition, the final statuses, the certificate, ``end.json``. The
manager keeps a reserve file in its state folder (``NCAAS_DISK_RESERVE``, default 8 MiB;
``0`` turns it off) and gives it up the first time a step fails for lack of space, so the
step can be retried and the job ended. It takes the reserve again once twice that much is
free. Without the reserve (or when it is not enough), the manager retries every second
and ends the job when space returns.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

from ..blueprint import parse_bytes
from ..exceptions import StorageError

__all__ = ["Reserve", "is_disk_full"]

RESERVE_ENV = "NCAAS_DISK_RESERVE"
DEFAULT_RESERVE = 8 << 20
FULL_BELOW = 1 << 20  # bytes free under which a disk counts as full
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (or what it wraps: a cause, a database driver's error) is a full disk.

    SQLite reports a full disk as SQLITE_FULL, or as a plain I/O error when it cannot grow
    its shared-memory file: any database or file error counts when ``folder`` has no space.
    """
    if _says_full(exc):
        return True
    if not _chain_has(exc, (OSError, sqlite3.Error)):
        return False
    try:
        stat = os.statvfs(folder)
    except OSError:
        return False
    return stat.f_bavail * stat.f_frsize < FULL_BELOW


def _chain(exc: BaseException) -> list[BaseException]:
    seen: dict[int, BaseException] = {}
    todo: list[BaseException | None] = [exc]
    while todo:
        err = todo.pop()
        if err is None or id(err) in seen:
            continue
        seen[id(err)] = err
        todo += [err.__cause__, err.__context__, getattr(err, "orig", None)]
    return list(seen.values())


def _says_full(exc: BaseException) -> bool:
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in _NO_SPACE:
            return True
        if isinstance(err, sqlite3.Error) and getattr(err, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return True
    return False


def _chain_has(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    return any(isinstance(err, kinds) for err in _chain(exc))


def reserve_size() -> int:
    value = os.environ.get(RESERVE_ENV)
    if value is None or not value.strip():
        return DEFAULT_RESERVE
    try:
        return parse_bytes(value)
    except ValueError as exc:
        raise StorageError(f"{RESERVE_ENV}={value!r}: {exc} (0 turns the reserve off)") from None


class Reserve:
    """A file of ``size`` bytes, allocated on the disk of ``folder``, to give up when it is full."""

    def __init__(self, folder: Path, size: int):
        self.path = folder / "disk-reserve"
        self.size = size

    def hold(self) -> None:
        """Allocate the reserve if it is missing and twice its size is free (never fills a disk)."""
        if self.size <= 0 or self.path.exists():
            return
        try:
            stat = os.statvfs(self.path.parent)
            if stat.f_bavail * stat.f_frsize < 2 * self.size:
                return
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            with open(tmp, "wb") as fh:
                os.posix_fallocate(fh.fileno(), 0, self.size)
            os.replace(tmp, self.path)
        except OSError:
            self.path.with_name(f".{self.path.name}.tmp").unlink(missing_ok=True)

    def release(self) -> int:
        """Give the reserve up; the bytes freed (0 if there was none)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except FileNotFoundError:
            return 0
        return size
