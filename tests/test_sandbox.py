"""Sandboxed tasks, for real: bubblewrap, cgroups, a loopback server, a fork bomb, a memory hog."""

from __future__ import annotations

import os
import secrets
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ncaas.isolation import environments, sandbox
from ncaas.isolation.sandbox import SandboxSpec, SandboxUnavailable

MiB = 2**20


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> environments.Environment:
    """A small real environment (no third-party packages) built once for this module."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "src" / "probe").mkdir(parents=True)
    (folder / "src" / "probe" / "__init__.py").write_text("NAME = 'probe'\n")
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["hatchling>=1.25"]\nbuild-backend = "hatchling.build"\n'
        '[project]\nname = "probe"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = []\n'
        '[tool.hatch.build.targets.wheel]\npackages = ["src/probe"]\n'
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("NCAAS_ENVS", str(tmp_path_factory.mktemp("envs")))
        built, _ = environments.ensure(environments.EnvironmentSpec("probe", environments.lock(folder), folder))
    return built


@pytest.fixture
def storage(tmp_path) -> Path:
    """Two groups' storage; the task belongs to group ``alpha``."""
    for group in ("alpha", "beta"):
        (tmp_path / group / "inputs").mkdir(parents=True)
        (tmp_path / group / "results" / "job1" / "outputs").mkdir(parents=True)
    (tmp_path / "alpha" / "inputs" / "data.txt").write_text("alpha data\n")
    (tmp_path / "beta" / "inputs" / "secret.txt").write_text("beta's unpublished data\n")
    return tmp_path


def _mine() -> set[Path]:
    found = set()
    for controller in ("memory", "pids", "cpuacct"):
        root = Path("/sys/fs/cgroup") / controller
        if root.is_dir():
            found |= {g for g in root.iterdir() if g.name.startswith(f"ncaas-{os.getpid()}-")}
    scratch = Path(os.environ.get("NCAAS_SCRATCH") or "/tmp")
    return found | set(scratch.glob(f"ncaas-scratch-{os.getpid()}-*"))


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every test ends without a cgroup or scratch folder it created."""
    before = _mine()
    yield
    assert _mine() - before == set(), "a cgroup or scratch folder was left behind"


def task(env, storage, code: str, **limits) -> sandbox.SandboxResult:
    spec = SandboxSpec(
        readonly=[storage / "alpha" / "inputs"],
        writable=[storage / "alpha" / "results" / "job1" / "outputs"],
        environment=env.path,
        workdir=storage / "alpha" / "results" / "job1" / "outputs",
        **{"memory": 256 * MiB, "processes": 64, **limits},
    )
    return sandbox.run([str(env.python), "-c", code], spec, timeout=60)


def test_a_task_reads_inputs_writes_output_with_clean_variables_and_its_own_tmp(env, storage, monkeypatch):
    monkeypatch.setenv("NCAAS_TEST_SECRET", "must-not-leak")
    host_tmp = Path("/tmp") / f"ncaas-host-file-{secrets.token_hex(4)}"
    host_tmp.write_text("the host's /tmp")
    try:
        result = task(
            env,
            storage,
            f"""
