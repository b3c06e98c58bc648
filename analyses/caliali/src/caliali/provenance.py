"""What a run's outputs say about where they come from, without a clock or a random id.

**Identifier.** The NWB ``identifier`` is ``caliali-`` followed by the sha256 of the lines
``<name>=<hash>\\n``, sorted by name, of the content hashes of the run:

- under ncaas, the ones its certificate records, which the platform gives every task
  (``NCAAS_INPUT_SHA256`` -> ``input``, ``NCAAS_CONFIG_SHA256`` -> ``config``,
  ``NCAAS_BLUEPRINT_SHA256`` -> ``blueprint``, ``NCAAS_LOCK_SHA256`` -> ``lock``);
- run on its own (``python -m caliali run``), ``input`` and ``config`` computed here the
  way the platform computes them: a file's sha256; a folder's sha256 of the sorted lines
  ``<relative path>\\0<sha256>\\n`` (a link ``symlink:<target>``, a FIFO or device its kind);
  the config's sha256 as canonical JSON (sorted keys, no spaces) of every parameter,
  defaults included, as given.

**Session start.** The recording's own metadata (`caliali.io.VideoReader.recorded_at`) of
the first session's first file; else the config's ``session_start_time``; else `EPOCH`.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["EPOCH", "HASH_VARIABLES", "RunHashes", "config_sha256", "input_sha256", "run_hashes", "session_start"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""The session start written when neither the recording nor the config says it: never the run's clock."""

HASH_VARIABLES = {
    "input": "NCAAS_INPUT_SHA256",
    "config": "NCAAS_CONFIG_SHA256",
    "blueprint": "NCAAS_BLUEPRINT_SHA256",
    "lock": "NCAAS_LOCK_SHA256",
}

_KINDS = {
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char-device",
    stat.S_IFBLK: "block-device",
    stat.S_IFSOCK: "socket",
}


@dataclass(frozen=True)
class RunHashes:
    """The content hashes a run's identifier derives from, and where they came from."""

    hashes: dict[str, str]
    source: str  # "ncaas" (given by the platform) or "caliali" (computed here)

    @property
    def identifier(self) -> str:
        text = "".join(f"{name}={value}\n" for name, value in sorted(self.hashes.items()))
        return f"caliali-{hashlib.sha256(text.encode()).hexdigest()}"

    def describe(self) -> dict[str, Any]:
        return {"identifier": self.identifier, "from": dict(sorted(self.hashes.items())), "hashes_by": self.source}


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _fingerprint(path: Path) -> str:
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode):
        return _file_sha256(path)
    kind = _KINDS.get(stat.S_IFMT(mode), "unknown")
    return f"symlink:{os.readlink(path)}" if kind == "symlink" else kind


def input_sha256(path: Path | str) -> str:
    """The dataset's hash as ncaas records it: a file's sha256, a folder's tree digest."""
    path = Path(path)
    if not path.is_dir():
        return _file_sha256(path)
    entries = []
    for folder, dirs, files in os.walk(path):  # os.walk lists links to folders in dirs, never enters them
        for name in dirs + files:
            full = Path(folder) / name
            if not full.is_dir() or full.is_symlink():
                entries.append((full.relative_to(path).as_posix(), _fingerprint(full)))
    digest = hashlib.sha256()
    for rel, fingerprint in sorted(entries):
        digest.update(f"{rel}\0{fingerprint}\n".encode())
    return digest.hexdigest()


def config_sha256(config: Mapping[str, Any]) -> str:
    """sha256 of ``config`` as canonical JSON, the way ncaas hashes a job's config."""
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_hashes(input: Path | str, config: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> RunHashes:
    """The platform's hashes when it gave them (``NCAAS_*_SHA256``), else input and config hashed here."""
    environ = os.environ if environ is None else environ
    given = {name: environ[var] for name, var in HASH_VARIABLES.items() if environ.get(var)}
    if "input" in given and "config" in given:
        return RunHashes(given, "ncaas")
    return RunHashes({"input": input_sha256(input), "config": config_sha256(config)}, "caliali")


def session_start(first_file: Path, *, dataset: str | None, configured: datetime | None) -> tuple[datetime, str]:
    """When the experiment started, and which source said so (``recording``, ``config`` or ``default``)."""
    from caliali.io import open_video

    with open_video(first_file, dataset=dataset) as video:
        recorded = video.recorded_at
    if recorded is not None:
        return recorded, "recording"
    if configured is not None:
        return configured, "config"
    return EPOCH, "default"
