"""Uploads as rows of the server's database, and as the API describes them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import BigInteger, Boolean, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ..errors import BadRequest
from ._constants import _DIGITS


class _Base(DeclarativeBase):
    pass


class _Upload(_Base):
    __tablename__ = "server_uploads"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group: Mapped[str] = mapped_column(String(64), index=True)
    user: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    crc32c: Mapped[str | None] = mapped_column(String(8), nullable=True)
    overwrite: Mapped[bool] = mapped_column(Boolean, default=False)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    completed_ms: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    final_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    final_crc32c: Mapped[str | None] = mapped_column(String(8), nullable=True)


@dataclass(frozen=True)
class UploadInfo:
    id: str
    path: str
    size: int
    offset: int
    complete: bool
    crc32c: str | None
    sha256: str | None
    user: str

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def check_digest(value: str | None, what: str, kind: str) -> str | None:
    """``value`` as lowercase hexadecimal if it is a well-formed ``kind`` ("SHA-256" or "CRC-32C")."""
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(f"[0-9a-f]{{{_DIGITS[kind]}}}", value):
        raise BadRequest(f"{what} must be {_DIGITS[kind]} hexadecimal characters (a {kind}), got {value[:80]!r}")
    return value
