"""Several nodes as real processes, one shared data directory (SQLite) and one private Redis.

The Redis here is always this module's own redis-server (never REDIS_URL): the tests kill and
restart it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select

from server.accounts import create_account
from server.auth import start_login_session
from server.config import Config
from server.invitations import mint_invitation
from server.room_records import create_room
from server.secret_key import load_secret_key
from server.store.db import open_database
from server.store.models import Account, Site, SiteLevel
from tests.support.node_process import NodeProcess
from tests.support.redis_server import RedisServer, unique_prefix

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PROVINCE, COMMUNE_A, COMMUNE_B = "01", "01-001", "01-002"


@pytest.fixture
def cluster_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@dataclass
class Cluster:
    """What the test set up: the data dir, the nodes, an admin's session cookie, tokens."""

    data_dir: Path
    redis: RedisServer
    prefix: str
    admin_cookie: str
    key: bytes
    nodes: dict[str, NodeProcess] = field(default_factory=dict)

    def start(self, node_id: str, site: str) -> NodeProcess:
        node = NodeProcess(node_id, site, self.data_dir, self.redis.url, self.prefix)
        self.nodes[node_id] = node
        node.start()
        return node

    def invite(self, room: str, site: str, role: str = "member") -> str:
        return mint_invitation(
            self.key,
            room=room,
            role=role,
            site=site,
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        )


@pytest.fixture
async def cluster(tmp_path: Path, cluster_redis: RedisServer) -> AsyncIterator[Cluster]:
    data_dir = tmp_path / "data"
    config = Config(data_dir=data_dir)
    database = await open_database(config)
    try:
        async with database.session() as db, db.begin():
            province = Site(code=PROVINCE, name="Tỉnh Thử", level=SiteLevel.PROVINCE)
            db.add_all(
                [
                    province,
                    Site(code=COMMUNE_A, name="Xã Một", level=SiteLevel.COMMUNE, parent=province),
                    Site(code=COMMUNE_B, name="Xã Hai", level=SiteLevel.COMMUNE, parent=province),
                ]
            )
        async with database.session() as db, db.begin():
            admin = await create_account(
                db, "quan-tri", "mat-khau-quan-tri", role="admin", hasher=CHEAP
            )
            for slug in ("hop-a", "hop-b"):
                await create_room(
                    db,
                    admin,
                    title=f"Họp {slug}",
                    starts_at=datetime.now(UTC),
                    duration_minutes=60,
                    mode="discussion",
                    lobby=False,
                    site_codes=[PROVINCE],
                    slug=slug,
                )
            admin = await db.scalar(select(Account).where(Account.username == "quan-tri"))
            cookie = await start_login_session(db, admin, user_agent="test", address="127.0.0.1")
    finally:
        await database.close()
    made = Cluster(
        data_dir, cluster_redis, unique_prefix("cluster"), cookie, load_secret_key(config)
    )
    try:
        yield made
    finally:
        for node in made.nodes.values():
            node.stop()


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    """A fresh data directory whose store has a host account and the room "ghi-hinh"."""
    data = tmp_path / "data"
    database = await open_database(Config(data_dir=data))
    try:
        async with database.session() as db, db.begin():
            host = await create_account(
                db, "chu-tri", "mat-khau-chu-tri", role="host", hasher=CHEAP
            )
            await create_room(
                db,
                host,
                title="Ghi hình",
                starts_at=datetime.now(UTC),
                duration_minutes=60,
                mode="discussion",
                lobby=False,
                slug="ghi-hinh",
            )
    finally:
        await database.close()
    return data
