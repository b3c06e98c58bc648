"""Fixtures for the platform tests: a storage root with datasets, test blueprints, a manager."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ncaas_testutil import REPO, make_blueprint, write_stack  # noqa: E402
from ray_fixtures import ray_cluster, s3_root, s3_server  # noqa: E402,F401  (Ray + S3, started once)
from slurm_fixtures import slurm_cluster  # noqa: E402,F401  (Slurm, started once)

from ncaas.blueprint import BlueprintRegistry  # noqa: E402
from ncaas.executors.local import LocalExecutor  # noqa: E402
from ncaas.jobs.db import JobDB, default_db_url  # noqa: E402
from ncaas.jobs.manager import Manager  # noqa: E402
from ncaas.storage import Storage  # noqa: E402
from ncaas.testing.servers import LocalPostgres, PostgresUnavailable  # noqa: E402


@pytest.fixture
def blueprints_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "blueprints"
    folder.mkdir()
    make_blueprint(folder, "fs-short", resources={"timeout": 2})
    make_blueprint(folder, "fs-small", resources={"memory": "400MB"})
    make_blueprint(folder, "fs-private", access={"groups": ["vip"]})
    make_blueprint(folder, "fs-serial", limits={"max_concurrent_tasks": 1})
    return folder


@pytest.fixture
def registry(blueprints_dir: Path) -> BlueprintRegistry:
    return BlueprintRegistry.discover([blueprints_dir, REPO / "analyses"])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    write_stack(path / "lab" / "inputs" / "a.npy", seed=1)
    write_stack(path / "lab" / "inputs" / "b.npy", seed=2)
    write_stack(path / "lab" / "inputs" / "c.npy", seed=3)
    write_stack(path / "lab" / "inputs" / "folder" / "x.npy", seed=4)
    write_stack(path / "lab" / "inputs" / "folder" / "y.npy", seed=5)
    return path


@pytest.fixture
def manager(root: Path, registry: BlueprintRegistry) -> Iterator[Manager]:
    storage = Storage(root)
    db = JobDB(default_db_url(storage.root))
    yield Manager(storage, db, registry=registry, executor=LocalExecutor(cpus=4))
    db.close()


@pytest.fixture(scope="module")
def postgres() -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the test module's own (skipped where one cannot be started)."""
    pg = LocalPostgres()
    try:
        pg.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL cannot be started here: {exc}")
    yield pg
    pg.stop()
