"""Helpers for the platform tests: data, blueprints, submit files, the real `ncaas` command."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FRAMESTATS = REPO / "analyses" / "framestats" / "blueprint.yaml"


def write_stack(path: Path, *, frames: int = 20, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.random.default_rng(seed).random((frames, 8, 8), dtype=np.float32))
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def make_blueprint(folder: Path, name: str, **changes: Any) -> Path:
    """A copy of the framestats blueprint under another name, with nested fields changed."""
    data = yaml.safe_load(FRAMESTATS.read_text())
    data["name"] = name
    data["environment"] = {"source": str(FRAMESTATS.parent)}  # the copy lives elsewhere
    for key, value in changes.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    path = folder / name / "blueprint.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(data))
    return path


def submit(
    root: Path, name: str, body: dict[str, Any], *, group: str = "lab", config: dict[str, Any] | None = None
) -> Path:
    """Write a config (if given) and a submit file, as a plain file copy would."""
    if config is not None:
        write_json(root / group / "configs" / f"{name}.json", config)
        body = {"configname": f"{name}.json", **body}
    return write_json(root / group / "submissions" / f"{name}.submit.json", body)


def wait_for(condition: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ncaas(
    *args: str, env: dict[str, str] | None = None, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `ncaas` command in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "ncaas", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"ncaas {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def start_manager(
    root: Path, log: Path, env: dict[str, str] | None = None, args: list[str] | None = None
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **(env or {})}
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "ncaas", "manager", "--root", str(root), *(args or [])],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=full_env,
        )


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to a process still running and wait for it (at most 20 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        proc.wait(timeout=20)


@contextlib.contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A file system of ``size`` (tmpfs) mounted at ``mount``, unmounted afterwards; skips without root."""
    import pytest

    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
