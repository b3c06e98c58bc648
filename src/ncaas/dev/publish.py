"""``ncaas dev publish``: an analysis folder installed as a new, immutable version.

Each version is copied once into ``<dir>/.versions/<name>/<version>/`` (read-only, with
``PUBLISHED.json``: when, the blueprint's sha256, the folder's tree hash), and ``<dir>/<name>`` is a
symbolic link to the installed version, swapped in one atomic rename. A job keeps the blueprint
version it was submitted with (by the path the platform resolved, inside its version folder), so
installing a new version never changes what a queued or running job runs. A version number is
published once: the same number with other content is refused (bump ``version``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

from ..blueprint import Blueprint, load_blueprint
from ..exceptions import NcaasError

__all__ = ["LEFT_OUT", "blueprint_diff", "blueprint_file", "describe_version", "install", "installed", "tree_sha256"]

LEFT_OUT = {".ncaas-dev", "__pycache__", ".pytest_cache", ".git", ".venv", ".mypy_cache", ".ruff_cache"}


def _files(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in LEFT_OUT)
        found += [Path(dirpath) / f for f in sorted(filenames) if f != "PUBLISHED.json"]
    return found


def tree_sha256(folder: Path) -> str:
    """The digest of a folder's files (paths and contents), dev-only folders left out."""
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(
            f"{path.relative_to(folder).as_posix()}\0{hashlib.sha256(path.read_bytes()).hexdigest()}\n".encode()
        )
    return digest.hexdigest()


def installed(into: Path, name: str) -> Blueprint | None:
    """The installed version's blueprint, or None when ``name`` is not installed in ``into``."""
    link = into / name
    for candidate in (link / "blueprint.yaml", link / "blueprint.yml", link / "blueprint.json"):
        if candidate.is_file():
            return load_blueprint(candidate).blueprint
    return None


def _pins(lock: Path | None) -> dict[str, str]:
    pins: dict[str, str] = {}
    if lock is None or not lock.is_file():
        return pins
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.split(";")[0].split()[0].strip()
    return pins


def blueprint_diff(
    old: Blueprint | None,
    new: Blueprint,
    *,
    old_lock: Path | None = None,
    new_lock: Path | None = None,
    old_source: str | None = None,
    new_source: str | None = None,
) -> list[str]:
    """What changed between the installed blueprint and the new one, a line per change:
    command, config schema (options added, removed, changed; defaults), resources, environment."""
    if old is None:
        return [f"new analysis {new.name} {new.version}: nothing installed under that name"]
    lines = []
    if old.version != new.version:
        lines.append(f"version: {old.version} -> {new.version}")
    if old.command != new.command:
        lines += [f"command: - {' '.join(old.command)}", f"command: + {' '.join(new.command)}"]
    before = old.config_schema.get("properties", {})
    after = new.config_schema.get("properties", {})
    for key in sorted(after.keys() - before.keys()):
        lines.append(f"config_schema: + {key} {json.dumps(after[key], sort_keys=True)}")
    for key in sorted(before.keys() - after.keys()):
        lines.append(f"config_schema: - {key} (removed: configs setting it are refused)")
    for key in sorted(before.keys() & after.keys()):
        if before[key] != after[key]:
            lines.append(
                f"config_schema: ~ {key} {json.dumps(before[key], sort_keys=True)} -> "
                f"{json.dumps(after[key], sort_keys=True)}"
            )
    for key in sorted(old.default_config.keys() | new.default_config.keys()):
        a, b = old.default_config.get(key, "(none)"), new.default_config.get(key, "(none)")
        if a != b:
            lines.append(f"default_config: {key}: {json.dumps(a)} -> {json.dumps(b)}")
    for key, a in old.resources.model_dump().items():
        b = getattr(new.resources, key)
        if a != b:
            lines.append(f"resources: {key}: {a} -> {b}")
    if old.environment != new.environment:
        lines.append(f"environment: {old.environment.model_dump()} -> {new.environment.model_dump()}")
    a_pins, b_pins = _pins(old_lock), _pins(new_lock)
    for package in sorted(a_pins.keys() | b_pins.keys()):
        if a_pins.get(package) != b_pins.get(package):
            lines.append(
                f"environment: {package} {a_pins.get(package, '(absent)')} -> {b_pins.get(package, '(absent)')}"
            )
    if old_source is not None and new_source is not None and old_source != new_source:
        lines.append(f"environment: analysis source changed (tree sha256 {old_source[:12]}… -> {new_source[:12]}…)")
    for field in ("access", "limits", "compare", "description"):
        if getattr(old, field) != getattr(new, field):
            lines.append(f"{field}: changed")
    return lines or ["no change to the blueprint"]


def _read_only(folder: Path) -> None:
    for path in [*_files(folder), *(p for p in folder.rglob("*") if p.is_dir()), folder]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def install(source: Path, into: Path, *, blueprint_sha256: str) -> tuple[Path, bool]:
    """Archive ``source`` as its version and make it the installed one; (version folder, whether new).

    Refuses a version number already published with other content.
    """
    model = load_blueprint(blueprint_file(source)).blueprint
    versions = into / ".versions" / model.name
    target = versions / model.version
    digest = tree_sha256(source)
    link = into / model.name
    if link.exists() and not link.is_symlink():
        raise NcaasError(
            f"{link} is a folder installed by hand; move it out of {into} (or publish into another folder) "
            "so that versions can be swapped in without touching it"
        )
    if target.exists():
        published = json.loads((target / "PUBLISHED.json").read_text())
        if published["tree_sha256"] != digest:
            raise NcaasError(
                f"version {model.version} of {model.name} is already published with other content; "
                "give blueprint.yaml a new version (e.g. 0.1.1) and publish again"
            )
        new = False
    else:
        versions.mkdir(parents=True, exist_ok=True)
        staging = versions / f".{model.version}.{os.getpid()}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        for path in _files(source):
            dest = staging / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
        published = {
            "name": model.name,
            "version": model.version,
            "blueprint_sha256": blueprint_sha256,
            "tree_sha256": digest,
            "published": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "from": str(source.resolve()),
        }
        (staging / "PUBLISHED.json").write_text(json.dumps(published, indent=1) + "\n")
        _read_only(staging)
        staging.rename(target)
        new = True
    swap = into / f".{model.name}.{os.getpid()}.link"
    if swap.is_symlink():
        swap.unlink()
    swap.symlink_to(Path(".versions") / model.name / model.version)
    os.replace(swap, link)  # one rename: a reader sees the old version or the new, never neither
    return target, new


def blueprint_file(folder: Path) -> Path:
    for name in ("blueprint.yaml", "blueprint.yml", "blueprint.json"):
        if (folder / name).is_file():
            return folder / name
    raise NcaasError(f"{folder} holds no blueprint.yaml; is it an analysis folder (`ncaas dev new NAME` makes one)?")


def describe_version(folder: Path) -> dict[str, Any]:
    """``PUBLISHED.json`` of a version folder."""
    return json.loads((folder / "PUBLISHED.json").read_text())
