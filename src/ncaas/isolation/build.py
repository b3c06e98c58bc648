"""The sandbox every step of an environment build runs in: third-party code never runs as the platform.

Building an environment runs code the platform did not write: the analysis' build
backend and its hooks (``uv build``), the build of any locked source distribution,
and the new environment's interpreter with whatever ``.pth`` files its packages
brought (``--compile-bytecode``). So every uv call of a build runs in
:mod:`ncaas.isolation.sandbox`'s bubblewrap sandbox, as uid 65534 of its own user namespace,
seeing only

* read-only: the system (``/usr``, ``/etc`` with its secrets masked), the base
  interpreter's installation, uv's binary, the analysis' lock;
* the analysis source copy-on-write (build backends such as setuptools write into the
  tree they build; those writes are dropped), or read-only where overlays are missing;
* writable: the environment's own folder and the folder its wheel is built into;
* uv's package cache copy-on-write (where bwrap and the kernel can overlay it): a step
  reads every cached package, but what it changes there is dropped when it ends. Only
  steps that fetch packages (wheels only, so no third-party code runs) write to it.

The storage root, its state folder and job database, the other environments and the
home folder do not exist in it. Steps have no network: each runs first against uv's
cache alone; when the cache lacks packages, a fetching step downloads them with the
host's network, and the step runs again offline (see :mod:`ncaas.isolation.environments`).
``NCAAS_SANDBOX=off`` runs the steps unsandboxed, as it does tasks, and the build log
says so.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from ..exceptions import NcaasError
from . import sandbox as sandboxes

__all__ = ["BuildBox", "uv_cache_dir"]

_PROCESSES = 4096  # uv runs a thread per core, and bytecode compilers beside them
_TAIL = 15
# The operator's settings for reaching the index (proxies, certificates), passed into the sandbox.
_PASSED_ON = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
)


@functools.lru_cache(maxsize=4)
def _cache_dir(uv: str, settings: tuple[str | None, ...]) -> Path:  # settings: what uv reads, as the key
    out = subprocess.run([uv, "cache", "dir", "--no-config"], capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise NcaasError(
            f"cannot find uv's package cache ({out.stderr.strip()[-300:]}); set UV_CACHE_DIR to a writable folder"
        )
    return Path(out.stdout.strip()).absolute()


def uv_cache_dir(uv: str) -> Path:
    """uv's package cache as uv itself finds it (``UV_CACHE_DIR``, else the XDG cache of the user)."""
    settings = tuple(os.environ.get(k) for k in ("UV_CACHE_DIR", "XDG_CACHE_HOME", "HOME"))
    return _cache_dir(uv, settings)


@dataclass(frozen=True)
class BuildBox:
    """What the steps of one environment build may see; :meth:`run` runs one step in it."""

    readonly: Sequence[Path]
    writable: Sequence[Path]
    cache: Path
    env: dict[str, str] = field(default_factory=dict)
    copy_on_write: Sequence[Path] = ()  # shown writable, changes dropped (else read-only)

    @classmethod
    def for_build(
        cls, uv: str, *, readonly: Sequence[Path], writable: Sequence[Path], copy_on_write: Sequence[Path] = ()
    ) -> BuildBox:
        """The box for a build by ``uv``: its binary added to ``readonly``, its cache shown as :meth:`run` says.

        ``copy_on_write`` folders (the analysis source: some build backends write into the
        tree they build) look writable, but what a step changes there is dropped.
        """
        cache = uv_cache_dir(uv)
        cache.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k.startswith("UV_") or k in _PASSED_ON}
        env.update({"UV_CACHE_DIR": str(cache), "UV_NO_PROGRESS": "1", "NO_COLOR": "1", "UV_PYTHON_DOWNLOADS": "never"})
        return cls(
            readonly=[Path(uv), *readonly],
            writable=list(writable),
            cache=cache,
            env=env,
            copy_on_write=list(copy_on_write),
        )

    def describe(self) -> str:
        """One line for the build log: the isolation the steps get."""
        if sandboxes.sandbox_mode() == "none":
            return (
                f"# sandbox: none ({sandboxes.MODE_VARIABLE}=off): the build steps run unsandboxed, "
                f"as uid {os.getuid()}, with the host's files and network"
            )
        cow = [str(p) for p in self.copy_on_write]
        if sandboxes.overlay_supported():
            views = "; copy-on-write: " + ", ".join([*cow, f"uv's cache {self.cache} (only fetching writes to it)"])
        else:
            views = (f"; read-only: {', '.join(cow)}" if cow else "") + (
                f"; writable: uv's cache {self.cache} (this bwrap or kernel cannot mount copy-on-write)"
            )
        return (
            "# sandbox: bubblewrap, uid 65534 of its own user namespace; read-only: the system, "
            + ", ".join(str(p) for p in self.readonly)
            + "; writable: "
            + ", ".join(str(p) for p in self.writable)
            + views
            + "; network: none, except to fetch packages uv's cache lacks"
        )

    def run(
        self,
        argv: list[str],
        log: TextIO,
        on_line: Callable[[str], None],
        *,
        network: bool = False,
        fetching: bool = False,
    ) -> tuple[int, list[str]]:
        """Run one build step; its output goes to ``log`` and each line to ``on_line``.

        Without ``network`` the step has none at all and uv reads packages from its cache only.
        Only a ``fetching`` step (one that runs no third-party code) may change uv's cache; any
        other sees it copy-on-write, so a hostile build cannot plant files for other builds.
        Returns the exit status and the last lines of output.
        """
        env = dict(self.env) if network else {**self.env, "UV_OFFLINE": "1"}
        cow = sandboxes.overlay_supported()
        shared = fetching or not cow
        writable = [*self.writable, *([self.cache] if shared else [])]
        overlay = [*([] if shared else [self.cache]), *(self.copy_on_write if cow else [])]
        readonly = [*self.readonly, *([] if cow else self.copy_on_write)]
        spec = sandboxes.SandboxSpec(
            readonly=readonly, writable=writable, overlay=overlay, env=env, network=network, processes=_PROCESSES
        )
        tail: list[str] = []
        with sandboxes.Sandbox(spec) as box:
            proc = box.start(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
            )
            assert proc.stdout is not None
            with proc.stdout:
                for line in proc.stdout:
                    log.write(line)
                    line = line.strip()
                    tail = (tail + [line])[-_TAIL:]
                    on_line(line)
            proc.wait()
            return box.returncode(proc.returncode), tail
