"""Session-wide test set-up: media stays on loopback, logs stay readable."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import SHUTDOWN_TIMEOUT, STATS, make_app
from server.config import Config
from server.sfu.ice import restrict_host_addresses
from server.sfu.stats import SfuStats
from tests.support.peer import Peer

# aioice leaves 127.0.0.1 out and offers every other interface: in tests the node and the
# test peers offer 127.0.0.1 only, so no media leaves loopback.
restrict_host_addresses(["127.0.0.1"])

for noisy in ("aioice", "aiortc", "aiohttp.access", "engineio", "socketio"):
    logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class Node:
    """A running node: its app (for looking inside) and its URL."""

    config: Config
    app: web.Application
    server: TestServer

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

    async def restart(self) -> None:
        """Stop the node (every connection drops) and start a fresh one on the same port."""
        port = self.server.port
        await self.server.close()
        fresh = await Node.start(self.config, port)
        self.app, self.server = fresh.app, fresh.server


@pytest.fixture
async def node(tmp_path) -> AsyncIterator[Node]:  # type: ignore[no-untyped-def]
    config = Config(host="127.0.0.1", port=0, data_dir=tmp_path, ice_host_addresses=("127.0.0.1",))
    running = await Node.start(config)
    try:
        yield running
    finally:
        await running.server.close()


@pytest.fixture
async def peers(node: Node) -> AsyncIterator[Callable[[str], Peer]]:
    """Make connected peers; every one is closed at the end of the test."""
    made: list[Peer] = []

    async def make(name: str) -> Peer:
        peer = Peer(node.url, name)
        made.append(peer)
        await peer.connect()
        return peer

    yield make  # type: ignore[misc]
    for peer in made:
        await peer.close()
