"""Group storage over fsspec: a local directory by default, any fsspec URL later.

Layout (compatible with NeuroCAAS' bucket layout)::

    <root>/<group>/inputs/...                datasets (a file or a folder each)
    <root>/<group>/configs/<name>.yaml|json  analysis parameters
    <root>/<group>/submissions/<name>.submit.json
    <root>/<group>/results/<job-id>/...

Every path a user supplies goes through :meth:`Storage.resolve`, which refuses
absolute paths, ``..``, control characters and symlinks leading out of the group.
On a local root, what lies inside a folder is read without following links and
special files (FIFOs, devices, sockets) are never opened (:mod:`ncaas.storage.localtree`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..exceptions import PathRefused, SpecialFileRefused, StorageError
from . import localtree
from . import s3 as storage_s3

__all__ = ["AREAS", "KINDS", "Storage", "check_group", "check_user_path", "default_root", "skipped_note"]

AREAS = ("inputs", "configs", "submissions", "results")
_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_CHUNK = 1 << 20
STATE_FOLDER = ".ncaas"  # the manager's own folder in a local root: never a group


def default_root() -> str:
    return os.environ.get("NCAAS_ROOT") or "./ncaas-data"


class Storage:
    """Paths and bytes under one storage root; callers never touch fsspec directly."""

    def __init__(self, root: str | os.PathLike[str] | None = None):
        url = str(root if root is not None else default_root())
        try:
            # s3:// roots get the S3 backend's contract (no listing cache, folders = prefixes with files).
            self.fs, path = storage_s3.open_s3(url) if storage_s3.is_s3_url(url) else fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            raise StorageError(f"cannot open storage root {url!r}: {exc}") from exc
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = str(Path(path).resolve()) if self.is_local else path.rstrip("/")
        self.url = self.root if self.is_local else url.rstrip("/")

    # -- paths ---------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def group_dir(self, group: str) -> str:
        check_group(group)
        return self.join(group)

    def area(self, group: str, area: str) -> str:
        if area not in AREAS:
            raise ValueError(f"unknown storage area {area!r}")
        return self.join(check_group(group), area)

    def results_dir(self, group: str, job_id: str) -> str:
        return posixpath.join(self.area(group, "results"), job_id)

    def resolve(self, group: str, area: str, user_path: str) -> str:
        """Resolve a user-supplied path inside ``<group>/<area>``, or raise PathRefused."""
        rel = check_user_path(user_path, area)
        base = self.area(group, area)
        full = posixpath.join(base, rel)
        if self.is_local:
            real_base = os.path.realpath(base)
            real = os.path.realpath(full)
            if real != real_base and not real.startswith(real_base + os.sep):
                raise PathRefused(
                    f"{user_path!r} is a symbolic link leading out of {group}/{area}/; "
                    f"copy the data into {group}/{area}/ instead of linking to it"
                )
        return full

    def state_dir(self) -> Path:
        """The manager's own local folder (job database, run folders, locks).

        ``<root>/.ncaas`` for a local root; for a remote root, a folder named after the root's
        URL under ``$NCAAS_STATE`` (default ``~/.cache/ncaas/state``) on the manager's machine.
        """
        if self.is_local:
            return Path(self.join(".ncaas"))
        base = Path(os.environ.get("NCAAS_STATE") or Path.home() / ".cache" / "ncaas" / "state")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.url)[-60:].strip("-")
        return base / f"{name}-{hashlib.sha256(self.url.encode()).hexdigest()[:12]}"

    def local_path(self, path: str) -> Path:
        """The local filesystem path of ``path``; only local roots have one."""
        if not self.is_local:
            raise StorageError(f"{self.url} is not a local directory; the local executor needs one")
        return Path(path)

    def relative(self, path: str) -> str:
        return posixpath.relpath(path, self.root)

    # -- bytes ---------------------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self._call(self.fs.exists, path)

    def isdir(self, path: str) -> bool:
        return self._call(self.fs.isdir, path)

    def makedirs(self, path: str) -> None:
        self._call(self.fs.makedirs, path, exist_ok=True)

    def read_bytes(self, path: str, *, follow: bool = True) -> bytes:
        """The bytes of a file; on a local root a FIFO or device is refused (SpecialFileRefused), not
        opened, and so is a link unless ``follow``."""
        if self.is_local:
            return self._call(localtree.read_regular, path, follow=follow)
        return self._call(self.fs.cat_file, path)

    def read_from(self, path: str, offset: int) -> bytes:
        """The bytes of ``path`` from ``offset`` to its current end (a growing log, say)."""
        if offset >= self.size(path):
            return b""
        if self.is_local:
            return self._call(localtree.read_regular, path, offset)
        return self._call(self.fs.cat_file, path, start=offset)

    def read_head(self, path: str, limit: int) -> bytes:
        """At most the first ``limit`` bytes of ``path`` (a file too large to read whole); on a local
        root a link, FIFO or device is refused (SpecialFileRefused), never opened."""
        if self.is_local:
            return self._call(localtree.read_regular, path, follow=False, limit=limit)
        return self._call(self.fs.cat_file, path, start=0, end=limit)

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """At most ``length`` bytes of ``path`` from ``offset`` (b"" past its end): a large file in blocks."""
        if self.is_local:
            return self._call(localtree.read_regular, path, offset, follow=False, limit=length)
        return self._call(self.fs.cat_file, path, start=offset, end=offset + length)

    def read_text(self, path: str) -> str:
        return self.read_bytes(path).decode("utf-8")

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write atomically where the backend allows it (local: temp file + rename)."""
        parent = posixpath.dirname(path)
        self.makedirs(parent)
        if self.is_local:
            tmp = posixpath.join(parent, f".{posixpath.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:  # a full disk, say: leave the old file and no half-written one
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        else:
            self._call(self.fs.pipe_file, path, data)

    def write_text(self, path: str, text: str) -> None:
        self.write_bytes(path, text.encode("utf-8"))

    def put(self, local: str | os.PathLike[str], path: str) -> None:
        """Copy a local file or folder into storage at ``path``.

        Of a folder, only regular files are copied: a link or FIFO a task left in its outputs
        is neither followed nor opened (``/dev/zero`` would never end, a FIFO never start).
        """
        local = Path(local)
        self.makedirs(posixpath.dirname(path))
        if local.is_dir() and self.is_local:
            self._call(localtree.copy_out, str(local), path)
        elif local.is_dir():
            files = [file for file, _ in localtree.regular_files(str(local))]
            if files:  # lists in, lists out: each file to its own key, in parallel
                self._call(self.fs.put, files, [posixpath.join(path, os.path.relpath(f, local)) for f in files])
        else:
            self._call(self.fs.put_file, str(local), path)

    def get(self, path: str, local: str | os.PathLike[str]) -> None:
        """Copy a file or folder out of storage; from a local root, links and special files are left out."""
        if self.is_local:
            return self._call(localtree.copy_out, path, str(local))
        self._call(self.fs.get, path, str(local), recursive=self.isdir(path))

    def remove(self, path: str) -> None:
        if self.exists(path):
            self._call(self.fs.rm, path, recursive=True)

    def glob(self, pattern: str) -> list[str]:
        return sorted(self._call(self.fs.glob, self.join(pattern)))

    def files(self, path: str) -> list[str]:
        """Every file under ``path`` (itself when it is a file), sorted.

        On a local root: regular files only; links found inside ``path`` are not followed.
        """
        if self.is_local:
            try:
                return sorted(p for p, _ in self._call(localtree.regular_files, path))
            except FileNotFoundError:
                return []
        if not self.isdir(path):
            return [path] if self.exists(path) else []
        return sorted(self._call(self.fs.find, path))

    def entry_kind(self, path: str, *, follow: bool = False) -> str:
        """What ``path`` is: "file", "folder", "link", "fifo", "socket", "device" or "missing".

        Asked before reading a file the platform must never block on (a FIFO) nor read
        through (a link to another group's file); remote stores hold files and folders only.
        """
        if not self.is_local:
            return "file" if self.exists(path) and not self.isdir(path) else "folder" if self.isdir(path) else "missing"
        try:
            kind = self._call(localtree.kind, path, follow=follow)
        except FileNotFoundError:
            return "missing"
        return _ENTRY_KINDS.get(kind, "device")

    def size(self, path: str) -> int:
        return int(self._call(self.fs.size, path))

    def stamp(self, path: str) -> tuple[Any, ...]:
        """(size, modification time) of a file: changes when the file is rewritten."""
        info = self._call(self.fs.info, path)
        when = info.get("mtime") or info.get("LastModified") or info.get("ETag")
        return info.get("size"), when.timestamp() if hasattr(when, "timestamp") else when

    def kind(self, path: str) -> str:
        """``file`` or ``folder``; on a local root also ``symlink``, ``fifo``, ``char-device``,
        ``block-device`` or ``socket`` (``path`` itself is not followed)."""
        if self.is_local:
            return self._call(localtree.kind, path)
        return "folder" if self.isdir(path) else "file"

    def unreadable(self, path: str) -> list[tuple[str, str, str | None]]:
        """``(relative path, kind, link text)`` of what a dataset holds that no analysis can read:
        FIFOs, devices, sockets, and links leading out of the dataset (none on object stores)."""
        if not self.is_local:
            return []
        top = self._call(localtree.kind, path, follow=True)
        if top not in ("file", "folder"):
            return [(posixpath.basename(path), top, None)]
        return self._call(localtree.special_entries, path)

    def sha256(self, path: str) -> str:
        if self.is_local:  # a FIFO or device is refused, never opened
            return self._call(localtree.sha256, path)
        digest = hashlib.sha256()
        with self._call(self.fs.open, path, "rb") as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
        return digest.hexdigest()

    def describe_tree(self, path: str, *, follow: bool = True) -> list[dict[str, Any]]:
        """Relative path, size and sha256 of every file under ``path``.

        On a local root, a link found inside is ``{"path", "kind": "symlink", "target"}``
        and a FIFO, device or socket ``{"path", "kind"}``: neither is followed nor opened.
        ``follow=False`` records ``path`` itself that way when it is one.
        """
        if self.is_local:
            return self._call(localtree.describe, path, follow=follow)
        out = []
        for file in self.files(path):
            rel = posixpath.relpath(file, path) if file != path else posixpath.basename(path)
            out.append({"path": rel, "size": self.size(file), "sha256": self.sha256(file)})
        return out

    def iter_submissions(self) -> Iterator[tuple[str, str]]:
        """``(group, path)`` of every ``*.submit.json`` under any group."""
        for group, path, _ in self.submission_stamps():
            yield group, path

    def submission_stamps(self, skipped: dict[str, str] | None = None) -> Iterator[tuple[str, str, tuple[Any, ...]]]:
        """``(group, path, stamp)`` of every ``*.submit.json`` under any group.

        Folders holding a ``submissions/`` folder whose names are not group names are skipped;
        given ``skipped``, each is added to it with a note saying why (:meth:`skipped_folders`).
        Called every poll: a local root is listed with ``os.scandir`` (~100x cheaper
        than fsspec's glob, which stats every entry).
        """
        if not self.is_local:
            for path in self.glob("*/submissions/*.submit.json"):
                group = self.relative(path).split("/", 1)[0]
                if _GROUP_RE.match(group):
                    yield group, path, self.stamp(path)
                elif skipped is not None:
                    skipped.setdefault(group, skipped_note(group))
            return
        groups, bad = self._group_folders()
        if skipped is not None:
            skipped.update(bad)
        for group in groups:
            folder = posixpath.join(self.root, group, "submissions")
            try:
                entries = sorted(
                    (e for e in os.scandir(folder) if e.name.endswith(".submit.json")), key=lambda e: e.name
                )
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue
                yield group, entry.path, (st.st_size, st.st_mtime)

    def skipped_folders(self) -> dict[str, str]:
        """Folders of the root that hold ``submissions/`` but are no group (``bad group/``,
        ``.hidden/``), each with a note saying why their submissions are not run."""
        if self.is_local:
            return self._group_folders()[1]
        folders = {self.relative(path).split("/", 1)[0] for path in self.glob("*/submissions/*.submit.json")}
        return {folder: skipped_note(folder) for folder in sorted(folders) if not _GROUP_RE.match(folder)}

    def _group_folders(self) -> tuple[list[str], dict[str, str]]:
        """The group folders of a local root, and the skipped ones with their notes."""
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return [], {}
        groups, skipped = [], {}
        for entry in entries:
            if _GROUP_RE.match(entry.name):
                if entry.is_dir():
                    groups.append(entry.name)
            elif entry.name != STATE_FOLDER and os.path.isdir(posixpath.join(entry.path, "submissions")):
                skipped[entry.name] = skipped_note(entry.name)
        return sorted(groups), dict(sorted(skipped.items()))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except SpecialFileRefused as exc:  # named inside the storage root, not by its host path
            raise SpecialFileRefused(
                self.relative(exc.path) if self.is_local and exc.path.startswith(self.root) else exc.path, exc.kind
            ) from None
        except OSError as exc:
            if storage_s3.is_s3_url(self.url):
                raise StorageError(storage_s3.explain(exc, str(args[0]) if args else self.url)) from exc
            raise StorageError(f"storage operation failed on {args[0] if args else self.url}: {exc}") from exc
        except storage_s3.S3_ERRORS as exc:
            raise StorageError(storage_s3.explain(exc, str(args[0]) if args else self.url)) from exc


_GROUP_RULE = "use letters, digits, '.', '_' or '-' (starting with a letter or digit, at most 64 characters)"


def check_group(group: str) -> str:
    if not _GROUP_RE.match(group or ""):
        raise PathRefused(f"group name {group!r} is not allowed; {_GROUP_RULE}")
    return group


def skipped_note(folder: str) -> str:
    """Why the submissions of a folder that is not named as a group are never run."""
    why = "is hidden (its name starts with '.')" if folder.startswith(".") else "is not a valid group name"
    return (
        f"folder {folder!r} holds submissions/ but its name {why}, so they are not run; "
        f"rename it: group names {_GROUP_RULE}"
    )


_ENTRY_KINDS = {"file": "file", "folder": "folder", "symlink": "link", "fifo": "fifo", "socket": "socket"}
KINDS = {
    "file": "a file",
    "folder": "a folder",
    "link": "a symbolic link",
    "fifo": "a named pipe (FIFO)",
    "socket": "a socket",
    "device": "a device",
    "missing": "missing",
}


def check_user_path(user_path: str, area: str = "inputs") -> str:
    """Normalise a relative user path, refusing anything that could leave its folder."""
    if not isinstance(user_path, str) or not user_path.strip():
        raise PathRefused(f"an empty path was given for {area}/; name a file or folder inside it")
    if _CONTROL_RE.search(user_path):
        raise PathRefused(
            f"{user_path!r} contains control characters (newline, tab, ...); rename the file without them"
        )
    if user_path.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", user_path) or "://" in user_path:
        raise PathRefused(f"{user_path!r} is an absolute path; give a path relative to your group's {area}/ folder")
    parts = [p for p in user_path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PathRefused(f"{user_path!r} contains '..'; paths must stay inside your group's {area}/ folder")
    if not parts:
        raise PathRefused(f"{user_path!r} does not name a file or folder inside {area}/")
    return "/".join(parts)
