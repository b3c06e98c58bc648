"""Session fixture for the Slurm tests: a two-node Slurm cluster on loopback (munged, slurmctld,
two slurmd's, and slurmdbd on MariaDB for sacct), started once and stopped at the end of the session.

Skipped, with the reason, only where Debian's Slurm packages are not installed (or the tests
do not run as root, which the daemons need).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ncaas.testing.ray_cluster import LocalClusterError
from ncaas.testing.slurm_cluster import LocalSlurmCluster


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    cluster = LocalSlurmCluster(cpus=2, memory=2 * 2**30, accounting=True)
    try:
        cluster.start()
    except LocalClusterError as exc:
        pytest.skip(f"a local Slurm cluster cannot start here: {exc}")
    saved = {key: os.environ.get(key) for key in cluster.env()}
    os.environ.update(cluster.env())  # Slurm's commands, run by the executor, find the cluster
    yield cluster
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    procs = list(cluster.procs.values())
    cluster.stop()
    left = [p.pid for p in procs if p.poll() is None]
    assert not left, f"Slurm daemons left running: {left}"