import os, probe
print(open({str(storage / "alpha" / "inputs" / "data.txt")!r}).read().strip())
open('result.txt', 'w').write(probe.NAME)
print('tmp', os.listdir('/tmp'), os.environ['TMPDIR'], os.getuid())
open('/tmp/scratch.bin', 'wb').write(b'x' * 1000)
print('vars', sorted(os.environ))
print('prefix', os.sys.prefix)
""",
        )
    finally:
        host_tmp.unlink()
    assert result.verdict.ok, result.output
    lines = result.output.splitlines()
    assert lines[0] == "alpha data"
    assert "/tmp 65534" in lines[1] and host_tmp.name not in lines[1]
    assert "NCAAS_TEST_SECRET" not in result.output
    assert f"prefix {env.path}" in result.output
    assert (storage / "alpha" / "results" / "job1" / "outputs" / "result.txt").read_text() == "probe"
    assert result.isolation["mode"] == "bubblewrap"
    assert result.isolation["memory"].startswith("cgroup v1 memory")
    assert result.isolation["processes"].startswith("cgroup v1 pids")


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/usr/lib/evil.py", "write_denied"),
        ("/etc/passwd", "write_denied"),
        ("{inputs}/data.txt", "write_denied"),
        ("{storage}/beta/inputs/planted.txt", "outside_access"),
    ],
)
def test_writing_outside_the_output_is_stopped_with_a_reason(env, storage, target, reason):
    target = target.format(inputs=storage / "alpha" / "inputs", storage=storage)
    result = task(env, storage, f"open({target!r}, 'a').write('x')")
    assert not result.verdict.ok and result.verdict.reason == reason, result.output
    assert target in result.verdict.message
    assert (storage / "alpha" / "inputs" / "data.txt").read_text() == "alpha data\n"
    assert not (storage / "beta" / "inputs" / "planted.txt").exists()


def test_another_groups_data_cannot_be_read(env, storage):
    secret = storage / "beta" / "inputs" / "secret.txt"
    result = task(env, storage, f"print(open({str(secret)!r}).read())")
    assert result.verdict.reason == "outside_access"
    assert "outside its sandbox" in result.verdict.message and str(secret) in result.verdict.message
    assert "unpublished" not in result.output


def test_a_loopback_server_of_the_host_is_unreachable(env, storage):
    connections: list[str] = []
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    stop = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            connections.append(conn.recv(100).decode())
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:  # reachable outside
            probe.sendall(b"from-host")
        result = task(
            env,
            storage,
            f"""
import socket
socket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'from-sandbox')
""",
        )
    finally:
        stop.set()
        thread.join(timeout=10)
        server.close()
    assert result.verdict.reason == "network_denied", result.output
    assert "network" in result.verdict.message
    assert connections == ["from-host"]


def test_usage_counts_every_process_of_the_task(env, storage):
    result = task(
        env,
        storage,
        """
import subprocess, sys
burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.4: pass"
subprocess.run([sys.executable, "-c", burn], check=True)  # a child's CPU time counts too
x = bytearray(120 * 2**20)
""",
    )
    assert result.verdict.ok, result.output
    assert result.cpu_seconds is not None and result.cpu_seconds >= 0.4
    assert result.peak_memory >= 120 * MiB


def test_a_fork_bomb_is_stopped_at_the_process_limit(env, storage):
    result = task(env, storage, "import os\nwhile True:\n    os.fork()", processes=32)
    assert result.verdict.reason == "process_limit", result.output
    assert "more than 32 processes" in result.verdict.message
    assert result.seconds < 30


def test_a_memory_hog_is_stopped_at_the_memory_limit(env, storage):
    result = task(env, storage, "blocks = []\nwhile True:\n    blocks.append(bytearray(16 * 2**20))", memory=96 * MiB)
    assert result.verdict.reason == "memory", result.output
    assert "memory limit of 96.0 MiB" in result.verdict.message
    assert result.peak_memory is not None and result.peak_memory <= 96 * MiB


def test_without_writable_cgroups_the_memory_limit_is_an_address_space_limit(env, storage, monkeypatch):
    monkeypatch.setenv("NCAAS_CGROUP_ROOT", str(storage / "no-cgroups-here"))
    result = task(env, storage, "x = bytearray(400 * 2**20)", memory=128 * MiB)
    assert result.verdict.reason == "memory", result.output
    assert result.isolation["memory"] == "RLIMIT_AS, 128.0 MiB"
    assert "RLIMIT_NPROC" in result.isolation["processes"]


def test_modifying_the_environment_is_stopped(env, storage):
    target = next(env.path.rglob("probe/__init__.py"))
    result = task(env, storage, f"open({str(target)!r}, 'w').write('NAME = 1')")
    assert result.verdict.reason == "environment_write_denied", result.output
    assert "modify its analysis environment" in result.verdict.message
    assert environments.verify(env).ok


def test_nothing_remains_after_a_task_that_leaves_a_daemon(env, storage):
    marker = f"ncaas-daemon-{secrets.token_hex(4)}"
    result = task(
        env,
        storage,
        f"""
