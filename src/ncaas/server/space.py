"""Room for uploads: the free space the server keeps, and each group's quota.

An upload is refused (``507 Insufficient Storage``, with what is free and what
was asked) when it would leave less than the reserve free on the disk holding
the storage root, or take its group over its quota. Both are checked when the
upload is announced and when its bytes are sent; the free space is checked
again while they stream, since other uploads and jobs write to the same disk.

A group's usage is the apparent size of every file in its storage (inputs,
configs, submissions, results), links not followed, plus the full declared size
of its unfinished uploads, so that two uploads in flight cannot together go
over the quota.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..blueprint import parse_bytes
from ..isolation.verdict import human_size
from .errors import ServerError

__all__ = ["DEFAULT_RESERVE", "Reserve", "StorageFull", "free_bytes", "no_room_on_disk", "over_quota", "tree_size"]

DEFAULT_RESERVE = "1GiB"


class StorageFull(ServerError):
    """The server's disk (or the group's quota) has no room for the bytes sent."""

    status = 507  # Insufficient Storage


@dataclass(frozen=True)
class Reserve:
    """Free space kept on the disk: a size, or a percentage of the disk (``"5%"``)."""

    size: int = 0
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> Reserve:
        text = str(text).strip()
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = -1.0
            if not 0 <= percent < 100:
                raise ValueError(f"{text!r} is not a percentage of the disk; write e.g. 5%")
            return cls(percent=percent)
        return cls(size=parse_bytes(text))

    def bytes_of(self, disk_size: int) -> int:
        return int(disk_size * self.percent / 100) if self.percent is not None else self.size


def free_bytes(path: Path) -> tuple[int, int]:
    """(bytes free to this user, size) of the file system holding ``path``."""
    usage = shutil.disk_usage(path)
    return usage.free, usage.total


def tree_size(path: Path, *, skip: tuple[str, ...] = ()) -> int:
    """Apparent size of the regular files under ``path`` (links not followed; top-level names in ``skip`` left out)."""
    total = 0
    stack = [(Path(path), True)]
    while stack:
        folder, top = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            if top and entry.name in skip:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((Path(entry.path), False))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # removed while we looked
    return total


def no_room_on_disk(path: str, size: int, free: int, reserve: int) -> StorageFull:
    return StorageFull(
        f"not enough free space on the server for {path!r}: it needs {human_size(size)} more, "
        f"{human_size(free)} is free and {human_size(reserve)} is kept free for jobs; ask the administrator "
        "to free space, then upload it (or resume it) again",
        free=free,
        needed=size,
        reserve=reserve,
    )


def over_quota(group: str, path: str, size: int, used: int, quota: int) -> StorageFull:
    return StorageFull(
        f"group {group!r} would go over its quota of {human_size(quota)}: it uses {human_size(used)} "
        f"(inputs, configs, results and unfinished uploads) and {path!r} needs {human_size(size)} more; "
        f"delete data it no longer needs, or ask an administrator to raise it (`ncaas admin set-quota {group} SIZE`)",
        quota=quota,
        used=used,
        needed=size,
    )
