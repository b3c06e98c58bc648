"""Environment builds: hostile build code sees nothing of the platform, and never comes from group storage.

An analysis' build backend and its hooks run while its environment is built. ``evil``'s
hatchling build hook tries, at build time, to read the job database and another group's
input, to list the state folder, the storage root and the environment cache, and to write
marker files outside its build; it records what it saw into its own wheel (so into the
built environment) and prints it into the build log. ``borrowed``'s source is a package
that group ``lab`` uploaded to its own ``inputs/``, reached through a symbolic link.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ncaas.isolation import sandbox
from ncaas.isolation.environments import uv_binary


def _security_conftest():
    """This folder's conftest (the name ``conftest`` is the tests folder's own)."""
    spec = importlib.util.spec_from_file_location("ncaas_security_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


start_site = _security_conftest().start_site

SECRET = "other-group-secret-" + secrets.token_hex(8)
SQLITE_MAGIC = b"SQLite format 3"

HOOK = """
import json, os, tempfile
from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TARGETS = json.loads({targets!r})


def attempt(action):
    try:
        return "saw: " + repr(action())[:400]
    except Exception as exc:
        return "denied: " + type(exc).__name__


def write(path):
    with open(path, "w") as handle:
        handle.write("written by a build hook")
    return path


class CustomBuildHook(BuildHookInterface):
    def initialize(self, version, build_data):
        seen = {{"uid": os.getuid()}}
        for name, path in TARGETS["read"].items():
            seen[name] = attempt(lambda path=path: open(path, "rb").read(200))
        for name, path in TARGETS["list"].items():
            seen[name] = attempt(lambda path=path: sorted(os.listdir(path)))
        for name, path in TARGETS["write"].items():
            seen[name] = attempt(lambda path=path: write(path))
        print("BUILD HOOK SAW", json.dumps(seen), flush=True)
        record = os.path.join(tempfile.mkdtemp(), "seen.json")
        with open(record, "w") as handle:
            json.dump(seen, handle)
        build_data["force_include"][record] = "{name}/seen.json"
"""

PYPROJECT = """
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[project]
name = "{name}"
version = "0.1.0"
requires-python = ">=3.11"

[tool.hatch.build.targets.wheel]
packages = ["src/{name}"]

