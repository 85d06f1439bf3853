"""Session-wide test set-up: media stays on loopback, logs stay readable."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from argon2 import PasswordHasher

from recording.jobs import RedisJobQueue
from server.accounts import create_account, find_account
from server.app import DATABASE, SECRET_KEY, SHUTDOWN_TIMEOUT, STATS, make_app
from server.config import Config
from server.errors import NotFound
from server.invitations import mint_invitation
from server.room_records import create_room, get_room
from server.sfu.ice import restrict_host_addresses
from server.sfu.stats import SfuStats
from tests.support.peer import Peer
from tests.support.redis_server import (
    RedisServer,
    delete_prefix,
    free_port,
    redis_url_from_env,
    unique_prefix,
)

# aioice leaves 127.0.0.1 out and offers every other interface: in tests the node and the
# test peers offer 127.0.0.1 only, so no media leaves loopback.
restrict_host_addresses(["127.0.0.1"])

for noisy in ("aioice", "aiortc", "aiohttp.access", "engineio", "socketio"):
    logging.getLogger(noisy).setLevel(logging.WARNING)

# Cheap Argon2 parameters for accounts the tests make (the real ones cost 64 MiB each).
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TEST_PASSWORD = "mật-khẩu-thử-nghiệm"


@dataclass
class Node:
    """A running node: its app (for looking inside) and its URL."""

    config: Config
    app: web.Application
    server: TestServer
    rooms_made: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def stats(self) -> SfuStats:
        return self.app[STATS]

    @classmethod
    async def start(cls, config: Config, port: int = 0) -> Node:
        app = make_app(config)
        server = TestServer(app, host="127.0.0.1", port=port)
        await server.start_server(shutdown_timeout=SHUTDOWN_TIMEOUT)
        return cls(config, app, server)

    async def account(self, username: str, role: str = "member", *, site: str | None = None) -> int:
        """The id of account `username` (password TEST_PASSWORD), made on first use."""
        async with self.app[DATABASE].session() as db, db.begin():
            found = await find_account(db, username)
            if found is not None:
                return found.id
            made = await create_account(
                db, username, TEST_PASSWORD, role=role, site_code=site, hasher=FAST_HASHER
            )
            return made.id

    async def schedule(
        self, room: str, *, lobby: bool = False, mode: str = "discussion", host: str = "chu-tri"
    ) -> None:
        """Schedule `room` (starting now, hosted by account `host`) unless it exists."""
        if room in self.rooms_made:
            return
        await self.account(host, "host")
        async with self.app[DATABASE].session() as db, db.begin():
            try:
                await get_room(db, room)
            except NotFound:
                creator = await find_account(db, host)
                assert creator is not None
                await create_room(
                    db,
                    creator,
                    title=f"Phòng {room}",
                    starts_at=datetime.now(UTC),
                    duration_minutes=60,
                    mode=mode,
                    lobby=lobby,
                    slug=room,
                )
        self.rooms_made.add(room)

    async def invite(self, room: str, role: str = "member", **schedule: object) -> str:
        """An invitation token to `room` with `role`, scheduling the room first if needed."""
        await self.schedule(room, **schedule)  # type: ignore[arg-type]
        return mint_invitation(
            self.app[SECRET_KEY],
            room=room,
            role=role,
            expires_at=datetime.now(UTC) + timedelta(hours=2),
        )

    def invitation_url(self, room: str, token: str) -> str:
        return f"{self.url}/r/{room}?token={token}"

    async def restart(self) -> None:
        """Stop the node (every connection drops) and start a fresh one on the same port."""
        port = self.server.port
        await self.server.close()
        fresh = await Node.start(self.config, port)
        self.app, self.server = fresh.app, fresh.server


async def running_node(config: Config) -> AsyncIterator[Node]:
    """A node of `config` on 127.0.0.1 (its port, or a free one) for the length of a fixture."""
    running = await Node.start(config, config.port)
    try:
        yield running
    finally:
        await running.server.close()


def node_config(data_dir: Path, **settings: Any) -> Config:
    """A node's config for tests: loopback only, a free port, `data_dir`, `settings`."""
    settings = {"port": 0, "ice_host_addresses": ("127.0.0.1",), **settings}
    return Config(host="127.0.0.1", data_dir=data_dir, **settings)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for running in running_node(node_config(tmp_path)):
        yield running


@pytest.fixture
async def peers(node: Node) -> AsyncIterator[Callable[[str], Peer]]:
    """Make connected peers; every one is closed at the end of the test."""
    made: list[Peer] = []

    async def make(name: str) -> Peer:
        peer = Peer(node.url, name, invite=node.invite)
        made.append(peer)
        await peer.connect()
        return peer

    yield make  # type: ignore[misc]
    for peer in made:
        await peer.close()


# --- a real Redis -------------------------------------------------------------------------------
# REDIS_URL when set, else a private redis-server started once for the session. With REDIS_URL
# the server is shared: every test works under its own key prefix and deletes only its own keys
# (SCAN MATCH prefix* + DEL), never FLUSHALL.


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """The session's private redis-server, or None when REDIS_URL names a shared one."""
    if redis_url_from_env() is not None:
        yield None
        return
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    """redis://… of the Redis these tests use (only under their own key prefixes)."""
    if redis_server is not None:
        return redis_server.url
    url = redis_url_from_env()
    assert url is not None
    return url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted at the end."""
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        await delete_prefix(redis_url, prefix)


# --- a node whose recordings `giaoban record` workers make ------------------------------------


@pytest.fixture
async def workers_node(tmp_path: Path, redis_url: str, redis_prefix: str) -> AsyncIterator[Node]:
    """A node with GIAOBAN_RECORDER=workers on the test Redis (under the test's own prefix),
    on a port known in advance: the jobs it puts name its URL for the workers."""
    port = free_port()
    config = node_config(
        tmp_path,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        recorder="workers",
        port=port,
        public_url=f"http://127.0.0.1:{port}",
    )
    async for running in running_node(config):
        yield running


@pytest.fixture
async def worker_queue(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisJobQueue]:
    """The job queue as a worker sees it, with one worker announced alive (this test)."""
    client = aioredis.from_url(redis_url)
    queue = RedisJobQueue(client, redis_prefix, dead_after=30)
    await queue.announce("w-test", {"recordings": "", "capacity": "1"})
    try:
        yield queue
    finally:
        await queue.close()
        await client.aclose()
