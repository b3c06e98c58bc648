"""Groups, users and API tokens, kept in SQL through SQLAlchemy.

A token is shown once, when it is issued; only its SHA-256 is stored. Tokens
carry 256 random bits, so a plain hash (no salt, no key stretching) is enough:
nobody can brute-force the preimage, and lookup stays one indexed query.
The database is any SQLAlchemy URL: SQLite by default, PostgreSQL in
production (``postgresql+psycopg://user@host/db``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    String,
    create_engine,
    event,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from ..private import private_sqlite
from ..schema import create_or_update
from .errors import AccountError, DatabaseUnavailable

__all__ = [
    "Accounts",
    "IssuedToken",
    "Principal",
    "open_engine",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "ncaas_"


class _Base(DeclarativeBase):
    pass


class _Group(_Base):
    __tablename__ = "server_groups"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    # bytes the group's storage may hold (None: no quota); added to older databases when opened
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class _User(_Base):
    __tablename__ = "server_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    group_id: Mapped[int] = mapped_column(ForeignKey("server_groups.id"))
    created_ms: Mapped[int] = mapped_column(BigInteger)


class _Token(_Base):
    __tablename__ = "server_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    # Public handle, printed next to the token, used to revoke it later.
    token_id: Mapped[str] = mapped_column(String(16), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("server_users.id"))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    revoked_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user and the one group whose storage they may touch."""

    user: str
    group: str
    token_id: str


@dataclass(frozen=True)
class IssuedToken:
    """A freshly issued token. ``token`` is the secret; it is never stored."""

    token_id: str
    token: str
    user: str
    group: str


def _now_ms() -> int:
    return int(time.time() * 1000)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout for concurrent use."""
    if url.startswith("sqlite"):
        try:
            private_sqlite(url)  # the state folder 0700, the database 0600: token hashes are private
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot open the accounts database {url}: {exc}") from exc
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # pragma: no cover - trivial
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def _check_name(kind: str, name: str) -> str:
    if not _NAME.match(name or ""):
        raise AccountError(
            f"{kind} name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class Accounts:
    """Account administration and token authentication over one database."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._session = sessionmaker(engine, expire_on_commit=False)
        try:
            create_or_update(_Base.metadata, engine)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"cannot open the accounts database: {exc}") from exc

    @classmethod
    def from_url(cls, url: str) -> Accounts:
        return cls(open_engine(url))

    def add_group(self, name: str) -> None:
        _check_name("group", name)
        with self._session() as s, s.begin():
            if s.scalar(select(_Group).where(_Group.name == name)) is not None:
                raise AccountError(f"group {name!r} already exists")
            s.add(_Group(name=name, created_ms=_now_ms()))

    def groups(self) -> list[str]:
        with self._session() as s:
            return list(s.scalars(select(_Group.name).order_by(_Group.name)))

    def set_quota(self, group: str, quota_bytes: int | None) -> None:
        """Limit what the group's storage may hold (None: no limit); uploads over it are refused."""
        if quota_bytes is not None and quota_bytes < 0:
            raise AccountError(f"a quota is a size of 0 bytes or more, not {quota_bytes}")
        with self._session() as s, s.begin():
            g = s.scalar(select(_Group).where(_Group.name == group))
            if g is None:
                raise AccountError(f"group {group!r} does not exist; `ncaas admin add-group {group}` creates it")
            g.quota_bytes = quota_bytes

    def quota(self, group: str) -> int | None:
        """The group's quota in bytes; None when it has none (or is not known)."""
        with self._session() as s:
            return s.scalar(select(_Group.quota_bytes).where(_Group.name == group))

    def add_user(self, name: str, group: str) -> None:
        _check_name("user", name)
        with self._session() as s, s.begin():
            g = s.scalar(select(_Group).where(_Group.name == group))
            if g is None:
                raise AccountError(
                    f"group {group!r} does not exist; create it first with `ncaas admin add-group {group}`"
                )
            if s.scalar(select(_User).where(_User.name == name)) is not None:
                raise AccountError(f"user {name!r} already exists")
            s.add(_User(name=name, group_id=g.id, created_ms=_now_ms()))

    def issue_token(self, user: str) -> IssuedToken:
        with self._session() as s, s.begin():
            row = s.execute(
                select(_User, _Group).join(_Group, _User.group_id == _Group.id).where(_User.name == user)
            ).first()
            if row is None:
                raise AccountError(
                    f"user {user!r} does not exist; create it with `ncaas admin add-user {user} --group GROUP`"
                )
            u, g = row
            token_id = secrets.token_hex(6)
            token = f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
            s.add(_Token(token_id=token_id, token_hash=hash_token(token), user_id=u.id, created_ms=_now_ms()))
            return IssuedToken(token_id=token_id, token=token, user=u.name, group=g.name)

    def revoke_token(self, token_or_id: str) -> str:
        """Revoke a token given either its public id or the token itself; returns the id."""
        with self._session() as s, s.begin():
            if token_or_id.startswith(TOKEN_PREFIX):
                cond = _Token.token_hash == hash_token(token_or_id)
            else:
                cond = _Token.token_id == token_or_id
            tok = s.scalar(select(_Token).where(cond))
            if tok is None:
                raise AccountError(f"no token {token_or_id!r}; `ncaas admin tokens` lists the issued ones")
            if tok.revoked_ms is None:
                tok.revoked_ms = _now_ms()
            return tok.token_id

    def tokens(self) -> list[dict]:
        with self._session() as s:
            rows = s.execute(select(_Token, _User).join(_User, _Token.user_id == _User.id).order_by(_Token.id)).all()
            return [
                {
                    "token_id": t.token_id,
                    "user": u.name,
                    "created_ms": t.created_ms,
                    "revoked": t.revoked_ms is not None,
                }
                for t, u in rows
            ]

    def authenticate(self, token: str) -> Principal | None:
        """The principal for a valid, unrevoked token; None otherwise."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self._session() as s:
            row = s.execute(
                select(_Token, _User, _Group)
                .join(_User, _Token.user_id == _User.id)
                .join(_Group, _User.group_id == _Group.id)
                .where(_Token.token_hash == hash_token(token))
            ).first()
        if row is None:
            return None
        t, u, g = row
        if t.revoked_ms is not None:
            return None
        return Principal(user=u.name, group=g.name, token_id=t.token_id)
