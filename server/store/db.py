"""The database: an async engine and its sessions, migrated to the newest schema on open.

SQLite (a file under the data directory) unless `DATABASE_URL` names PostgreSQL. Migrations are
Alembic scripts in `migrations/`, run in code: there is no alembic.ini. A developer writes a new
one with `alembic.command.revision(alembic_config(url), message=..., autogenerate=True)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, event, make_url, text
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from server.config import Config
from server.errors import ConfigError, StoreError

log = logging.getLogger(__name__)

SQLITE_FILE = "giaoban.sqlite3"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Two nodes starting at once on one PostgreSQL database migrate one after the other.
MIGRATION_LOCK_KEY = 0x6769616F62616E  # "giaoban"
CONNECT_TIMEOUT = 10.0


def database_url(config: Config) -> str:
    """The SQLAlchemy URL of the node's database; creates the data directory for SQLite."""
    if config.database_url:
        url = config.database_url.strip()
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+asyncpg://" + url.removeprefix(prefix)
        if url.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return url
        raise ConfigError(
            "DATABASE_URL must be a PostgreSQL URL (postgresql://user:password@host/database)"
        )
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data directory {config.data_dir}: {exc}") from exc
    return f"sqlite+aiosqlite:///{(config.data_dir / SQLITE_FILE).resolve()}"


def alembic_config(url: str | None = None) -> AlembicConfig:
    """Alembic's configuration, built in code, pointing at this package's migrations."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Taking transactions over from the driver (it would not BEGIN before DDL) makes migrations
    # atomic; SQLite checks foreign keys only when asked, per connection. SQLAlchemy docs,
    # "Serializable isolation / Savepoints / Transactional DDL" for pysqlite/aiosqlite.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        # WAL: `giaoban users ...` can write while the node reads.
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # IMMEDIATE: a transaction takes the write lock when it starts, waiting its turn (the
    # driver's 5 s busy timeout). A deferred one that read first and writes later fails at
    # once with "database is locked" when another writer committed meanwhile (WAL snapshot).
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text_ = str(orig).strip() or type(orig).__name__
    return text_.splitlines()[0]


class Database:
    """An `AsyncEngine` and its `async_sessionmaker`. Creating one does no I/O: `migrate()`
    connects first, `close()` ends every connection."""

    def __init__(self, url: str) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"DATABASE_URL is not a database URL: {exc}") from exc
        self.url = url
        self.dialect = parsed.get_backend_name()
        self.display_url = parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {}
        if self.dialect == "postgresql":
            options = {"pool_pre_ping": True, "connect_args": {"timeout": CONNECT_TIMEOUT}}
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.dialect == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        """A new session; `async with db.session() as s, s.begin(): ...` commits at the end."""
        return self.sessions()

    async def migrate(self) -> None:
        """Bring the schema to the newest migration; StoreError when that is not possible."""
        try:
            async with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    await conn.execute(
                        text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                await conn.run_sync(self._upgrade)
        except (SQLAlchemyError, CommandError, OSError, TimeoutError) as exc:
            raise StoreError(
                f"cannot open the database {self.display_url}: {_reason(exc)}"
            ) from exc

    def _upgrade(self, connection: Connection) -> None:
        cfg = alembic_config()
        head = ScriptDirectory.from_config(cfg).get_current_head()
        current = MigrationContext.configure(connection).get_current_revision()
        if current == head:
            return
        log.info("database %s: migrating from %s to %s", self.display_url, current or "empty", head)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async def close(self) -> None:
        await self.engine.dispose()


async def open_database(config: Config) -> Database:
    """The node's database, migrated to the newest schema; close() it when done."""
    database = Database(database_url(config))
    try:
        await database.migrate()
    except BaseException:
        await database.close()
        raise
    return database
