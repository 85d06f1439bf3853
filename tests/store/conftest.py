"""Store tests run against both databases: SQLite under tmp_path, and a real PostgreSQL.

PostgreSQL is the server named by TEST_DATABASE_URL (a user that may CREATE DATABASE), or else a
throwaway cluster this session starts from Debian's binaries on a free 127.0.0.1 port. Either
way the session works in its own new database, dropped at the end; each test starts from an
empty schema. Without either, the PostgreSQL tests fail: they are never skipped.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import make_url

from server.config import Config
from server.store.db import Database, open_database

INITDB_GLOB = "/usr/lib/postgresql/*/bin/initdb"
CLUSTER_USER = "giaoban"


def _run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    # Session fixtures are sync; their own loop in a thread stays out of pytest-asyncio's way.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def _plain_url(url: str) -> str:
    """postgresql://… as asyncpg takes it (TEST_DATABASE_URL may name a SQLAlchemy driver)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", url)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _initdb_version(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


class Cluster:
    """A PostgreSQL cluster in a temporary directory, started with Debian's initdb/pg_ctl."""

    def __init__(self) -> None:
        found = sorted(glob.glob(INITDB_GLOB), key=_initdb_version)
        if not found:
            pytest.fail(
                "PostgreSQL store tests need a server: set TEST_DATABASE_URL="
                "postgresql://user:password@host:port/database (a user that may CREATE DATABASE), "
                f"or install Debian's postgresql package (no {INITDB_GLOB}); "
                "./giaoban.sh test installs it",
                pytrace=False,
            )
        self.bindir = Path(found[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="giaoban-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = _free_port()
        # initdb refuses to run as root: the cluster belongs to Debian's postgres user then.
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://{CLUSTER_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self.prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(
                f"{' '.join(args[:1])} failed ({result.returncode}):\n{result.stdout}"
                f"{result.stderr}\n{log}",
                pytrace=False,
            )

    def start(self) -> None:
        self._run(
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            CLUSTER_USER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        # -w: pg_ctl returns once the server accepts connections.
        self._run(
            str(self.bindir / "pg_ctl"),
            "--pgdata",
            str(self.data),
            "--log",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )

    def stop(self) -> None:
        try:
            subprocess.run(
                [
                    *self.prefix,
                    str(self.bindir / "pg_ctl"),
                    "--pgdata",
                    str(self.data),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """postgresql://… of a new, empty database that lives as long as the test session."""
    given = os.environ.get("TEST_DATABASE_URL", "").strip()
    cluster = None
    if given:
        server_url = _plain_url(given)
    else:
        cluster = Cluster()
        try:
            cluster.start()
        except BaseException:
            cluster.stop()
            raise
        server_url = cluster.url
    name = f"giaoban_test_{secrets.token_hex(6)}"
    try:
        _run_async(
            _execute(server_url, f"CREATE DATABASE {name} ENCODING 'UTF8' TEMPLATE template0")
        )
        try:
            yield _with_database(server_url, name)
        finally:
            _run_async(_execute(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    finally:
        if cluster is not None:
            cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    """A node configuration whose database is empty: SQLite under tmp_path, or PostgreSQL."""
    if request.param == "sqlite":
        return Config(data_dir=tmp_path)
    url = request.getfixturevalue("postgresql_url")
    await _execute(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    return Config(data_dir=tmp_path, database_url=url)


@pytest.fixture
async def database(db_config: Config) -> AsyncIterator[Database]:
    """The test's database, migrated to the newest schema."""
    opened = await open_database(db_config)
    try:
        yield opened
    finally:
        await opened.close()