import subprocess
subprocess.Popen(['/bin/sh', '-c', 'exec -a {marker} sleep 300'], start_new_session=True)
print('left a daemon behind')
""",
    )
    assert result.verdict.ok, result.output

    def running():
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    found.append(proc.name)
            except OSError:
                continue
        return found

    assert running() == []


def test_tasks_running_at_the_same_time_are_unaffected(env, storage):
    good = """
import hashlib
digest = hashlib.sha256()
for i in range(200000):
    digest.update(str(i).encode())
open('good.txt', 'w').write(digest.hexdigest())
print('done')
"""
    import hashlib

    expected = hashlib.sha256()
    for i in range(200000):
        expected.update(str(i).encode())
    bad = {
        "fork": ("import os\nwhile True:\n    os.fork()", {"processes": 16}),
        "hog": ("b = []\nwhile True:\n    b.append(bytearray(16 * 2**20))", {"memory": 64 * MiB}),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(task, env, storage, code, **limits) for name, (code, limits) in bad.items()}
        futures["good"] = pool.submit(task, env, storage, good)
        results = {name: f.result() for name, f in futures.items()}
    assert results["good"].verdict.ok, results["good"].output
    assert (storage / "alpha" / "results" / "job1" / "outputs" / "good.txt").read_text() == expected.hexdigest()
    assert results["fork"].verdict.reason == "process_limit"
    assert results["hog"].verdict.reason == "memory"


def test_a_task_over_its_timeout_is_stopped(env, storage):
    spec = SandboxSpec(writable=[storage / "alpha" / "results" / "job1" / "outputs"], environment=env.path)
    result = sandbox.run([str(env.python), "-c", "import time; time.sleep(60)"], spec, timeout=0.5)
    assert result.verdict.reason == "timeout" and result.seconds < 10


def test_without_bubblewrap_tasks_are_refused_unless_the_operator_allows_it(env, storage, monkeypatch):
    monkeypatch.setenv("NCAAS_BWRAP", str(storage / "no-such-bwrap"))
    with pytest.raises(SandboxUnavailable, match="NCAAS_SANDBOX=off"):
        task(env, storage, "print('ran')")

    monkeypatch.setenv("NCAAS_SANDBOX", "off")
    result = task(env, storage, "import os; print('ran in', os.environ['TMPDIR'])")
    assert result.verdict.ok and "ran in" in result.output
    assert result.isolation["mode"] == "none"
    assert "NCAAS_SANDBOX=off" in result.isolation["reason"]


def test_an_unknown_sandbox_setting_is_explained(monkeypatch):
    monkeypatch.setenv("NCAAS_SANDBOX", "maybe")
    with pytest.raises(sandbox.SandboxError, match="use on .*or off"):
        sandbox.sandbox_mode()


# -- through the platform: the manager, the local executor, the certificate, rerun ------
def _framestats_copy(folder: Path) -> Path:
    """A private copy of the framestats analysis (package, lock, blueprint) that a test may change."""
    import shutil

    repo = Path(__file__).resolve().parents[1] / "analyses" / "framestats"
    shutil.copytree(repo, folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))
    return folder


@pytest.fixture(scope="module")
def shared_envs(tmp_path_factory) -> Path:
    """One environment cache for the platform tests below (each copy of framestats has the same key)."""
    return tmp_path_factory.mktemp("platform-envs")


@pytest.fixture
def platform(tmp_path, monkeypatch, shared_envs):
    """A storage root with one dataset, a private framestats, and a manager over them."""
    import numpy as np

    from ncaas.blueprint import BlueprintRegistry
    from ncaas.executors.local import LocalExecutor
    from ncaas.jobs.db import JobDB, default_db_url
    from ncaas.jobs.manager import Manager
    from ncaas.storage import Storage

    monkeypatch.setenv("NCAAS_ENVS", str(shared_envs))
    analysis = _framestats_copy(tmp_path / "analyses" / "framestats")
    root = tmp_path / "root"
    (root / "lab" / "inputs").mkdir(parents=True)
    np.save(root / "lab" / "inputs" / "a.npy", np.arange(5 * 4 * 4, dtype=np.float32).reshape(5, 4, 4))
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    manager = Manager(
        storage, db, registry=BlueprintRegistry.discover([tmp_path / "analyses"]), executor=LocalExecutor(cpus=2)
    )
    yield manager, analysis, root
    db.close()


def _submit_and_run(manager, root, name="j"):
    import json

    path = root / "lab" / "submissions" / f"{name}.submit.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"analysis": "framestats", "dataname": ["a.npy"], "timestamp": name}))
    job = manager.ingest_file("lab", str(path))
    assert job.state == "queued", job.cause
    return manager.run_job(job.id), root / "lab" / "results" / job.id


def test_a_job_runs_sandboxed_in_its_environment_and_the_certificate_says_so(platform):
    import json

    manager, analysis, root = platform
    job, results = _submit_and_run(manager, root)
    assert job.state == "succeeded", job.cause
    cert = json.loads((results / "certificate.json").read_text())
    env = cert["environment"]
    assert env["lock_hash"] == environments._sha256_file(analysis / "requirements.lock")
    assert len(env["manifest_hash"]) == 64 and Path(env["path"]).parent == Path(os.environ["NCAAS_ENVS"])
    assert cert["tasks"][0]["argv"][0] == str(Path(env["path"]) / "bin" / "python")
    assert cert["isolation"].startswith("bubblewrap") and "cgroup v1 memory" in cert["isolation"]
    text = (results / "certificate.txt").read_text()
    assert env["lock_hash"] in text and env["manifest_hash"] in text
    assert (results / "outputs" / "a.npy" / "a.stats.csv").is_file()


def test_rerun_refuses_a_changed_lock_and_accepts_a_rebuild_from_the_same_lock(platform):
    from ncaas.exceptions import CertificateError
    from ncaas.provenance.rerun import rerun

    manager, analysis, root = platform
    job, results = _submit_and_run(manager, root)
    assert job.state == "succeeded", job.cause
    certificate = results / "certificate.json"

    lock = analysis / "requirements.lock"
    original = lock.read_text()
    lock.write_text(original + "# changed\n")
    with pytest.raises(CertificateError, match="no longer matches the certificate: its lock file"):
        rerun(manager, str(certificate))
    lock.write_text(original)

    built = environments.find(environments.spec_for_blueprint(manager.registry.get("framestats")))
    environments.remove(built)  # gone from the cache: the rerun rebuilds it from the same lock
    notes: list[str] = []
    rerun_job, rows = rerun(manager, str(certificate), notify=notes.append)
    assert rerun_job.state == "succeeded"
    assert rows and all(r["verdict"] == "identical" for r in rows)


def test_a_job_is_refused_without_bubblewrap_unless_the_operator_allows_it(platform, monkeypatch, tmp_path):
    import json

    manager, _, root = platform
    monkeypatch.setenv("NCAAS_BWRAP", str(tmp_path / "no-bwrap-here"))
    job, results = _submit_and_run(manager, root, "refused")
    task = manager.db.tasks(job.id)[0]
    assert job.state == "failed" and "could not start: tasks must run in a bubblewrap sandbox" in task.cause
    assert "NCAAS_SANDBOX=off" in task.cause

    monkeypatch.setenv("NCAAS_SANDBOX", "off")
    job, results = _submit_and_run(manager, root, "allowed")
    assert job.state == "succeeded", job.cause
    cert = json.loads((results / "certificate.json").read_text())
    assert cert["isolation"].startswith("none: NCAAS_SANDBOX=off")


def test_a_changed_environment_is_not_used_by_a_job(platform):
    import json

    manager, analysis, root = platform
    job, _ = _submit_and_run(manager, root, "first")
    assert job.state == "succeeded", job.cause
    env_path = Path(json.loads(manager.db.tasks(job.id)[0].environment_json)["path"])
    target = next(env_path.rglob("framestats/__main__.py"))
    os.chmod(target, 0o644)
    target.write_text("print('not the certified analysis')\n")
    environments._VERIFIED.clear()  # a new manager process would not have verified it yet
    job, results = _submit_and_run(manager, root, "second")
    task = manager.db.tasks(job.id)[0]
    assert job.state == "failed" and task.attempt == 1
    assert "could not start" in task.cause and "changed on disk" in task.cause
    assert "ncaas env build framestats --force" in task.cause
    assert not (results / "outputs" / "a.npy").exists()
    environments.remove(environments.find(environments.spec_for_blueprint(manager.registry.get("framestats"))))
