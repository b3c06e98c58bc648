"""Immutable analysis environments: built once from a hashed lock, read-only, verified.

An analysis' environment is a virtual environment built by uv from

* a lock file of pinned packages with their hashes (``uv pip compile
  --generate-hashes``, committed next to the analysis as ``requirements.lock``), and
* the analysis' own source, built into a wheel and installed non-editable.

Every uv step of a build runs third-party code, so each runs in the build sandbox
(:mod:`ncaas.isolation.build`: bubblewrap, an unprivileged uid, none of the
platform's files); only fetching packages missing from uv's cache gets the network.

Environments live in a content-addressed cache: the directory name carries the
sha256 of (lock file, analysis source, base interpreter), so the same inputs
are built once and shared by every job. The cache is ``$NCAAS_ENVS`` or, by
default, ``$XDG_CACHE_HOME/ncaas/envs`` (``~/.cache/ncaas/envs``): a local
disk, independent of the storage root, which may be remote.

Layout of the cache::

    <envs>/<name>-<key>/           the environment (every file and folder read-only)
    <envs>/<name>-<key>.json       its manifest: the sha256 of every file (read-only)
    <envs>/<name>-<key>.lock       a file lock held while building
    <envs>/<name>-<key>.build.log  uv's output of the last build

A manifest is written last, so an environment without one is an interrupted
build and is rebuilt. Its per-file entries are what :func:`verify` checks on this
machine; its ``manifest_sha256`` names the installed content wherever it was
installed, so two machines that built the same lock under different folders report
the same hash: the environment's own folder is read as a placeholder (scripts'
``#!`` lines, ``activate``), bytecode caches count by name (they embed the folder
and derive from the hashed ``.py`` files), an installer's ``RECORD`` by the files it
lists (each of them is hashed on its own), and uv's install time stamp
(``uv_cache.json``) by name. :func:`verify` re-hashes every file and reports each
difference; :func:`ensure` refuses an environment that fails it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..exceptions import NcaasError
from .build import BuildBox
from .sandbox import SandboxError

__all__ = [
    "LOCK_NAME",
    "Environment",
    "EnvironmentBroken",
    "EnvironmentInUse",
    "EnvironmentBuildError",
    "EnvironmentSpec",
    "Progress",
    "Verification",
    "check_system",
    "ensure",
    "envs_dir",
    "find",
    "lock",
    "users",
    "pinned_packages",
    "refuse_sources_in",
    "remove",
    "rerun_mismatch",
    "spec_for_blueprint",
    "uv_binary",
    "verify",
]

LOCK_NAME = "requirements.lock"
_FORMAT = 1
_SKIP_DIRS = {"__pycache__", ".git", ".pytest_cache", ".ruff_cache", "build", "dist", ".venv"}
_CHUNK = 1 << 20

Progress = Callable[[float, str], None]
"""Called with (fraction 0..1, message) while an environment is built."""


class EnvironmentBuildError(NcaasError):
    """An environment could not be locked or built."""


class EnvironmentInUse(NcaasError):
    """An environment would be rebuilt while processes run from it."""

    exit_code = 4


class EnvironmentBroken(NcaasError):
    """An environment exists but no longer matches its manifest; it must not be used."""

    exit_code = 3


def envs_dir() -> Path:
    """The environment cache: ``$NCAAS_ENVS``, else ``$XDG_CACHE_HOME/ncaas/envs``."""
    if os.environ.get("NCAAS_ENVS"):
        return Path(os.environ["NCAAS_ENVS"]).expanduser().absolute()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser().absolute() / "ncaas" / "envs"


def uv_binary() -> str:
    """The uv executable shipped by the ``uv`` package ncaas depends on (else the one on PATH)."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found:
            return found
    raise EnvironmentBuildError(
        "uv is not installed, so analysis environments cannot be built; "
        "run `make setup` (it installs ncaas with its `uv` dependency)"
    )


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _walk(root: Path) -> Iterator[Path]:
    """Every file, symlink and folder under ``root``, sorted, symlinks not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in dirnames:
            yield base / name
        for name in sorted(filenames):
            yield base / name


def _source_files(source: Path) -> list[Path]:
    """The files of an analysis that end up in its wheel: pyproject, README, and src/."""
    picked = [
        p
        for p in sorted(source.iterdir())
        if p.is_file() and (p.name == "pyproject.toml" or p.name.lower().startswith("readme"))
    ]
    tree = source / "src" if (source / "src").is_dir() else None
    if tree is not None:
        for path in _walk(tree):
            if (
                path.is_file()
                and not any(part in _SKIP_DIRS or part.endswith(".egg-info") for part in path.relative_to(source).parts)
                and path.suffix not in (".pyc", ".pyo")
            ):
                picked.append(path)
    return picked


def _ask_python(python: str, code: str) -> str:
    """What ``python -c code`` prints; an interpreter that does not run is a build error."""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise EnvironmentBuildError(
            f"the interpreter {python} for environments does not run: {out.stderr.strip()[-300:]}"
        )
    return out.stdout.strip()


@functools.lru_cache(maxsize=8)
def _python_id(python: str) -> str:
    return _ask_python(
        python,
        "import sys,platform;print(platform.python_implementation(),"
        "platform.python_version(),platform.machine(),sys.base_prefix)",
    )


@functools.lru_cache(maxsize=8)
def _base_python(python: str) -> tuple[str, tuple[str, ...]]:
    """The base interpreter behind ``python`` (itself, or the one a venv's links to) and its installation.

    Builds create environments from the base interpreter, in a sandbox that shows only its installation.
    """
    printed = _ask_python(
        python,
        "import os,sys;e=sys._base_executable;"
        "print(e);print(os.path.dirname(os.path.dirname(os.path.realpath(e))));print(sys.base_prefix)",
    )
    base, *folders = printed.splitlines()
    return base, tuple(sorted(set(folders)))


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment is built from.

    Parameters
    ----------
    name
        The analysis name (used in folder names and messages).
    lock_file
        The hashed requirements lock.
    source
        The analysis package folder (holding ``pyproject.toml``), installed
        non-editable; ``None`` for an environment of locked packages only.
    python
        The base interpreter; defaults to the one running ncaas.
    requirements
        Requirements locked with (or, without a source, instead of) the source's.
    find_links
        Folders of wheels uv looks in before the package index, when locking and building.
    modules
        Python files installed into the environment's ``site-packages`` as top-level modules.
    system
        Debian packages of the host the analysis uses (checked by :func:`check_system`).
    """

    name: str
    lock_file: Path
    source: Path | None = None
    python: Path = field(default_factory=lambda: Path(sys.executable))
    requirements: tuple[str, ...] = ()
    find_links: tuple[Path, ...] = ()
    modules: tuple[Path, ...] = ()
    system: tuple[str, ...] = ()

    def wheel_folders(self) -> list[Path]:
        """The ``find_links`` folders that exist here (the others are skipped: the lock's hashes decide)."""
        return [folder for folder in self.find_links if folder.is_dir()]

    def lock_sha256(self) -> str:
        if not self.lock_file.is_file():
            raise EnvironmentBuildError(
                f"the lock file {self.lock_file} of analysis {self.name!r} does not exist; "
                f"create it with `ncaas env lock {self.name}` (or `make locks`)"
            )
        return _sha256_file(self.lock_file)

    def source_sha256(self) -> str:
        """The analysis' own code: its package's files, then its modules (``""`` when it has neither)."""
        if self.source is None and not self.modules:
            return ""
        digest = hashlib.sha256()
        if self.source is not None:
            if not (self.source / "pyproject.toml").is_file():
                raise EnvironmentBuildError(
                    f"the source of analysis {self.name!r}, {self.source}, has no pyproject.toml; "
                    "point the blueprint's environment.source at the analysis package folder"
                )
            for path in _source_files(self.source):
                digest.update(path.relative_to(self.source).as_posix().encode() + b"\0")
                digest.update(_sha256_file(path).encode() + b"\n")
        for module in self.modules:
            if not module.is_file():
                raise EnvironmentBuildError(
                    f"the module {module} of analysis {self.name!r} does not exist; "
                    "fix the blueprint's environment.modules (files beside the blueprint)"
                )
            digest.update(b"module:" + module.name.encode() + b"\0")
            digest.update(_sha256_file(module).encode() + b"\n")
        return digest.hexdigest()

    def python_id(self) -> str:
        """The base interpreter the environment links to: version and location."""
        return _python_id(str(self.python))

    def key(self) -> dict[str, str]:
        """The identity of the environment: every input that changes what gets built."""
        parts = {
            "format": str(_FORMAT),
            "lock_sha256": self.lock_sha256(),
            "source_sha256": self.source_sha256(),
            "python": self.python_id(),
        }
        parts["env_sha256"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        return parts


@dataclass(frozen=True)
class Environment:
    """A built environment and what its manifest says about it."""

    name: str
    path: Path
    manifest: dict

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def lock_sha256(self) -> str:
        return self.manifest["lock_sha256"]

    @property
    def env_sha256(self) -> str:
        return self.manifest["env_sha256"]

    @property
    def manifest_sha256(self) -> str:
        return self.manifest["manifest_sha256"]

    def record(self) -> dict[str, str]:
        """What a certificate keeps about the environment."""
        return {
            "name": self.name,
            "path": str(self.path),
            "env_sha256": self.env_sha256,
            "lock_sha256": self.lock_sha256,
            "source_sha256": self.manifest["source_sha256"],
            "manifest_sha256": self.manifest_sha256,
            "python": self.manifest["python"],
        }


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify`: ``ok``, else every difference found."""

    ok: bool
    problems: list[str]
    files: int
    seconds: float

    def summary(self, limit: int = 8) -> str:
        if self.ok:
            return f"{self.files} files match the manifest ({self.seconds:.2f} s)"
        shown = "; ".join(self.problems[:limit])
        more = len(self.problems) - limit
        return shown + (f"; and {more} more" if more > 0 else "")


def _paths(spec_name: str, key: str) -> tuple[Path, Path, Path, Path]:
    base = envs_dir() / f"{spec_name}-{key[:20]}"
    return (
        base,
        base.with_name(base.name + ".json"),
        base.with_name(base.name + ".lock"),
        base.with_name(base.name + ".build.log"),
    )


def _entry(path: Path) -> str:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        return "link:" + os.readlink(path)
    if stat.S_ISDIR(info.st_mode):
        return "dir"
    return "sha256:" + _sha256_file(path)


def _inventory(root: Path) -> dict[str, str]:
    """relative path -> entry, hashing files on a few threads (hashlib releases the GIL)."""
    paths = list(_walk(root))
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        entries = list(pool.map(_entry, paths, chunksize=64))
    return {p.relative_to(root).as_posix(): e for p, e in zip(paths, entries)}


def _manifest_sha256(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


_HERE = b"<environment>"  # what the environment's own folder reads as in its portable entries


def _located_entry(path: Path, here: bytes) -> tuple[str, str | None]:
    """``_entry``, and the entry with the environment's folder ``here`` read as a placeholder
    (None when the file or link does not name that folder)."""
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        target = os.readlink(path)
        named = here.decode() in target
        return "link:" + target, "link:" + target.replace(here.decode(), _HERE.decode()) if named else None
    if stat.S_ISDIR(info.st_mode):
        return "dir", None
    digest = hashlib.sha256()
    carry, named = b"", False
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            named = named or here in carry + chunk
            carry = chunk[1 - len(here) :]
    if not named:
        return "sha256:" + digest.hexdigest(), None
    return "sha256:" + digest.hexdigest(), "sha256:" + hashlib.sha256(
        path.read_bytes().replace(here, _HERE)
    ).hexdigest()


def _portable(rel: str, entry: str, located: str | None, root: Path) -> str:
    """The entry ``manifest_sha256`` counts: the same for the same lock wherever it was installed."""
    if rel.endswith(".pyc"):
        return "bytecode"  # compiled from the hashed .py beside it; embeds the folder it was compiled in
    if rel.endswith(".dist-info/uv_cache.json"):
        return "installer-stamp"  # when uv installed a local wheel, for its own cache
    if rel.endswith(".dist-info/RECORD"):
        listed = sorted(line.split(",")[0] for line in (root / rel).read_text().splitlines() if line)
        return "record:" + hashlib.sha256("\n".join(listed).encode()).hexdigest()
    return located or entry


def _build_inventory(root: Path) -> tuple[dict[str, str], str]:
    """The manifest's files (relative path -> entry) and its install-path-independent ``manifest_sha256``."""
    paths = list(_walk(root))
    here = str(root).encode()
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        entries = list(pool.map(_located_entry, paths, [here] * len(paths), chunksize=64))
    files: dict[str, str] = {}
    portable: dict[str, str] = {}
    for path, (entry, located) in zip(paths, entries):
        rel = path.relative_to(root).as_posix()
        files[rel] = entry
        portable[rel] = _portable(rel, entry, located, root)
    return files, _manifest_sha256(portable)


def _writable(path: Path) -> list[str]:
    """Paths under ``path`` (itself included) that someone made writable again."""
    found = []
    for candidate in [path, *_walk(path)]:
        info = candidate.lstat()
        if not stat.S_ISLNK(info.st_mode) and info.st_mode & 0o222:
            found.append(candidate.relative_to(path).as_posix() or ".")
    return found


def _set_readonly(root: Path, readonly: bool) -> None:
    for path in [*_walk(root), root]:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            continue
        mode = info.st_mode & ~0o222 if readonly else info.st_mode | stat.S_IWUSR
        os.chmod(path, stat.S_IMODE(mode))


def _remove_tree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        if path.is_dir() and not path.is_symlink():
            for sub in [path, *_walk(path)]:
                if sub.is_dir() and not sub.is_symlink():
                    os.chmod(sub, 0o755)
            shutil.rmtree(path)
        else:
            path.unlink()


@contextmanager
def _file_lock(path: Path, progress: Progress | None, name: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                progress(0.0, f"waiting: another process is building the {name} environment")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def users(path: Path) -> list[int]:
    """Pids of the processes running from the environment at ``path``: started by its python or one
    of its scripts, or with one of its files mapped (a compiled module). Read from ``/proc``; tasks
    in their sandboxes see the environment at the same path, so they are found too. A process this
    user may not inspect is not seen (run as the platform's user)."""
    inside = str(path) + "/"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
            if any(arg.decode(errors="replace").startswith(inside) for arg in argv[:2]):
                found.append(int(entry.name))
                continue
            with open(f"/proc/{entry.name}/maps", errors="replace") as handle:
                if any(inside in line for line in handle):
                    found.append(int(entry.name))
        except OSError:  # gone, or not ours to inspect
            continue
    return sorted(found)


def find(spec: EnvironmentSpec) -> Environment | None:
    """The built environment for ``spec``, or ``None`` when it has not been built."""
    key = spec.key()
    path, manifest_path, _, _ = _paths(spec.name, key["env_sha256"])
    if not manifest_path.is_file():
        return None
    return Environment(spec.name, path, json.loads(manifest_path.read_text()))


def verify(env: Environment) -> Verification:
    """Re-hash every file of ``env`` and compare with its manifest."""
    started = time.perf_counter()
    expected: dict[str, str] = env.manifest["files"]
    if not env.path.is_dir():
        return Verification(False, [f"the environment folder {env.path} is missing"], 0, time.perf_counter() - started)
    actual = _inventory(env.path)
    problems = [f"changed: {p}" for p in sorted(expected) if p in actual and actual[p] != expected[p]]
    problems += [f"removed: {p}" for p in sorted(expected) if p not in actual]
    problems += [f"added: {p}" for p in sorted(actual) if p not in expected]
    problems += [f"made writable: {p}" for p in _writable(env.path)]
    return Verification(not problems, problems, len(actual), time.perf_counter() - started)


def _run_uv(
    box: BuildBox,
    args: list[str],
    log,
    progress: Progress | None,
    span: tuple[float, float],
    expect: int = 0,
    *,
    network: bool = False,
    fetching: bool = False,
) -> None:
    """Run uv in the build's sandbox, appending its output to the build log and relaying it as progress."""
    command = [uv_binary(), *args]
    log.write(f"$ {' '.join(command)}\n")
    log.flush()
    lo, hi = span
    done = 0

    def on_line(line: str) -> None:
        nonlocal done
        if progress and line:
            if line.startswith(("Downloaded", "Built", "+ ")):
                done += 1
            fraction = lo + (hi - lo) * min(done / expect, 1.0) if expect else lo
            progress(fraction, line)

    code, tail = box.run(command, log, on_line, network=network, fetching=fetching)
    if code != 0:
        raise EnvironmentBuildError("uv failed: " + " | ".join(tail))


def pinned_packages(lock_file: Path) -> int:
    """How many distinct packages a lock pins."""
    names = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", lock_file.read_text(), flags=re.M)
    return len({name.lower() for name in names})


def _build(spec: EnvironmentSpec, key: dict[str, str], path: Path, log, progress: Progress | None) -> None:
    def step(fraction: float, message: str) -> None:
        if progress:
            progress(fraction, message)

    base, installation = _base_python(str(spec.python))
    # Beside the environment, not in a random folder: the installed analysis records where its
    # wheel came from (direct_url.json), and that must name the same place on every machine.
    wheels = path.with_name(path.name + ".wheels")
    _remove_tree(wheels)
    wheels.mkdir(parents=True)
    try:
        box = BuildBox.for_build(
            uv_binary(),
            readonly=[*map(Path, installation), spec.lock_file, *spec.wheel_folders()],
            writable=[path, wheels],
            copy_on_write=[spec.source] if spec.source is not None else [],
        )
        path.mkdir(parents=True)  # the sandbox binds it, so it exists before uv fills it
        try:
            log.write(box.describe() + "\n")
            _build_steps(spec, box, path, wheels, base, log, step, progress)
        except SandboxError as exc:
            raise EnvironmentBuildError(f"cannot build the {spec.name} environment: {exc}") from None
    finally:
        _remove_tree(wheels)
    step(0.92, "hashing every file and making the environment read-only")
    _set_readonly(path, readonly=True)


def _build_steps(
    spec: EnvironmentSpec,
    box: BuildBox,
    path: Path,
    wheels: Path,
    base: str,
    log,
    step: Progress,
    progress: Progress | None,
) -> None:
    """Create the environment, install the lock, build and install the analysis: each step sandboxed."""
    python = path / "bin" / "python"
    links = [arg for folder in spec.wheel_folders() for arg in ("--find-links", str(folder))]
    for folder in spec.find_links:
        if folder not in spec.wheel_folders():
            log.write(f"# find_links: {folder} is not on this machine; its wheels come from the index\n")
    step(0.02, f"creating the {spec.name} environment at {path}")
    _run_uv(box, ["venv", "--no-config", "--quiet", "--python", base, str(path)], log, None, (0, 0))
    n_packages = pinned_packages(spec.lock_file)
    step(0.05, f"installing {n_packages} locked packages from {spec.lock_file.name}")
    install = [
        "pip",
        "install",
        "--no-config",
        "--python",
        str(python),
        "--require-hashes",
        "--link-mode=copy",
        "--compile-bytecode",
        *links,
        "-r",
        str(spec.lock_file),
    ]
    try:
        _run_uv(box, install, log, progress, (0.05, 0.8), expect=n_packages)
    except EnvironmentBuildError:  # uv's cache lacks some: fetch the locked packages, then install offline
        fetched = _fetch(
            box, ["--require-hashes", *links, "-r", str(spec.lock_file)], wheels, base, log, "the locked packages"
        )
        if not fetched:  # a locked source distribution: it is built as it is installed, with the network
            log.write("# some locked packages have no wheel for this platform: installing with the network on\n")
        _run_uv(box, install, log, progress, (0.05, 0.8), expect=n_packages, network=not fetched)
    if spec.source is not None:
        step(0.82, f"building {spec.name} from {spec.source}")
        _build_wheel(spec.source, box, wheels, base, log)
        built = sorted(wheels.glob("*.whl"))
        step(0.88, f"installing {built[0].name}")
        _run_uv(
            box,
            [
                "pip",
                "install",
                "--no-config",
                "--python",
                str(python),
                "--no-deps",
                "--link-mode=copy",
                "--compile-bytecode",
                str(built[0]),
            ],
            log,
            None,
            (0, 0),
        )
    if spec.modules:
        step(0.9, f"installing the modules {', '.join(m.name for m in spec.modules)}")
        _install_modules(spec, path, log)
    try:
        _run_uv(box, ["pip", "check", "--no-config", "--python", str(python)], log, None, (0, 0))
    except EnvironmentBuildError as exc:
        raise EnvironmentBuildError(
            f"the lock file {spec.lock_file} does not satisfy {spec.name}'s dependencies ({exc}); "
            f"regenerate it with `ncaas env lock {spec.name}` (or `make locks`)"
        ) from None


def _install_modules(spec: EnvironmentSpec, path: Path, log) -> None:
    """Copy the analysis' modules into the environment's ``site-packages`` (plain files: nothing runs)."""
    found = sorted(path.glob("lib/python*/site-packages"))
    if len(found) != 1:
        raise EnvironmentBuildError(f"cannot find the site-packages folder of the {spec.name} environment at {path}")
    for module in spec.modules:
        target = found[0] / module.name
        if target.exists():
            raise EnvironmentBuildError(
                f"the module {module.name} of analysis {spec.name!r} would replace {target.name}, which a locked "
                "package installed; rename the module"
            )
        shutil.copyfile(module, target)
        log.write(f"# installed the module {module} as {target}\n")


def check_system(spec: EnvironmentSpec) -> None:
    """Refuse, naming them, the Debian packages ``spec.system`` names that this host lacks.

    Tasks see the host's ``/usr`` read-only, so a program or library an analysis uses from
    the system must be installed on every machine that runs it. A host without ``dpkg-query``
    (not Debian-based) is not checked.
    """
    if not spec.system or shutil.which("dpkg-query") is None:
        return
    missing = []
    for package in spec.system:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", package], capture_output=True, text=True, check=False
        )
        if out.returncode != 0 or out.stdout.strip() != "installed":
            missing.append(package)
    if missing:
        raise EnvironmentBuildError(
            f"analysis {spec.name!r} needs the Debian packages {', '.join(missing)} on this machine (its tasks use "
            f"them from the host's /usr); install them: apt-get install {' '.join(missing)}"
        )


def _fetch(box: BuildBox, requirements: list[str], wheels: Path, base: str, log, what: str) -> bool:
    """Download ``requirements`` into uv's cache with the network on; whether every one was had.

    Wheels only, installed into a scratch folder and dropped: fetching runs no third-party
    code, so it alone may write to uv's cache.
    """
    log.write(f"# uv's cache lacks what this step needs: fetching {what} with the network on\n")
    target = wheels / "fetched"
    try:
        _run_uv(
            box,
            [
                "pip",
                "install",
                "--no-config",
                "--quiet",
                "--python",
                base,
                "--only-binary",
                ":all:",
                "--target",
                str(target),
                *requirements,
            ],
            log,
            None,
            (0, 0),
            network=True,
            fetching=True,
        )
        return True
    except EnvironmentBuildError:
        return False
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _build_requirements(source: Path) -> list[str]:
    """What building ``source`` needs installed (its pyproject's build-system.requires)."""
    try:
        system = tomllib.loads((source / "pyproject.toml").read_text()).get("build-system", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EnvironmentBuildError(f"cannot read {source / 'pyproject.toml'}: {exc}") from None
    requires = system.get("requires", ["setuptools>=40.8.0"])  # PEP 517's default backend
    return [str(r) for r in requires] if isinstance(requires, list) else []


def _build_wheel(source: Path, box: BuildBox, wheels: Path, base: str, log) -> None:
    """Build the analysis into a wheel in ``wheels``; its build code never has the network.

    When uv's cache lacks the build requirements, they alone are fetched (as wheels), and
    the build runs again without network.
    """
    build = ["build", "--no-config", "--quiet", "--wheel", "--python", base, "--out-dir", str(wheels), str(source)]
    try:
        _run_uv(box, build, log, None, (0, 0))
        return
    except EnvironmentBuildError as exc:
        requires = _build_requirements(source)
        if not requires:
            raise
        failed = exc
    if not _fetch(box, requires, wheels, base, log, "the build requirements (" + ", ".join(requires) + ")"):
        raise EnvironmentBuildError(
            f"{failed}; and the build requirements of {source} ({', '.join(requires)}) could not all be "
            "fetched as wheels (see the build log): an analysis is built without network, from wheels in uv's cache"
        )
    _run_uv(box, build, log, None, (0, 0))


_VERIFIED: dict[str, float] = {}  # environment folder -> when this process last verified it in full


def ensure(
    spec: EnvironmentSpec, *, progress: Progress | None = None, rebuild: bool = False, verified_within: float = 0.0
) -> tuple[Environment, bool]:
    """Return the verified environment for ``spec``, building it first if needed.

    Concurrent callers (threads or processes) for the same environment build it
    once: the others wait on a file lock and then verify the result. A long-running
    caller may skip re-hashing an environment it verified less than
    ``verified_within`` seconds ago.

    Returns
    -------
    (Environment, bool)
        The environment, and whether this call built it.

    Raises
    ------
    EnvironmentBroken
        The environment exists but fails verification (it is never used then;
        rebuild it with ``rebuild=True`` / ``ncaas env build NAME --force``).
    EnvironmentBuildError
        The lock or source is missing, or uv failed.
    EnvironmentInUse
        A rebuild was asked while processes run from the environment (see `users`).
    """
    key = spec.key()
    check_system(spec)
    path, manifest_path, lock_path, log_path = _paths(spec.name, key["env_sha256"])
    with _file_lock(lock_path, progress, spec.name):
        if manifest_path.is_file() and not rebuild:
            env = Environment(spec.name, path, json.loads(manifest_path.read_text()))
            last = _VERIFIED.get(str(path))
            if last is None or time.monotonic() - last > verified_within:
                check = verify(env)
                if not check.ok:
                    _VERIFIED.pop(str(path), None)
                    raise EnvironmentBroken(
                        f"the {spec.name} environment at {path} changed on disk since it was built "
                        f"({check.summary()}); it will not be used. Rebuild it from its lock with "
                        f"`ncaas env build {spec.name} --force`"
                    )
                _VERIFIED[str(path)] = time.monotonic()
            return env, False
        busy = users(path) if path.exists() else []
        if busy:
            shown = ", ".join(map(str, busy[:8])) + (", ..." if len(busy) > 8 else "")
            raise EnvironmentInUse(
                f"the {spec.name} environment at {path} is in use by {len(busy)} process(es) (pid {shown}): "
                "rebuilding it now would take it away from the tasks running in it. Rebuild it once they "
                "have ended (`ncaas status` lists running jobs; `ncaas cancel JOB` stops one)"
            )
        _remove_tree(manifest_path)
        _remove_tree(path)
        started = time.time()
        try:
            with open(log_path, "w") as log:
                _build(spec, key, path, log, progress)
        except BaseException:
            _remove_tree(path)
            raise
        files, manifest_sha256 = _build_inventory(path)
        manifest = {
            **key,
            "name": spec.name,
            "lock_file": str(spec.lock_file),
            "source": str(spec.source) if spec.source else None,
            "built_at": started,
            "build_seconds": round(time.time() - started, 3),
            "built_by_pid": os.getpid(),
            "manifest_sha256": manifest_sha256,
            "files": files,
        }
        partial = manifest_path.with_name(manifest_path.name + ".partial")
        partial.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.chmod(partial, 0o444)
        os.replace(partial, manifest_path)
        _VERIFIED[str(path)] = time.monotonic()
        if progress:
            progress(
                1.0,
                f"{spec.name} environment ready: {len(files)} files, manifest {str(manifest['manifest_sha256'])[:12]}",
            )
        return Environment(spec.name, path, manifest), True


def remove(env: Environment) -> None:
    """Delete a built environment and its manifest (it is rebuilt on next use)."""
    _remove_tree(env.path.with_name(env.path.name + ".json"))
    _remove_tree(env.path)


def _python_version_floor(pyproject: Path) -> str:
    text = pyproject.read_text()
    match = re.search(r'requires-python\s*=\s*"\s*>=\s*(\d+\.\d+)', text)
    return match.group(1) if match else f"{sys.version_info.major}.{sys.version_info.minor}"


def lock(
    source: Path | None,
    *,
    lock_file: Path | None = None,
    name: str | None = None,
    requirements: tuple[str, ...] | list[str] = (),
    find_links: tuple[Path, ...] | list[Path] = (),
) -> Path:
    """(Re)generate the hashed lock of an analysis from its ``pyproject.toml`` and/or ``requirements``.

    The lock is universal (valid on every platform) for the analysis'
    minimum Python (the running one's, without a pyproject), pins every package to one
    version and lists the sha256 of every distribution file, so installs are reproducible
    and tamper-evident. Wheels in ``find_links`` folders are considered beside the index;
    their hashes are pinned like the index's.
    """
    inputs: list[str] = []
    if source is not None:
        source = source.absolute()
        if not (source / "pyproject.toml").is_file():
            raise EnvironmentBuildError(f"{source} has no pyproject.toml to lock; give the analysis package folder")
        inputs.append("pyproject.toml")
    if source is None and not requirements:
        raise EnvironmentBuildError(
            f"{name or 'the analysis'} names nothing to lock; give its blueprint environment.source "
            "(a package folder) or environment.requirements"
        )
    if lock_file is None:
        if source is None:
            raise EnvironmentBuildError("a lock of requirements alone needs the lock file's path")
        lock_file = source / LOCK_NAME
    lock_file = lock_file.absolute()
    label = name or (source.name if source is not None else lock_file.parent.name)
    floor = (
        _python_version_floor(source / "pyproject.toml")
        if source is not None
        else f"{sys.version_info.major}.{sys.version_info.minor}"
    )
    links = [arg for folder in find_links if Path(folder).is_dir() for arg in ("--find-links", str(folder))]
    with tempfile.TemporaryDirectory(prefix="ncaas-lock-") as scratch:
        cwd = source if source is not None else Path(scratch)
        if requirements:
            listed = Path(scratch) / "requirements.in"
            listed.write_text("".join(f"{item.strip()}\n" for item in requirements))
            # named relative to the folder uv runs in, so the lock's annotations name no scratch folder
            inputs.append(os.path.relpath(listed, cwd) if source is None else str(listed))
        command = [
            uv_binary(),
            "pip",
            "compile",
            "--no-config",
            "--quiet",
            *inputs,
            *links,
            "--generate-hashes",
            *(["--no-annotate"] if source is not None and requirements else []),
            "--universal",
            "--python-version",
            floor,
            "--custom-compile-command",
            f"ncaas env lock {label}",
            "-o",
            os.path.relpath(lock_file, cwd),
        ]
        out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise EnvironmentBuildError(f"could not lock {label}: {out.stderr.strip()[-800:]}")
    return lock_file


def spec_for_blueprint(loaded) -> EnvironmentSpec | None:
    """The environment a loaded blueprint asks for, or ``None`` when it names none.

    ``environment.source`` is the analysis package folder and ``environment.lock``
    its lock file, both relative to the blueprint file; the lock defaults to the
    source's ``requirements.lock``. A blueprint naming neither runs with the
    platform's own interpreter (and its certificate records no lock).
    """
    wanted = loaded.blueprint.environment
    if wanted.lock is None and wanted.source is None and not wanted.requirements:
        return None
    base = Path(loaded.path).parent
    source = (base / wanted.source).resolve() if wanted.source else None
    if source is not None and not (source / "pyproject.toml").is_file():
        raise EnvironmentBuildError(
            f"blueprint {loaded.path}: environment.source {wanted.source!r} resolves to {source}, "
            "which has no pyproject.toml; point it at the analysis package folder"
        )
    if wanted.lock:
        lock_file = (base / wanted.lock).resolve()
    elif source is not None:
        lock_file = source / LOCK_NAME
    else:  # requirements alone: their lock lies beside the blueprint
        lock_file = base / LOCK_NAME
    label = source.name if source is not None else loaded.blueprint.name
    return EnvironmentSpec(
        label,
        lock_file,
        source,
        requirements=tuple(wanted.requirements),
        find_links=tuple((base / os.path.expandvars(folder)).resolve() for folder in wanted.find_links),
        modules=tuple(base / module for module in wanted.modules),
        system=tuple(wanted.system),
    )


def refuse_sources_in(spec: EnvironmentSpec, places: dict[str, Path]) -> None:
    """Refuse an environment whose source or lock lies in one of ``places`` (symbolic links resolved).

    ``places`` names folders the platform never builds from: group storage, where any
    group member can write, and the platform's state folder.
    """
    for field_name, path in (("source", spec.source), ("lock", spec.lock_file)):
        if path is None:
            continue
        real = path.resolve()
        for what, folder in places.items():
            if real.is_relative_to(folder.resolve()):
                raise EnvironmentBuildError(
                    f"the {spec.name} environment is refused: its environment.{field_name} {real} lies in "
                    f"{what} {folder}, and environments are never built from there; install the analysis "
                    "(its blueprint, source and lock) in a blueprint folder outside the storage root"
                )


def rerun_mismatch(recorded: dict, current: dict) -> tuple[str | None, str | None]:
    """Compare a certificate's environment with the one a rerun would use.

    Returns
    -------
    (problem, note)
        ``problem`` says why the rerun must be refused (the lock or the analysis
        source changed); ``note`` says the environment was rebuilt from the
        same lock (its manifest differs), which is allowed.
    """
    if not recorded.get("lock_hash"):
        return None, None
    then, now = recorded["lock_hash"], current.get("lock_hash")
    if now != then:
        return (
            f"the analysis environment no longer matches the certificate: its lock file was "
            f"sha256 {then[:16]}… and is now {(now or 'none')[:16]}…. Restore the lock of the "
            "certified version (the certificate names the blueprint's git commit) to rerun"
        ), None
    if recorded.get("source_hash") and current.get("source_hash") != recorded["source_hash"]:
        return (
            "the analysis environment no longer matches the certificate: the analysis' source "
            f"changed (sha256 {recorded['source_hash'][:16]}… then, "
            f"{(current.get('source_hash') or 'none')[:16]}… now). Check out the certified "
            "version of the analysis to rerun"
        ), None
    if recorded.get("manifest_hash") and current.get("manifest_hash") != recorded["manifest_hash"]:
        return None, (
            f"the environment was rebuilt from the same lock (manifest "
            f"{recorded['manifest_hash'][:12]}… then, {current.get('manifest_hash', '')[:12]}… now)"
        )
    return None, None
