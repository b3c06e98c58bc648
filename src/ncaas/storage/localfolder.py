"""Which files of a local folder make a dataset: all of them but hidden files and system clutter.

A folder copied on a Mac or Windows machine carries files nobody put there on
purpose: ``.DS_Store``, ``._movie.avi`` (macOS resource forks), ``Thumbs.db``,
``desktop.ini``, ``__MACOSX/``, ``.git/``. Walking a folder leaves out every file
or folder whose name starts with a dot and those few system names (a left-out
folder is not entered). A file or folder named explicitly is always taken: only
what is found inside a folder is filtered. The web page applies the same rule to
dropped and picked folders (``isHidden`` in ``server/static/app.js``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..exceptions import NcaasError

__all__ = ["FolderFiles", "folder_files", "is_hidden", "left_out_note"]

# Compared case-insensitively: Windows and macOS file systems ignore case.
_CLUTTER = frozenset({"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "icon\r"})
_SHOWN = 5  # left-out names listed in a note; the rest are counted


def is_hidden(name: str) -> bool:
    """Whether a file or folder found inside a dataset folder is left out of the upload."""
    return name.startswith(".") or name.casefold() in _CLUTTER


@dataclass(frozen=True)
class FolderFiles:
    """The files of ``folder`` that make the dataset, and what was left out."""

    folder: Path
    files: list[Path]  # sorted, each under folder
    left_out: list[str]  # paths relative to folder, sorted; a folder ends with "/"

    def relative(self, file: Path) -> str:
        return file.relative_to(self.folder).as_posix()


def folder_files(folder: str | os.PathLike[str]) -> FolderFiles:
    """Every file under ``folder`` but hidden ones; a folder holding none is refused.

    Symbolic links to files are taken; symbolic links to folders are not entered.
    """
    folder = Path(folder)
    files: list[Path] = []
    left_out: list[str] = []
    for top, dirs, names in os.walk(folder):
        here = Path(top)
        rel = here.relative_to(folder)
        left_out += [(rel / d).as_posix() + "/" for d in dirs if is_hidden(d)]
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        for name in names:
            if is_hidden(name):
                left_out.append((rel / name).as_posix())
            elif (here / name).is_file():
                files.append(here / name)
    if not files and left_out:
        raise NcaasError(
            f"{folder} holds only hidden files ({_listing(sorted(left_out))}); a dataset needs at "
            "least one file whose name does not start with '.' (system files such as Thumbs.db "
            "and __MACOSX/ are left out too)"
        )
    if not files:
        raise NcaasError(f"{folder} is an empty folder; a dataset needs at least one file")
    return FolderFiles(folder, sorted(files, key=Path.as_posix), sorted(left_out))


def left_out_note(left_out: list[str]) -> str:
    """``left out 2 hidden files: .DS_Store, ._movie.avi`` (the web page words it the same)."""
    folders = sum(p.endswith("/") for p in left_out)
    counts = [
        f"{n} hidden {word}{'s' if n > 1 else ''}"
        for n, word in ((len(left_out) - folders, "file"), (folders, "folder"))
        if n
    ]
    return f"left out {' and '.join(counts)}: {_listing(left_out)}"


def _listing(paths: list[str]) -> str:
    shown = ", ".join(paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")
