"""Session fixtures for the scale-out tests: a SeaweedFS S3 server and a two-node Ray cluster.

Both are real services started on loopback by the tests and stopped at the end of
the session (registered in conftest.py, so every test module shares one of each).
A backend whose service cannot start here is skipped with the reason, as the
storage contract suite expects.

Ray reads ``RAY_AUTH_MODE`` when it is imported, so the cluster fixture puts the
token variables into this process's environment before anything imports ray.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from ncaas.testing.ray_cluster import LocalClusterError, LocalRayCluster, LocalS3Server

HEAD_IP = "127.0.0.2"
WORKER_IP = "127.0.0.3"


class _Environ:
    """Set variables in os.environ for a session, and restore them afterwards."""

    def __init__(self, values: dict[str, str]):
        self.saved = {key: os.environ.get(key) for key in values}
        os.environ.update(values)

    def restore(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_server() -> Iterator[LocalS3Server]:
    """SeaweedFS on 127.0.0.1, with one access key and the bucket ``ncaas-test``."""
    server = LocalS3Server(bucket="ncaas-test")
    try:
        server.start()
    except LocalClusterError as exc:
        pytest.skip(f"the SeaweedFS S3 server cannot start here: {exc}")
    yield server
    server.stop()
    assert server._proc is None


@pytest.fixture
def s3_root(s3_server: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty storage root in the test bucket; the server's credentials and endpoint
    are in the standard AWS variables for the test (and the processes it starts)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{s3_server.bucket}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server: LocalS3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    """Head on 127.0.0.2, one worker on 127.0.0.3, token auth; nodes hold the S3 credentials."""
    # Nodes are health-checked every second (Ray's default: every 3 s, dead after ~25 s or more),
    # so that a node killed by a test is declared dead quickly.
    health = {
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
    }
    cluster = LocalRayCluster(
        head_ip=HEAD_IP,
        worker_ips=(WORKER_IP,),
        num_cpus=1,
        memory=3 * 1024**3,
        object_store_memory=80 * 1024**2,
        resources={"ncaas_test": 4},
        env={**s3_server.env(), **health, "NCAAS_NODE_DIR": str(tmp_path_factory.mktemp("ray-node"))},
        # node types of the default pricing profile (ncaas.cost): each node's tasks are priced at its rates
        labels={HEAD_IP: {"ncaas-node-type": "cpu-small"}, WORKER_IP: {"ncaas-node-type": "cpu-large"}},
    )
    try:
        cluster.start()
    except LocalClusterError as exc:
        pytest.skip(f"a two-node Ray cluster cannot start here: {exc}")
    environ = _Environ(cluster.env())
    yield cluster
    # Drivers connected from this process must go before the cluster does.
    import ray

    ray.shutdown()
    cluster.stop()
    environ.restore()
    leftovers = [node.proc.pid for node in cluster.nodes.values()]
    assert not leftovers, f"Ray node processes left running: {leftovers}"
