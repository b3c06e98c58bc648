"""Immutable environments, built for real with uv from a tiny analysis package."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ncaas.isolation import environments
from ncaas.isolation.environments import EnvironmentBroken, EnvironmentBuildError, EnvironmentSpec

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[project]
name = "tinyana"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = {deps}

[tool.hatch.build.targets.wheel]
packages = ["src/tinyana"]
"""


def make_analysis(folder: Path, deps: list[str]) -> Path:
    (folder / "src" / "tinyana").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT.format(deps=json.dumps(deps)))
    (folder / "src" / "tinyana" / "__init__.py").write_text("VALUE = 1\n")
    return folder


@pytest.fixture(scope="module")
def analysis(tmp_path_factory) -> Path:
    """A one-dependency analysis package with its hashed lock (locked once per module)."""
    folder = make_analysis(tmp_path_factory.mktemp("tinyana"), ["iniconfig"])
    environments.lock(folder, name="tinyana")
    return folder


@pytest.fixture
def envs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("NCAAS_ENVS", str(tmp_path / "envs"))
    return tmp_path / "envs"


def spec_for(folder: Path) -> EnvironmentSpec:
    return EnvironmentSpec("tinyana", folder / environments.LOCK_NAME, folder)


def test_lock_pins_every_package_with_hashes(analysis):
    text = (analysis / "requirements.lock").read_text()
    assert "ncaas env lock tinyana" in text
    pins = [line for line in text.splitlines() if "==" in line and not line.startswith("#")]
    assert pins and pins[0].startswith("iniconfig==")
    assert "--hash=sha256:" in text


