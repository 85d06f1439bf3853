"""Session-wide test set-up: media stays on loopback, logs stay readable."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from server.app import STATS, make_app
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
    app: web.Application
    url: str

    @property
    def stats(self) -> SfuStats:
        return self.app[STATS]


@pytest.fixture
async def node(tmp_path) -> AsyncIterator[Node]:  # type: ignore[no-untyped-def]
    config = Config(host="127.0.0.1", port=0, data_dir=tmp_path, ice_host_addresses=("127.0.0.1",))
    app = make_app(config)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield Node(app, str(server.make_url("")).rstrip("/"))
    finally:
        await server.close()


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