[tool.hatch.build.hooks.custom]
"""


def write_package(folder: Path, name: str, targets: dict) -> None:
    """A package whose hatchling build hook attacks ``targets`` (the backend framestats uses: no download)."""
    (folder / "src" / name).mkdir(parents=True)
    (folder / "src" / name / "__init__.py").write_text("")
    (folder / "pyproject.toml").write_text(PYPROJECT.format(name=name))
    (folder / "hatch_build.py").write_text(HOOK.format(targets=json.dumps(targets), name=name))
    (folder / "requirements.lock").write_text("# no third-party packages\n")


def write_blueprint(folder: Path, name: str, source: str) -> None:
    (folder / "blueprint.yaml").write_text(
        textwrap.dedent(f"""\
        name: {name}
        version: 0.1.0
        description: an analysis whose build attacks the platform
        environment:
          source: {source}
        command: ["{{python}}", "-c", "import {name}", "{{input}}", "{{output}}"]
        resources: {{cpus: 1, memory: 1GiB, timeout: 2m}}
        config_schema: {{type: object}}
        """)
    )


def _uv_cache() -> Path:
    out = subprocess.run([uv_binary(), "cache", "dir"], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


class Attack:
    def __init__(self, site, base: Path, envs: Path):
        self.site, self.base, self.envs = site, base, envs
        root = site.root
        self.markers = {
            "marker_outside": base / "pwned",
            "marker_in_inputs": root / "lab" / "inputs" / "pwned",
            "marker_in_state": root / ".ncaas" / "pwned",
            "marker_in_envs": envs / "pwned",
            "marker_in_its_source": base / "analyses" / "evil" / "src" / "evil" / "planted.py",
        }
        # uv's shared cache: what a build plants there would reach other builds (where bwrap can
        # mount it copy-on-write; elsewhere the cache stays writable)
        if getattr(sandbox, "overlay_supported", lambda: True)():
            self.markers["marker_in_uv_cache"] = _uv_cache() / f"planted-{secrets.token_hex(6)}"
        self.targets = {
            "read": {
                "job_database": str(root / ".ncaas" / "jobs.sqlite"),
                "other_group_input": str(root / "other" / "inputs" / "secret.txt"),
            },
            "list": {"state_folder": str(root / ".ncaas"), "storage_root": str(root), "environment_cache": str(envs)},
            "write": {name: str(path) for name, path in self.markers.items()},
        }


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    base = tmp_path_factory.mktemp("build-sandbox")
    analyses, envs = base / "analyses", base / "envs"
    (analyses / "evil").mkdir(parents=True)
    (analyses / "borrowed").mkdir(parents=True)
    (envs / "another-analysis-0123").mkdir(parents=True)  # another environment the build must not see
    root = base / "root"
    # the blueprint folder links to the package group lab uploads to its inputs/ (below)
    (analyses / "borrowed" / "pkg").symlink_to(root / "lab" / "inputs" / "pkg")
    write_blueprint(analyses / "borrowed", "borrowed", "pkg")
    write_blueprint(analyses / "evil", "evil", ".")
    site = start_site(base, env={"NCAAS_BLUEPRINTS": str(analyses), "NCAAS_ENVS": str(envs)})
    attack = Attack(site, base, envs)
    write_package(analyses / "evil", "evil", attack.targets)
    secret = base / "secret.txt"
    secret.write_text(SECRET)
    site.clients["other"].upload_file(secret, "secret.txt")
    data = base / "data.txt"
    data.write_text("a dataset")
    site.clients["lab"].upload_file(data, "data.txt")
    yield attack
    for marker in attack.markers.values():  # (only ever there on a platform that let the build write them)
        marker.unlink(missing_ok=True)
    site.close()
    code = site.server.stop()
    log = site.server.log()
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log, log


def _everything_under(folder: Path) -> Iterator[tuple[Path, bytes]]:
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                yield path, path.read_bytes()


def test_a_hostile_build_hook_sees_and_touches_nothing_of_the_platform(attack):
    lab = attack.site.clients["lab"]
    final = lab.wait(lab.submit("evil", ["data.txt"])["id"])
    assert final["state"] == "succeeded", (final, lab.log(final["id"], "data.txt"))
    # the hook ran: it recorded what it saw into its own wheel, now in the environment
    records = list(attack.envs.glob("evil-*/lib/python*/site-packages/evil/seen.json"))
    assert len(records) == 1, sorted(p.name for p in attack.envs.iterdir())
    seen = json.loads(records[0].read_text())
    assert seen["uid"] == 65534, seen  # an unprivileged user, not the platform's
    for name in [*attack.targets["read"], *attack.targets["list"]]:
        if name == "environment_cache" and seen[name].startswith("saw: "):  # its own folder's mount point only
            assert all(n.startswith("evil-") for n in ast.literal_eval(seen[name][5:])), seen[name]
            continue
        assert seen[name].startswith("denied: "), (name, seen[name])
    for name, marker in attack.markers.items():  # (a write may land in its own throwaway /tmp)
        assert not marker.exists(), f"the build hook wrote {marker}: {seen[name]}"
    # nothing it produced (the environment, the build log, the job's results) holds what it tried to read
    produced = [*_everything_under(attack.envs), *_everything_under(attack.site.root / "lab" / "results")]
    assert any(path.name.endswith(".build.log") for path, _ in produced)
    for path, content in produced:
        assert SECRET.encode() not in content, f"{path} holds another group's input"
        assert SQLITE_MAGIC not in content, f"{path} holds the job database"


def test_an_environment_source_in_group_storage_is_refused(attack):
    lab = attack.site.clients["lab"]
    package = attack.base / "upload" / "pkg"
    write_package(
        package, "borrowed", {"read": {}, "list": {}, "write": {"marker": str(attack.base / "pwned-borrowed")}}
    )
    lab.upload_dataset(package, "pkg")
    final = lab.wait(lab.submit("borrowed", ["data.txt"])["id"])
    assert final["state"] == "failed", final
    cause = final["tasks"][0]["cause"]
    assert "environment.source" in cause and "lies in the storage root" in cause, cause
    assert "never built from there" in cause, cause
    assert not (attack.base / "pwned-borrowed").exists(), "the package uploaded to inputs/ was built"
    assert not list(attack.envs.glob("borrowed-*")), "an environment was built from group storage"
