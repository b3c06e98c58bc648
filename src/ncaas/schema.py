"""Databases made by an older ncaas are brought up to date when they are opened.

Tables are created when missing (``MetaData.create_all``); a table that exists
but lacks columns a newer ncaas added gets them (``ALTER TABLE ... ADD COLUMN``),
on SQLite and PostgreSQL alike, so upgrading ncaas never strands the jobs,
accounts and uploads a database already holds. New columns are nullable or have
a server default, so old rows stay valid; one that is neither is named instead
of guessed.
"""

from __future__ import annotations

from sqlalchemy import DefaultClause, MetaData, inspect, text
from sqlalchemy.engine import Engine

from .exceptions import StorageError

__all__ = ["create_or_update"]


def create_or_update(metadata: MetaData, engine: Engine) -> list[str]:
    """Create ``metadata``'s missing tables and add their missing columns; returns ``table.column`` added."""
    metadata.create_all(engine)
    inspector = inspect(engine)
    added: list[str] = []
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in have]
        for column in missing:
            if not column.nullable and column.server_default is None:
                raise StorageError(
                    f"the database {engine.url.render_as_string(hide_password=True)} was made by an older "
                    f"ncaas: table {table.name} lacks column {column.name}, which cannot be added to existing "
                    "rows without a value; back the database up and ask the administrator to migrate it"
                )
        if not missing:
            continue
        preparer = engine.dialect.identifier_preparer
        with engine.begin() as conn:
            for column in missing:
                kind = column.type.compile(dialect=engine.dialect)
                default = ""
                if isinstance(column.server_default, DefaultClause):
                    default = f" DEFAULT {column.server_default.arg}"
                conn.execute(
                    text(
                        f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN "
                        f"{preparer.quote(column.name)} {kind}{default}"
                    )
                )
                added.append(f"{table.name}.{column.name}")
    return added
