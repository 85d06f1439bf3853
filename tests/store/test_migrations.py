"""server/store/db.py: the database URL, migrations on open, and errors an operator can read."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError

from server.config import Config
from server.errors import ConfigError, StoreError
from server.store.db import Database, alembic_config, database_url, open_database
from server.store.models import Account, Base, Role, Site, SiteLevel

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def _tables(connection: sa.Connection) -> set[str]:
    return set(sa.inspect(connection).get_table_names())


def _revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


# -- database_url ------------------------------------------------------------------------------


def test_default_is_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet"
    url = database_url(Config(data_dir=data_dir))
    assert url == f"sqlite+aiosqlite:///{data_dir.resolve()}/giaoban.sqlite3"
    assert data_dir.is_dir()


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://gb:pw@db:5432/gb", "postgresql+asyncpg://gb:pw@db:5432/gb"),
        ("postgres://gb@db/gb", "postgresql+asyncpg://gb@db/gb"),
        ("postgresql+asyncpg://gb@db/gb", "postgresql+asyncpg://gb@db/gb"),
    ],
)
def test_postgresql_urls_use_asyncpg(tmp_path: Path, given: str, expected: str) -> None:
    assert database_url(Config(data_dir=tmp_path, database_url=given)) == expected


def test_other_databases_are_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL must be a PostgreSQL URL"):
        database_url(Config(data_dir=tmp_path, database_url="mysql://gb@db/gb"))


async def test_unreachable_server_is_a_store_error_without_the_password(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, database_url="postgresql://gb:s3cr3t-pw@127.0.0.1:1/gb")
    with pytest.raises(StoreError) as caught:
        await open_database(config)
    assert caught.value.code == "store"
    assert "127.0.0.1:1" in caught.value.message
    assert "s3cr3t-pw" not in caught.value.message


async def test_unwritable_sqlite_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "giaoban.sqlite3").mkdir()  # a directory where the file should be
    before = set(threading.enumerate())
    with pytest.raises(StoreError, match="cannot open the database"):
        await open_database(Config(data_dir=tmp_path))
    # aiosqlite stops a failed connection's worker thread with a future nobody awaits; the
    # thread hands it back to this test's loop, which must still run then (else "Event loop
    # is closed" in the thread, as pytest warned now and then: omnilib/aiosqlite#389).
    workers = [t for t in set(threading.enumerate()) - before if "_connection_worker" in t.name]
    await asyncio.to_thread(lambda: [t.join(10) for t in workers])
    assert not any(t.is_alive() for t in workers)


# -- migrations ---------------------------------------------------------------------------------


async def test_migrations_apply_to_an_empty_database(db_config: Config) -> None:
    database = Database(database_url(db_config))
    assert database.dialect == ("postgresql" if db_config.database_url else "sqlite")
    try:
        async with database.engine.connect() as conn:
            assert await conn.run_sync(_tables) == set()
        await database.migrate()
        async with database.engine.connect() as conn:
            assert await conn.run_sync(_tables) == {
                "alembic_version",
                "sites",
                "accounts",
                "login_sessions",
                "rooms",
                "room_invites",
                "room_removals",
                "api_tokens",
                "attendance",
                "chat_messages",
                "recordings",
                "recording_files",
                "recording_access",
            }
            assert await conn.run_sync(_revision) == HEAD == "0004"
    finally:
        await database.close()


async def test_migrations_are_idempotent_and_keep_data(db_config: Config) -> None:
    first = await open_database(db_config)
    try:
        async with first.session() as session, session.begin():
            session.add(Site(code="01", name="Thành phố Hà Nội", level=SiteLevel.PROVINCE))
    finally:
        await first.close()
    second = await open_database(db_config)
    try:
        await second.migrate()  # a third time, on an open database
        async with second.engine.connect() as conn:
            assert await conn.run_sync(_revision) == HEAD
        async with second.session() as session:
            sites = (await session.execute(sa.select(Site))).scalars().all()
        assert [(s.code, s.name) for s in sites] == [("01", "Thành phố Hà Nội")]
    finally:
        await second.close()


async def test_models_and_migrations_agree(database: Database) -> None:
    def diff(connection: sa.Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with database.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_foreign_keys_and_checks_are_enforced(database: Database) -> None:
    # SQLite checks foreign keys only with PRAGMA foreign_keys=ON on each connection.
    with pytest.raises(IntegrityError):
        async with database.session() as session, session.begin():
            session.add(
                Account(
                    username="orphan",
                    display_name="x",
                    role=Role.MEMBER,
                    site_id=424242,
                    password_hash="x",
                )
            )
    with pytest.raises(IntegrityError):
        async with database.session() as session, session.begin():
            await session.execute(
                sa.text(
                    "INSERT INTO accounts (username, display_name, role, password_hash) "
                    "VALUES ('UPPER', 'x', 'member', 'x')"
                )
            )
    async with database.session() as session:
        assert (await session.execute(sa.select(sa.func.count(Account.id)))).scalar_one() == 0


async def test_a_newer_schema_is_a_store_error(database: Database) -> None:
    async with database.engine.begin() as conn:
        await conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="9999"):
        await database.migrate()
