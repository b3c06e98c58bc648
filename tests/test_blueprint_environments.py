"""Environments a blueprint declares without a package of its own: requirements, wheel folders, modules, system.

A hosted tool's folder holds a blueprint, a lock and a thin entry script. These tests build
such an analysis for real: its only requirement is a wheel that exists nowhere but in a local
folder (``find_links``), its entry is a module beside the blueprint, and jobs run it through
`ncaas submit` in the sandbox. A Debian package the blueprint names but the host lacks refuses
the job, naming the package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
import yaml
from ncaas_testutil import ncaas

from ncaas.blueprint import Blueprint, load_blueprint, validate_blueprint_file

WHEEL = "ncaaslocalwheel"
ENTRY = """\
import json, sys
from pathlib import Path
import ncaaslocalwheel

data, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
(out / "result.json").write_text(json.dumps({"greeting": ncaaslocalwheel.GREETING, "bytes": data.stat().st_size}))
"""


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_wheel(folder: Path, greeting: str) -> Path:
    """A pure-Python wheel that no index has, written by hand."""
    dist = f"{WHEEL}-1.0.dist-info"
    files = {
        f"{WHEEL}/__init__.py": f"GREETING = {greeting!r}\n".encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {WHEEL}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: ncaas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{dist}/RECORD"] = (record + f"{dist}/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{WHEEL}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def make_tool(folder: Path, **environment: object) -> Path:
    """An analysis folder as a hosted tool's: blueprint, entry module, (later) its lock."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run_local.py").write_text(ENTRY)
    blueprint = {
        "name": folder.name,
        "version": "1.0",
        "environment": {"requirements": [f"{WHEEL}==1.0"], "modules": ["run_local.py"], **environment},
        "command": ["{python}", "-m", "run_local", "{input}", "{output}"],
        "resources": {"cpus": 1, "memory": "1GiB", "timeout": "5m"},
    }
    (folder / "blueprint.yaml").write_text(yaml.safe_dump(blueprint))
    return folder / "blueprint.yaml"


@pytest.fixture
def place(tmp_path: Path) -> dict[str, str]:
    """Where the analyses and environments of one test live."""
    (tmp_path / "analyses").mkdir()
    return {"NCAAS_BLUEPRINTS": str(tmp_path / "analyses"), "NCAAS_ENVS": str(tmp_path / "envs")}


def _submit(tmp_path: Path, name: str, env: dict[str, str]):
    data = tmp_path / "data.bin"
    data.write_bytes(b"x" * 123)
    done = ncaas("submit", name, str(data), "--group", "lab", "--root", str(tmp_path / "root"), "--wait", env=env)
    results = next((tmp_path / "root" / "lab" / "results").iterdir())
    return done, results


def test_a_tool_of_requirements_alone_locks_builds_and_runs_from_a_local_wheel_folder(tmp_path, place):
    make_wheel(tmp_path / "analyses" / "localtool" / "wheels", "from a local wheel")
    blueprint = make_tool(tmp_path / "analyses" / "localtool", find_links=["wheels"])

    locked = ncaas("env", "lock", "localtool", env=place, check=True)
    assert "locked 1 packages" in " ".join(locked.stdout.split())
    lock = (blueprint.parent / "requirements.lock").read_text()
    wheel_sha = hashlib.sha256((blueprint.parent / "wheels" / f"{WHEEL}-1.0-py3-none-any.whl").read_bytes())
    assert f"{WHEEL}==1.0" in lock and wheel_sha.hexdigest() in lock
    assert "ncaas env lock localtool" in lock and str(tmp_path) not in lock  # no machine's folder in the lock

    done, results = _submit(tmp_path, "localtool", place)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((results / "outputs" / "data.bin" / "result.json").read_text()) == {
        "greeting": "from a local wheel",
        "bytes": 123,
    }
    certificate = json.loads((results / "certificate.json").read_text())
    environment = json.dumps(certificate)
    assert hashlib.sha256(lock.encode()).hexdigest() in environment

    # The entry module is part of the environment's identity: changing it builds another environment.
    first = {p.name for p in Path(place["NCAAS_ENVS"]).iterdir() if p.is_dir()}
    (blueprint.parent / "run_local.py").write_text(ENTRY.replace('"greeting"', '"message"'))
    built = ncaas("env", "build", "localtool", env=place, check=True)
    assert "environment built" in built.stdout
    second = {p.name for p in Path(place["NCAAS_ENVS"]).iterdir() if p.is_dir()}
    assert len(second - first) == 1


