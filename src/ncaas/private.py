"""The platform's own state is readable by the platform's user only.

The state folder (``<root>/.ncaas``: the job and account database, its journal
files, locks and keys) is 0700 and the SQLite database 0600, whatever the
umask; a storage root ncaas creates is 0700 too. The long-running processes
(``ncaas serve``, ``ncaas manager``) also run with the umask 0o077, so
everything they and their tasks write (uploads, results, logs, environments) is
private to that user: tasks run in their sandbox as the same user (mapped to
``nobody`` inside), so they still read their inputs and environment and write
their outputs.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["PRIVATE_UMASK", "STATE_DIR", "private_dir", "private_sqlite", "sqlite_file", "use_private_umask"]

PRIVATE_UMASK = 0o077
STATE_DIR = ".ncaas"
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def use_private_umask() -> int:
    """Make files this process creates from now on private to its user; returns the umask before."""
    return os.umask(PRIVATE_UMASK)


def private_dir(path: str | os.PathLike[str], *, existing: bool = True) -> Path:
    """Create ``path`` (and any missing parent, each 0700) and make it 0700 (if it existed: when ``existing``)."""
    path = Path(path)
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass  # made meanwhile by another process
    if (existing or missing) and stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)  # only when needed: another user may read a folder already private
    return path


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL, or None (another database, or in memory)."""
    if not url.startswith("sqlite:///"):
        return None
    file = url.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(file) if file and not file.startswith(":memory:") else None


def private_sqlite(url: str) -> None:
    """Make a SQLite database file (created empty if missing) and its folder private to this user.

    SQLite creates its journal files with the database file's permissions, so
    they follow; ones left by an older ncaas are fixed here too.
    """
    file = sqlite_file(url)
    if file is None:
        return
    if file.parent.name == STATE_DIR:
        private_dir(file.parent)
    else:  # a database file the administrator placed elsewhere: its folder is theirs, only new ones are ours
        private_dir(file.parent, existing=False)
    # Created here, 0600, rather than by SQLite at the first connection with the process' umask. Never
    # opened here once it exists: closing any descriptor of a file drops every POSIX lock this process
    # holds on it, SQLite's included.
    try:
        os.close(os.open(file, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for path in (file, *(file.with_name(file.name + side) for side in _SQLITE_SIDE_FILES)):
        try:
            if stat.S_IMODE(path.stat().st_mode) != 0o600:
                os.chmod(path, 0o600)
        except FileNotFoundError:
            pass
