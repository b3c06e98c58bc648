"""Databases made by an older ncaas are brought up to date when opened, and keep their rows."""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, Column, MetaData, String, Table, create_engine, inspect, text

from ncaas.exceptions import StorageError
from ncaas.jobs.db import JobDB
from ncaas.schema import create_or_update


def _old_database(path) -> str:
    url = f"sqlite:///{path}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE samples (id VARCHAR(8) PRIMARY KEY, name VARCHAR(20))"))
        conn.execute(text("INSERT INTO samples VALUES ('s1', 'mouse3')"))
    engine.dispose()
    return url


def test_missing_nullable_and_defaulted_columns_are_added_and_old_rows_kept(tmp_path):
    url = _old_database(tmp_path / "old.db")
    metadata = MetaData()
    Table(
        "samples",
        metadata,
        Column("id", String(8), primary_key=True),
        Column("name", String(20)),
        Column("weight_mg", BigInteger, nullable=True),
        Column("species", String(20), nullable=False, server_default=text("'mouse'")),
    )
    Table("sessions", metadata, Column("id", String(8), primary_key=True))
    engine = create_engine(url)
    assert create_or_update(metadata, engine) == ["samples.weight_mg", "samples.species"]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, name, weight_mg, species FROM samples")).all() == [
            ("s1", "mouse3", None, "mouse")
        ]
        assert conn.execute(text("SELECT count(*) FROM sessions")).scalar() == 0
    assert create_or_update(metadata, engine) == []  # up to date: nothing to do
    engine.dispose()


def test_a_column_that_needs_a_value_is_named_not_guessed(tmp_path):
    url = _old_database(tmp_path / "old.db")
    metadata = MetaData()
    Table(
        "samples",
        metadata,
        Column("id", String(8), primary_key=True),
        Column("name", String(20)),
        Column("owner", String(20), nullable=False),
    )
    engine = create_engine(url)
    with pytest.raises(StorageError, match="table samples lacks column owner, which cannot be added"):
        create_or_update(metadata, engine)
    with engine.connect() as conn:  # nothing was changed
        assert conn.execute(text("SELECT * FROM samples")).all() == [("s1", "mouse3")]
    engine.dispose()


def test_the_job_database_gets_back_a_column_an_older_version_lacked(tmp_path):
    from ncaas.jobs.db import Task

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    JobDB(url).close()
    column = next(c.name for c in Task.__table__.columns if c.nullable and not c.primary_key and not c.index)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'ALTER TABLE tasks DROP COLUMN "{column}"'))  # as an older ncaas made it
    engine.dispose()
    JobDB(url).close()
    engine = create_engine(url)
    assert column in {c["name"] for c in inspect(engine).get_columns("tasks")}
    engine.dispose()


def test_an_accounts_database_from_before_quotas_gets_them_and_keeps_its_groups(tmp_path):
    from ncaas.server.accounts import Accounts

    url = f"sqlite:///{tmp_path / 'jobs.sqlite'}"
    engine = create_engine(url)
    with engine.begin() as conn:  # the groups table as an ncaas without quotas made it
        conn.execute(
            text("CREATE TABLE server_groups (id INTEGER PRIMARY KEY, name VARCHAR(64) UNIQUE, created_ms BIGINT)")
        )
        conn.execute(text("INSERT INTO server_groups VALUES (1, 'lab', 1700000000000)"))
    engine.dispose()
    accounts = Accounts.from_url(url)
    assert accounts.groups() == ["lab"] and accounts.quota("lab") is None
    accounts.set_quota("lab", 5 << 30)
    assert accounts.quota("lab") == 5 << 30
    accounts.engine.dispose()