def test_build_is_read_only_non_editable_and_matches_its_manifest(analysis, envs):
    progress: list[tuple[float, str]] = []
    env, built = environments.ensure(spec_for(analysis), progress=lambda f, m: progress.append((f, m)))
    assert built and env.path.parent == envs
    fractions = [f for f, _ in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("installing" in m for _, m in progress)

    for path in [env.path, *env.path.rglob("*")]:
        if not path.is_symlink():
            assert not path.stat().st_mode & 0o222, f"{path} is writable"
    manifest_files = env.manifest["files"]
    assert len(manifest_files) == sum(1 for _ in env.path.rglob("*"))
    assert environments.verify(env).ok

    # The analysis is installed as a copy inside the environment, not as a link to its source.
    out = subprocess.run(
        [str(env.python), "-c", "import tinyana, iniconfig; print(tinyana.__file__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(out.stdout.strip()).is_relative_to(env.path)
    assert env.record()["lock_sha256"] == environments._sha256_file(analysis / "requirements.lock")


def test_same_inputs_reuse_the_environment_and_a_source_change_gets_a_new_one(tmp_path, envs):
    folder = make_analysis(tmp_path / "ana", [])
    environments.lock(folder)
    first, built = environments.ensure(spec_for(folder))
    again, built_again = environments.ensure(spec_for(folder))
    assert built and not built_again and again.path == first.path
    assert environments.find(spec_for(folder)).manifest_sha256 == first.manifest_sha256

    (folder / "src" / "tinyana" / "__init__.py").write_text("VALUE = 2\n")
    second, built = environments.ensure(spec_for(folder))
    assert built and second.path != first.path and second.lock_sha256 == first.lock_sha256
    out = subprocess.run(
        [str(second.python), "-c", "import tinyana; print(tinyana.VALUE)"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "2"


def test_the_same_lock_built_under_two_folders_has_one_manifest_hash(analysis, tmp_path, monkeypatch):
    built = {}
    for folder in ("envs", "a-much-longer-folder-for-environments"):
        monkeypatch.setenv("NCAAS_ENVS", str(tmp_path / folder))
        built[folder], _ = environments.ensure(spec_for(analysis))
    first, second = built.values()
    assert first.path != second.path and environments.verify(first).ok and environments.verify(second).ok
    # The files do name their folder (scripts' #! lines, bytecode, where the wheel came from) ...
    differ = {p for p, entry in first.manifest["files"].items() if second.manifest["files"].get(p) != entry}
    assert any(p.startswith("bin/") for p in differ) and any(p.endswith(".pyc") for p in differ)
    assert any(p.endswith("direct_url.json") for p in differ)
    # ... yet the manifest hash names the content, wherever it was installed.
    assert first.manifest_sha256 == second.manifest_sha256
    # and the content only: another lock's environment has another hash.
    other = make_analysis(tmp_path / "other", [])
    environments.lock(other)
    third, _ = environments.ensure(spec_for(other))
    assert third.manifest_sha256 != first.manifest_sha256


def test_a_changed_environment_fails_verification_and_is_not_used(analysis, envs):
    env, _ = environments.ensure(spec_for(analysis))
    target = next(env.path.rglob("tinyana/__init__.py"))
    os.chmod(target, 0o644)
    target.write_text("VALUE = 'tampered'\n")
    (env.path / "bin" / "python").unlink()

    check = environments.verify(env)
    assert not check.ok
    relative = target.relative_to(env.path).as_posix()
    assert f"changed: {relative}" in check.problems
    assert f"made writable: {relative}" in check.problems
    assert "removed: bin/python" in check.problems
    with pytest.raises(EnvironmentBroken, match="changed on disk.*ncaas env build tinyana --force"):
        environments.ensure(spec_for(analysis))

    rebuilt, built = environments.ensure(spec_for(analysis), rebuild=True)
    assert built and environments.verify(rebuilt).ok


@pytest.mark.parametrize("sandboxed", [False, True], ids=["process", "sandboxed task"])
def test_a_rebuild_is_refused_while_a_process_runs_from_the_environment(analysis, envs, tmp_path, sandboxed):
    import time

    from ncaas.isolation.environments import EnvironmentInUse
    from ncaas.isolation.sandbox import Sandbox, SandboxSpec

    env, _ = environments.ensure(spec_for(analysis))
    argv = [str(env.python), "-c", "import time, tinyana; time.sleep(120)"]
    box = Sandbox(SandboxSpec(environment=env.path, writable=[tmp_path])) if sandboxed else None
    if box is not None:
        box.__enter__()
    proc = box.start(argv) if box is not None else subprocess.Popen(argv)
    try:
        deadline = time.monotonic() + 20
        while not environments.users(env.path) and time.monotonic() < deadline:
            time.sleep(0.1)
        running = environments.users(env.path)
        assert running, "the process running from the environment is not seen"
        with pytest.raises(EnvironmentInUse, match=r"in use by \d+ process\(es\).*once they have ended"):
            environments.ensure(spec_for(analysis), rebuild=True)
        assert environments.verify(env).ok, "a refused rebuild leaves the environment as it was"
        assert proc.poll() is None, "the running process was not disturbed"
    finally:
        proc.kill()
        proc.wait()
        if box is not None:
            box.__exit__(None, None, None)
    assert environments.users(env.path) == []
    rebuilt, built = environments.ensure(spec_for(analysis), rebuild=True)
    assert built and environments.verify(rebuilt).ok


def test_an_added_file_fails_verification(analysis, envs):
    env, _ = environments.ensure(spec_for(analysis))
    site = next(env.path.rglob("site-packages"))
    os.chmod(site, 0o755)
    (site / "sitecustomize.py").write_text("print('injected')\n")
    os.chmod(site, 0o555)
    check = environments.verify(env)
    assert not check.ok and any(p.startswith("added: ") and p.endswith("sitecustomize.py") for p in check.problems)


def test_concurrent_builds_of_the_same_environment_build_it_once(analysis, envs):
    code = textwrap.dedent(f"""
        from pathlib import Path
        from ncaas.isolation import environments as e
        env, built = e.ensure(e.EnvironmentSpec("tinyana", Path({str(analysis / "requirements.lock")!r}),
                                                Path({str(analysis)!r})))
        print(built, env.manifest_sha256)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(built for built, _ in results) == ["False", "False", "True"]
    assert len({digest for _, digest in results}) == 1
    assert len([p for p in envs.iterdir() if p.is_dir()]) == 1


def test_an_interrupted_build_is_discarded_and_rebuilt(analysis, envs):
    key = spec_for(analysis).key()["env_sha256"]
    partial = envs / f"tinyana-{key[:20]}"
    (partial / "lib").mkdir(parents=True)
    (partial / "lib" / "half-written").write_text("x")
    env, built = environments.ensure(spec_for(analysis))
    assert built and env.path == partial and not (partial / "lib" / "half-written").exists()
    assert environments.verify(env).ok


def test_missing_lock_and_stale_lock_explain_how_to_fix(tmp_path, envs):
    folder = make_analysis(tmp_path / "ana", [])
    with pytest.raises(EnvironmentBuildError, match="does not exist.*ncaas env lock tinyana"):
        environments.ensure(spec_for(folder))
    environments.lock(folder)
    # The analysis gains a dependency but its lock is not regenerated.
    pyproject = folder / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("dependencies = []", 'dependencies = ["iniconfig"]'))
    with pytest.raises(EnvironmentBuildError, match="does not satisfy.*iniconfig.*ncaas env lock tinyana"):
        environments.ensure(spec_for(folder))
    assert not [p for p in envs.iterdir() if p.is_dir()], "a failed build must not leave an environment"


def test_the_build_log_names_its_sandbox_and_without_bubblewrap_a_build_is_refused(analysis, envs, monkeypatch):
    env, _ = environments.ensure(spec_for(analysis))
    log = env.path.with_name(env.path.name + ".build.log")
    assert log.read_text().startswith("# sandbox: bubblewrap, uid 65534")
    monkeypatch.setenv("NCAAS_BWRAP", str(envs / "no-such-bwrap"))
    with pytest.raises(
        EnvironmentBuildError, match="cannot build the tinyana environment: .*bubblewrap.*NCAAS_SANDBOX=off"
    ):
        environments.ensure(spec_for(analysis), rebuild=True)
    assert not env.path.exists(), "a refused build must not leave an environment"
    monkeypatch.setenv("NCAAS_SANDBOX", "off")
    env, built = environments.ensure(spec_for(analysis))
    assert built and environments.verify(env).ok
    assert log.read_text().startswith("# sandbox: none (NCAAS_SANDBOX=off)")


def test_cache_location_is_configurable(monkeypatch, tmp_path):
    monkeypatch.setenv("NCAAS_ENVS", str(tmp_path / "x"))
    assert environments.envs_dir() == tmp_path / "x"
    monkeypatch.delenv("NCAAS_ENVS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert environments.envs_dir() == tmp_path / "cache" / "ncaas" / "envs"


def test_locks_in_the_repository_pin_with_hashes():
    root = Path(__file__).resolve().parents[1]
    for name in ("framestats", "caliali"):
        lock = root / "analyses" / name / "requirements.lock"
        text = lock.read_text()
        assert f"ncaas env lock {name}" in text and "--hash=sha256:" in text
        assert "numpy==" in text
    assert stat.S_ISREG((root / "analyses" / "caliali" / "requirements.lock").stat().st_mode)


def test_env_commands_build_verify_and_lock(tmp_path, envs):
    folder = make_analysis(tmp_path / "tinyana", [])

    def ncaas(*args):
        return subprocess.run(
            [sys.executable, "-m", "ncaas", "env", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=300,
        )

    locked = ncaas("lock", str(folder))
    assert locked.returncode == 0 and "locked 0 packages" in locked.stdout
    built = ncaas("build", str(folder))
    assert built.returncode == 0 and "tinyana environment built" in built.stdout, built.stderr
    again = ncaas("verify", str(folder))
    assert again.returncode == 0 and again.stdout.startswith("ok:")

    env = environments.find(spec_for(folder))
    target = next(env.path.rglob("tinyana/__init__.py"))
    os.chmod(target, 0o644)
    target.write_text("VALUE = 3\n")
    changed = ncaas("verify", str(folder))
    assert changed.returncode == 3 and "changed since it was built" in changed.stderr
    assert f"changed: {target.relative_to(env.path).as_posix()}" in changed.stderr
    assert "ncaas env build" in changed.stderr and "--force" in changed.stderr and "Traceback" not in changed.stderr
