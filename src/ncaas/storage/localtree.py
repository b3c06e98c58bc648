"""Reading local files and folders without following links or opening special files.

A dataset or an output folder may hold anything a user or a task can create: a
symbolic link to another group's file or to ``/dev/zero``, a FIFO that blocks
whoever opens it, a device, a socket. Describing or reading such a tree must
neither leak what a link points at nor block, so:

- entries found inside a folder are ``lstat``-ed, never followed: a link is
  recorded with its text, a special file by its kind, and neither is opened;
- only regular files are opened, with ``O_NOFOLLOW | O_NONBLOCK``, and checked
  again on the opened descriptor (``fstat``): a file swapped for a FIFO, a device
  or a link between the look and the open is refused, never read;
- folders are walked through directory descriptors (:func:`os.fwalk`), so a
  folder swapped for a link mid-walk is not entered.

Only a path the caller names itself is taken as it resolves (callers confine
it first, e.g. with :meth:`ncaas.storage.Storage.resolve`); ``follow=False``
records even that one as a link.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from ..exceptions import SpecialFileRefused

__all__ = [
    "KIND_WORDS",
    "copy_out",
    "describe",
    "kind",
    "kind_of",
    "open_regular",
    "read_regular",
    "regular_files",
    "sha256",
    "special_entries",
]

_KINDS = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "folder",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char-device",
    stat.S_IFBLK: "block-device",
    stat.S_IFSOCK: "socket",
}
KIND_WORDS = SpecialFileRefused.WORDS  # "a FIFO (named pipe)", ...
_READ = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC  # O_NONBLOCK: opening a FIFO never waits for a writer
_CHUNK = 1 << 20


def kind_of(mode: int) -> str:
    """``file``, ``folder``, ``symlink``, ``fifo``, ``char-device``, ``block-device`` or ``socket``."""
    return _KINDS.get(stat.S_IFMT(mode), "unknown")


def kind(path: str, *, follow: bool = False) -> str:
    """The kind of ``path`` (a link is ``symlink`` unless ``follow``); FileNotFoundError when absent."""
    return kind_of(os.stat(path, follow_symlinks=follow).st_mode)


def _text(name: str) -> str:
    """A file name or link text as printable text (undecodable bytes become U+FFFD)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def open_regular(
    path: str, *, follow: bool = False, dir_fd: int | None = None, expect: os.stat_result | None = None
) -> int:
    """A read-only descriptor of the regular file ``path``, or :class:`SpecialFileRefused`.

    Nothing but a regular file is opened: the path is looked at first, then opened
    without blocking (and, unless ``follow``, without following a link), and the
    opened descriptor checked again. ``expect`` (an earlier ``lstat``) must be the
    very file opened: a path whose folders were swapped for links since is refused.
    """
    found = os.stat(path, dir_fd=dir_fd, follow_symlinks=follow)
    if not stat.S_ISREG(found.st_mode):
        raise SpecialFileRefused(path, kind_of(found.st_mode))
    try:
        fd = os.open(path, _READ | (0 if follow else os.O_NOFOLLOW), dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # swapped for a link since the look
            raise SpecialFileRefused(path, "symlink") from None
        if exc.errno == errno.ENXIO:  # a socket
            raise SpecialFileRefused(path, "socket") from None
        raise
    opened = os.fstat(fd)
    moved = expect is not None and (opened.st_dev, opened.st_ino) != (expect.st_dev, expect.st_ino)
    if not stat.S_ISREG(opened.st_mode) or moved:
        os.close(fd)
        raise SpecialFileRefused(path, kind_of(opened.st_mode) if not moved else "changed")
    return fd


def _digest(fd: int) -> tuple[int, str]:
    """(bytes read, sha256) of an open file, to its end."""
    digest, size = hashlib.sha256(), 0
    while block := os.read(fd, _CHUNK):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def sha256(path: str) -> str:
    """The sha256 of the regular file ``path`` (a link to one is followed: callers confine it)."""
    fd = open_regular(path, follow=True)
    try:
        return _digest(fd)[1]
    finally:
        os.close(fd)


def read_regular(path: str, offset: int = 0, *, follow: bool = True, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path`` from ``offset`` (at most ``limit`` of them); a FIFO or
    device is refused, never opened (and a link too, unless ``follow``)."""
    fd = open_regular(path, follow=follow)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            fh.seek(offset)
            return fh.read(-1 if limit is None else limit)
    finally:
        os.close(fd)


def _entry(rel: str, name: str, dir_fd: int | None) -> dict[str, Any]:
    """How one entry is recorded: a file's size and sha256; a link's text; a special file's kind."""
    rel = _text(rel)
    found = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    what = kind_of(found.st_mode)
    if what == "symlink":
        return {"path": rel, "kind": "symlink", "target": _text(os.readlink(name, dir_fd=dir_fd))}
    if what != "file":
        return {"path": rel, "kind": what}
    try:
        fd = open_regular(name, dir_fd=dir_fd, expect=found)
    except SpecialFileRefused as exc:  # swapped since the look: record what it became, unread
        return {"path": rel, "kind": exc.kind}
    try:
        size, digest = _digest(fd)
    finally:
        os.close(fd)
    return {"path": rel, "size": size, "sha256": digest}


def _walk(top: str) -> Iterator[tuple[str, str, int, os.stat_result]]:
    """``(relative path, name, folder descriptor, lstat)`` of every entry but folders under ``top``."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(top, follow_symlinks=False):
        rel_dir = posixpath.relpath(dirpath, top)
        keep = []
        for name in sorted(dirnames + filenames):
            try:
                found = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(found.st_mode):
                keep.append(name)
            else:
                yield (name if rel_dir == "." else f"{rel_dir}/{name}"), name, dirfd, found
        dirnames[:] = [d for d in keep if d in dirnames]  # a link to a folder is an entry, not entered


def _top(path: str, follow: bool) -> str:
    return os.path.realpath(path) if follow else path


def describe(path: str, *, follow: bool = True) -> list[dict[str, Any]]:
    """Every entry under ``path`` (itself when it is not a folder), sorted by path.

    A regular file is ``{"path", "size", "sha256"}``, a link ``{"path", "kind":
    "symlink", "target"}``, a FIFO, device or socket ``{"path", "kind"}``.
    """
    top = _top(path, follow)
    if stat.S_ISDIR(os.stat(top, follow_symlinks=False).st_mode):
        out = []
        for rel, name, dirfd, _ in _walk(top):
            try:
                out.append(_entry(rel, name, dirfd))
            except FileNotFoundError:
                continue
        return sorted(out, key=lambda e: e["path"])
    return [_entry(posixpath.basename(path), top, None)]


def regular_files(path: str) -> list[tuple[str, os.stat_result]]:
    """``(path, lstat)`` of every regular file under the folder or file ``path``, links not followed.

    Paths are spelled under ``path`` as given; reopen them with ``open_regular(...,
    expect=lstat)`` to be sure the file read is the file listed.
    """
    top = _top(path, True)
    found = os.stat(top, follow_symlinks=False)
    if not stat.S_ISDIR(found.st_mode):
        return [(path, found)] if stat.S_ISREG(found.st_mode) else []
    return [(posixpath.join(path, rel), st) for rel, _, _, st in _walk(top) if stat.S_ISREG(st.st_mode)]


def special_entries(path: str) -> list[tuple[str, str, str | None]]:
    """``(relative path, kind, link text)`` of what a dataset folder holds that the analysis cannot read.

    That is every FIFO, device or socket, and every link leading out of ``path``
    (a task sees only its own dataset, where such a link leads nowhere).
    """
    top = _top(path, True)
    if not stat.S_ISDIR(os.stat(top).st_mode):
        return []
    out: list[tuple[str, str, str | None]] = []
    for rel, name, dirfd, found in _walk(top):
        what = kind_of(found.st_mode)
        if what == "file":
            continue
        if what == "symlink":
            target = os.readlink(name, dir_fd=dirfd)
            real = os.path.realpath(posixpath.join(top, posixpath.dirname(rel), target))
            if real == top or real.startswith(top.rstrip("/") + "/"):
                continue
            out.append((_text(rel), what, _text(target)))
        else:  # a FIFO, device or socket
            out.append((_text(rel), what, None))
    return out


def copy_out(path: str, dest: str) -> None:
    """Copy the file or folder ``path`` to ``dest``: its regular files only, links and special files left out.

    A folder becomes ``dest`` (``path`` ending in "/": its content goes into ``dest``); a
    file becomes ``dest``, or ``dest/<name>`` when ``dest`` is a folder.
    """
    top = path.rstrip("/") or path
    if os.path.isdir(dest) and not os.path.isdir(top):
        dest = os.path.join(dest, posixpath.basename(top))
    for file, found in regular_files(top):
        target = dest if file == top else os.path.join(dest, posixpath.relpath(file, top))
        try:
            fd = open_regular(file, expect=found)
        except (SpecialFileRefused, FileNotFoundError):
            continue  # replaced since it was listed
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with os.fdopen(fd, "rb") as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
