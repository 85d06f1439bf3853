"""Stored tables as SQLAlchemy 2 typed declarative models; migrations/ creates them."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import CheckConstraint, ForeignKey, MetaData, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Constraint names are part of the schema: migrations refer to them (SQLite batch mode needs them).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """An aware UTC datetime on both databases (SQLite keeps no offset: it is UTC by contract)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: store aware datetimes only")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SiteLevel(enum.StrEnum):
    CENTRAL = "central"
    PROVINCE = "province"
    DISTRICT = "district"
    COMMUNE = "commune"
    OTHER = "other"


class Role(enum.StrEnum):
    ADMIN = "admin"
    HOST = "host"
    MEMBER = "member"
    ARCHIVIST = "archivist"


def _enum(cls: type[enum.StrEnum], name: str) -> sa.Enum:
    # VARCHAR + CHECK on both databases (no PostgreSQL ENUM type: adding a value stays a
    # plain migration); the values, not the member names, are stored.
    return sa.Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Site(Base):
    """A node of the administrative tree (central → province → [district] → commune)."""

    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    level: Mapped[SiteLevel] = mapped_column(_enum(SiteLevel, "site_level"))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)

    # lazy="raise": async code loads relations explicitly instead of failing in a lazy load.
    parent: Mapped[Site | None] = relationship(remote_side=[id], lazy="raise")

    def __repr__(self) -> str:
        return f"Site(id={self.id!r}, code={self.code!r})"


class Account(Base):
    """A person who signs in; `username` is stored lower-cased (unique case-insensitively)."""

    __tablename__ = "accounts"
    __table_args__ = (CheckConstraint("username = lower(username)", name="username_lower"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role, "account_role"))
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime(), default=utcnow, onupdate=utcnow, server_default=sa.func.now()
    )

    site: Mapped[Site | None] = relationship(lazy="raise")

    def __repr__(self) -> str:  # never the hash
        return f"Account(id={self.id!r}, username={self.username!r}, role={self.role!r})"
