"""One server in front of a Ray cluster, for real: ``ncaas serve --executor ray`` on an S3 root
(SeaweedFS) with its jobs in PostgreSQL, used from another machine with ``--server URL --token T``.

The cluster's worker node is started with a wrong S3 endpoint and wrong keys in its own
environment: its tasks succeed only because the server hands its S3 settings to each task
(Ray's runtime environment), and those settings never reach the group's storage or the logs.
Told to leave the nodes to their own settings (``--ray-s3-settings node``), the server keeps
that node out, with its cause, and the tasks run on the head.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ncaas_testutil import wait_for, write_stack

from ncaas.storage import Storage
from ncaas.testing.ray_cluster import LocalClusterError, LocalRayCluster, LocalS3Server, free_port
from ncaas.testing.servers import LocalPostgres

pytestmark = pytest.mark.timeout(420)

HEAD_IP, WORKER_IP = "127.0.0.2", "127.0.0.3"
WRONG_S3 = {
    "AWS_ACCESS_KEY_ID": "wrong-key",
    "AWS_SECRET_ACCESS_KEY": "wrong-secret",
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "NCAAS_S3_ENDPOINT": "http://127.0.0.1:9",
}


@pytest.fixture(scope="module")
def wrong_cluster(s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """A head that reaches S3 by itself, and a worker whose own environment points S3 clients at
    nothing, with keys nobody knows."""
    cluster = LocalRayCluster(
        head_ip=HEAD_IP,
        worker_ips=(),
        num_cpus=1,
        memory=3 * 1024**3,
        object_store_memory=80 * 1024**2,
        env={**s3_server.env(), "NCAAS_NODE_DIR": str(tmp_path_factory.mktemp("ray-node"))},
    )
    try:
        cluster.start()
        cluster.extra_env.update(WRONG_S3)
        cluster.add_node(WORKER_IP)
    except LocalClusterError as exc:
        cluster.stop()
        pytest.skip(f"a two-node Ray cluster cannot start here: {exc}")
    yield cluster
    cluster.stop()


def _ncaas(*args: str, env: dict[str, str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ncaas", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


def _elsewhere(tmp_path: Path, name: str) -> tuple[dict[str, str], Path]:
    """The environment and working folder of "another machine": its own HOME, no S3 keys, no state."""
    home = tmp_path / name
    home.mkdir()
    keep = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(HOME=str(home), COLUMNS="200", NCAAS_STATE=str(home / "state"))
    return env, home


def test_a_server_fronts_a_ray_cluster_on_s3_with_postgres(
    wrong_cluster: LocalRayCluster,
    postgres: LocalPostgres,
    s3_server: LocalS3Server,
    s3_root: str,
    tmp_path: Path,
) -> None:
    db = postgres.database(f"serve_{uuid.uuid4().hex[:8]}")
    server_env = {
        **os.environ,
        **s3_server.env(),
        **wrong_cluster.env(),
        "NCAAS_STATE": str(tmp_path / "server-state"),
        "COLUMNS": "200",
    }
    here = tmp_path / "server"
    here.mkdir()
    for command in (["add-group", "lab"], ["add-user", "ann", "--group", "lab"]):
        done = _ncaas("admin", *command, "--root", s3_root, "--db", db, env=server_env, cwd=here)
        assert done.returncode == 0, done.stderr
    issued = _ncaas("admin", "issue-token", "ann", "--root", s3_root, "--db", db, env=server_env, cwd=here)
    token = issued.stdout.strip().splitlines()[-1]
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ncaas", "serve", "--port", str(port), "--root", s3_root, "--db", db]
            + ["--executor", "ray", "--ray-address", wrong_cluster.address],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env,
            cwd=here,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: "ncaas server on" in log.read_text() or server.poll() is not None, timeout=90, what="serve")
        assert server.poll() is None, log.read_text()

        # From another machine: only the server's URL and a token.
        env, home = _elsewhere(tmp_path, "laptop")
        env.update(NCAAS_SERVER=url, NCAAS_TOKEN=token)
        data = [write_stack(home / f"d{i}.npy", seed=i) for i in range(3)]
        (home / "cfg.yaml").write_text("stats: [mean, max]\n")
        submitted = _ncaas(
            "submit", "framestats", *map(str, data), "--config", "cfg.yaml", "--name", "viaserver", env=env, cwd=home
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr + log.read_text()
        job = submitted.stdout.split("job ", 1)[1].split(":", 1)[0].strip()

        def over() -> bool:
            done = _ncaas("status", job, env=env, cwd=home)
            assert done.returncode == 0, done.stderr
            return any(word in done.stdout for word in ("succeeded", "failed", "cancelled"))

        wait_for(over, timeout=300, what=f"job {job} to end; server log:\n{log.read_text()[-3000:]}")
        status = _ncaas("status", job, env=env, cwd=home)
        assert "succeeded" in status.stdout and "failed" not in status.stdout, status.stdout + log.read_text()[-3000:]
        listed = _ncaas("status", env=env, cwd=home)
        assert job in listed.stdout, listed.stdout

        logs = _ncaas("logs", job, "d1.npy", env=env, cwd=home)
        assert logs.returncode == 0 and logs.stdout.strip(), logs.stdout + logs.stderr
        files = _ncaas("results", job, env=env, cwd=home)
        assert files.returncode == 0 and "outputs/d2.npy/d2.stats.csv" in files.stdout, files.stdout + files.stderr
        copied = _ncaas("results", job, "--to", str(home / "out"), env=env, cwd=home)
        assert copied.returncode == 0, copied.stderr
        assert (home / "out" / "outputs" / "d0.npy" / "d0.stats.csv").read_text().startswith("frame,mean,max")
        certificate = json.loads((home / "out" / "certificate.json").read_text())
        assert certificate["executor"]["name"] == "ray"
        nodes = {task["environment"]["node"] for task in certificate["tasks"]}
        assert nodes == {HEAD_IP, WORKER_IP}, certificate["tasks"]

        rerun = _ncaas("rerun", job, env=env, cwd=home, timeout=300)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr + log.read_text()[-3000:]
        second = rerun.stdout.split("  job ", 1)[1].split(" ", 1)[0]
        compared = _ncaas("compare", job, second, env=env, cwd=home)
        assert compared.returncode == 0, compared.stdout + compared.stderr
        cancelled = _ncaas("cancel", second, env=env, cwd=home)
        assert cancelled.returncode == 0 and "already over" in cancelled.stdout, cancelled.stdout + cancelled.stderr

        # The server's keys reached the nodes, and were written nowhere a user or a log can read.
        storage = Storage(s3_root)
        secret = s3_server.secret_key.encode()
        stored = storage.files(storage.root)
        assert any(f.endswith("certificate.json") for f in stored)
        assert not [f for f in stored if secret in storage.read_bytes(f)]
        assert secret not in log.read_bytes()
        assert wrong_cluster.tmp is not None
        ray_logs = [f for f in wrong_cluster.tmp.rglob("*") if f.is_file() and not f.is_symlink()]
        assert ray_logs and not [f for f in ray_logs if secret in f.read_bytes()]

        # Embedded on the S3 root from that machine (keys in hand, no server): refused, nothing written.
        before = set(stored)
        refused = _ncaas(
            "submit", "framestats", "d0.npy", "--group", "lab", "--root", s3_root,
            env={**env, **s3_server.env(), "NCAAS_SERVER": "", "NCAAS_TOKEN": ""}, cwd=home,
        )  # fmt: skip
        message = " ".join(refused.stderr.split())
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert "is not run by a job manager on this machine" in message and "--server URL --token TOKEN" in message
        assert "Traceback" not in refused.stderr
        assert set(storage.files(storage.root)) == before
        assert not (home / "state").exists()
        for command in (["status"], ["logs", job], ["results", job], ["cancel", job]):
            done = _ncaas(*command, "--root", s3_root, env={**env, "NCAAS_SERVER": ""}, cwd=home)
            assert done.returncode == 1 and "--server URL" in " ".join(done.stderr.split()), (command, done.stderr)
    finally:
        server.terminate()
        server.wait(timeout=60)
    text = log.read_text()
    assert server.returncode == 0, text


def test_a_node_that_cannot_reach_storage_is_kept_out_and_its_task_runs_elsewhere(
    wrong_cluster: LocalRayCluster, s3_server: LocalS3Server, s3_root: str, tmp_path: Path
) -> None:
    storage = Storage(s3_root)
    for i in range(2):
        storage.put(write_stack(tmp_path / f"n{i}.npy", seed=i), storage.resolve("lab", "inputs", f"n{i}.npy"))
    env = {**os.environ, **s3_server.env(), **wrong_cluster.env(), "NCAAS_STATE": str(tmp_path / "state")}
    env["COLUMNS"] = "250"
    port = free_port()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ncaas", "serve", "--port", str(port), "--root", s3_root]
            + ["--executor", "ray", "--ray-address", wrong_cluster.address, "--ray-s3-settings", "node"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "ncaas server on" in log.read_text() or server.poll() is not None, timeout=90, what="serve")
        assert server.poll() is None, log.read_text()
        # The server's own machine runs the manager of this root: the embedded CLI may submit here.
        done = _ncaas(
            "submit", "framestats", "n0.npy", "n1.npy", "--group", "lab", "--root", s3_root, "--wait",
            env=env, cwd=tmp_path, timeout=300,
        )  # fmt: skip
        # --wait follows the job that the server's manager runs; it does not run the tasks itself
        assert done.returncode == 0 and "succeeded: results in" in done.stdout, done.stdout + done.stderr
        job = done.stdout.split("job ", 1)[1].split(":", 1)[0].strip()
        other = _ncaas(
            "status", "--root", s3_root, "--db", f"sqlite:///{tmp_path / 'other.sqlite'}", env=env, cwd=tmp_path
        )
        said = " ".join(other.stderr.split())
        assert other.returncode == 1 and "uses the job database sqlite:///" in said and "pass the same --db" in said
        assert f"--server http://127.0.0.1:{port}" in said and not (tmp_path / "other.sqlite").exists()

        def over() -> str | None:
            shown = _ncaas("status", job, "--root", s3_root, env=env, cwd=tmp_path)
            assert shown.returncode == 0, shown.stderr
            head = shown.stdout.splitlines()[0]
            return shown.stdout if any(w in head for w in ("succeeded", "failed", "cancelled")) else None

        shown = wait_for(over, timeout=300, what=f"job {job} to end; server log:\n{log.read_text()[-3000:]}")
        text = " ".join(shown.split())
        assert f"job {job} · framestats · succeeded" in shown.splitlines()[0], shown
        assert f"node {WORKER_IP} cannot reach {s3_root}: cannot reach the S3 service at http://127.0.0.1:9" in text
        assert "retrying (attempt 2 of" in text, shown
        certificate = json.loads(storage.read_text(f"{storage.root}/lab/results/{job}/certificate.json"))
        assert {t["environment"]["node"] for t in certificate["tasks"]} == {HEAD_IP}
        assert f"node {WORKER_IP} cannot reach {s3_root}" in log.read_text()
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ray-s3-settings", "mine"], "--ray-s3-settings 'mine' is not known; use one of: server, node"),
        (["--ray-s3-settings", "node"], "--ray-address, --ray-max-cpus and --ray-s3-settings need --executor ray"),
        (["--executor", "ray"], "--executor ray needs the cluster: --ray-address HEAD:PORT"),
        (
            ["--no-manager", "--executor", "ray"],
            "--executor, --ray-* and --slurm-profile choose where the job manager runs tasks",
        ),
        (["--root", "s3://somewhere/x"], "the local executor runs tasks on files of this machine"),
    ],
)
def test_serve_executor_options_are_checked_with_a_message(args: list[str], message: str, tmp_path: Path) -> None:
    env = {**os.environ, "NCAAS_RAY_ADDRESS": "", "NCAAS_STATE": str(tmp_path / "state")}
    full = ["serve", "--port", str(free_port()), *args]
    done = _ncaas(*(full if "--root" in args else [*full, "--root", str(tmp_path)]), env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in " ".join(done.stderr.split()), done.stderr
    assert "Traceback" not in done.stderr