def test_a_missing_wheel_folder_is_skipped_and_the_lock_still_decides(tmp_path, place):
    """A folder named in find_links but absent on a machine is passed over; the locked hash must still match."""
    make_wheel(tmp_path / "analyses" / "localtool" / "wheels", "original")
    blueprint = make_tool(tmp_path / "analyses" / "localtool", find_links=["wheels", "/no/such/wheel-folder"])
    ncaas("env", "lock", "localtool", env={**place, "UV_CACHE_DIR": str(tmp_path / "uv-lock")}, check=True)
    # Another wheel of the same name and version replaces the locked one; a machine whose uv cache
    # never saw the locked wheel refuses it.
    make_wheel(tmp_path / "analyses" / "localtool" / "wheels", "tampered")
    built = ncaas("env", "build", "localtool", env={**place, "UV_CACHE_DIR": str(tmp_path / "uv-build")})
    assert built.returncode != 0
    message = " ".join((built.stdout + built.stderr).split())
    assert "Traceback" not in message and "hash" in message.lower(), message
    log = next(Path(place["NCAAS_ENVS"]).glob("localtool-*.build.log")).read_text()
    assert "/no/such/wheel-folder is not on this machine" in log
    assert blueprint.is_file()


def test_a_job_is_refused_naming_a_system_package_the_host_lacks(tmp_path, place):
    make_wheel(tmp_path / "analyses" / "localtool" / "wheels", "hello")
    make_tool(tmp_path / "analyses" / "localtool", find_links=["wheels"], system=["ncaas-no-such-package"])
    ncaas("env", "lock", "localtool", env=place, check=True)
    done, results = _submit(tmp_path, "localtool", place)
    assert done.returncode != 0
    said = " ".join((done.stdout + done.stderr).split()) + json.dumps(
        [json.loads(p.read_text()) for p in (results / "status").glob("*.json")]
    )
    assert "needs the Debian packages ncaas-no-such-package" in said, said
    assert "apt-get install ncaas-no-such-package" in said and "Traceback" not in said


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("modules", ["../elsewhere.py"], "is not a module file"),
        ("modules", ["run-tool.py"], "is not a module file"),
        ("modules", ["a/run.py", "b/run.py"], "two modules are named 'run'"),
        ("system", ["FFmpeg!"], "is not a Debian package name"),
        ("requirements", ["--index-url http://x"], "is not a requirement"),
    ],
)
def test_bad_environment_fields_are_refused_with_the_fix(tmp_path, field, value, says):
    path = tmp_path / "blueprint.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "bad", "version": "1", "command": ["{input}", "{output}"], "environment": {field: value}}
        )
    )
    model, problems = validate_blueprint_file(path)
    assert model is None and len(problems) == 1
    assert f"environment.{field}" in problems[0] and says in problems[0], problems


def test_blueprints_using_none_of_the_new_fields_keep_their_identity():
    """requirements, find_links, modules and system left empty do not enter a blueprint's content hash."""
    data = {"name": "same", "version": "1", "command": ["{input}", "{output}"], "environment": {"source": "."}}
    plain = Blueprint.model_validate(data)
    spelled = Blueprint.model_validate(
        {**data, "environment": {"source": ".", "requirements": [], "find_links": [], "modules": [], "system": []}}
    )
    assert plain.content_hash() == spelled.content_hash()
    assert "requirements" not in plain.canonical()
    framestats = load_blueprint(Path(__file__).resolve().parents[1] / "analyses" / "framestats" / "blueprint.yaml")
    assert "modules" not in framestats.blueprint.canonical()
