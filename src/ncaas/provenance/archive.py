"""Every blueprint version that ever ran, kept by the sha256 the platform computed itself.

A job records its blueprint's sha256; the blueprint behind it is always read from here
(or, when a job is made, from the registry of installed analyses, which puts it here).
So an analysis upgraded since a job ran can still be rerun exactly, and nothing a user
sends can name a blueprint the platform did not load from an installed analysis::

    <state>/blueprints/<sha256>.json   {"content": ..., "path": ..., "git_commit": ..., "git_dirty": ...}

Reading an entry re-validates it and recomputes its hash, so a damaged or altered file
is refused rather than run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pydantic import ValidationError

from ..blueprint import Blueprint, LoadedBlueprint
from ..exceptions import BlueprintError

__all__ = ["BlueprintArchive"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BlueprintArchive:
    """A content-addressed folder of blueprint versions."""

    def __init__(self, state_dir: Path):
        self.dir = Path(state_dir) / "blueprints"
        self._cache: dict[str, LoadedBlueprint] = {}

    def put(self, loaded: LoadedBlueprint) -> str:
        """Keep ``loaded`` (from the registry) under its content hash; returns the hash."""
        if self._cache.get(loaded.sha256) is loaded:
            return loaded.sha256
        sha = loaded.blueprint.content_hash()
        if sha != loaded.sha256:
            raise BlueprintError(f"blueprint {loaded.name}: its recorded sha256 is not its content's")
        path = self.dir / f"{sha}.json"
        if sha not in self._cache and not path.is_file():
            self.dir.mkdir(parents=True, exist_ok=True)
            entry = {
                "content": loaded.blueprint.model_dump(mode="json"),
                "path": str(loaded.path),
                "git_commit": loaded.git_commit,
                "git_dirty": loaded.git_dirty,
            }
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entry, indent=1, sort_keys=True))
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
        self._cache[sha] = loaded
        return sha

    def get(self, sha256: str) -> LoadedBlueprint | None:
        """The blueprint version with this content hash, or None when it never ran here."""
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            return None
        if sha256 in self._cache:
            return self._cache[sha256]
        path = self.dir / f"{sha256}.json"
        try:
            entry = json.loads(path.read_text())
            model = Blueprint.model_validate(entry["content"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, ValidationError) as exc:
            raise BlueprintError(f"the archived blueprint {path} is damaged ({exc}); it cannot be used") from None
        if model.content_hash() != sha256:
            raise BlueprintError(f"the archived blueprint {path} does not match its name; it cannot be used")
        loaded = LoadedBlueprint(
            model, Path(entry["path"]), sha256, entry.get("git_commit"), bool(entry.get("git_dirty"))
        )
        self._cache[sha256] = loaded
        return loaded
