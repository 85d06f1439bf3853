"""Two nodes, one Redis: shared presence, room homes, a SIGKILLed node, a restarted Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from server.auth import SESSION_COOKIE
from tests.cluster.conftest import COMMUNE_A, COMMUNE_B, PROVINCE, Cluster
from tests.support.node_process import NodeProcess
from tests.support.peer import Peer


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> float:
    """Poll `check` until truthy; the seconds it took. AssertionError naming `what` on timeout."""
    started = time.monotonic()
    last: Any = None
    while time.monotonic() - started < timeout:
        try:
            last = await check()
        except (aiohttp.ClientError, OSError) as exc:
            last = exc
        if last:
            return time.monotonic() - started
        await asyncio.sleep(0.2)  # polling interval, not a synchronisation
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


async def dashboard(cluster: Cluster, node: NodeProcess) -> dict[str, Any]:
    headers = {"Cookie": f"{SESSION_COOKIE}={cluster.admin_cookie}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{node.url}/dashboard/data.json") as response,
    ):
        assert response.status == 200, await response.text()
        return await response.json()


def connected(data: dict[str, Any]) -> dict[str, int]:
    return {site["code"]: site["connected"] for site in data["sites"]}


def alive(data: dict[str, Any]) -> dict[str, bool]:
    return {node["id"]: node["alive"] for node in data["nodes"]}


async def joined(node: NodeProcess, room: str, token: str, name: str) -> Peer:
    peer = Peer(node.url, name)
    await peer.connect()
    await peer.join(room, token)
    return peer


async def test_presence_is_shared_homes_redirect_and_a_killed_node_heals(cluster) -> None:  # type: ignore[no-untyped-def]
    a = cluster.start("node-tinh", PROVINCE)
    b = cluster.start("node-xa", COMMUNE_B)
    peers: list[Peer] = []
    try:
        peers.append(await joined(a, "hop-a", cluster.invite("hop-a", COMMUNE_A), "Xã Một"))
        peers.append(await joined(b, "hop-b", cluster.invite("hop-b", COMMUNE_B), "Xã Hai"))

        # Both nodes show the same truth: each participant under its site, both nodes alive.
        for node in (a, b):

            async def whole(node: NodeProcess = node) -> bool:
                data = await dashboard(cluster, node)
                seen = connected(data)
                return (
                    seen.get(COMMUNE_A) == 1
                    and seen.get(COMMUNE_B) == 1
                    and alive(data) == {"node-tinh": True, "node-xa": True}
                )

            await until(whole, 10, f"the whole cluster seen from {node.node_id}")

        # hop-a's media lives on node-tinh: its page on node-xa sends the browser there, and a
        # join through node-xa is answered with where to go.
        token = cluster.invite("hop-a", COMMUNE_B)
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{b.url}/r/hop-a?token={token}", allow_redirects=False) as response,
        ):
            assert response.status == 307
            assert response.headers["Location"] == f"{a.url}/r/hop-a?token={token}"
        late = Peer(b.url, "Xã Hai (muộn)")
        peers.append(late)
        await late.connect()
        ack = await late.request("join", {"room": "hop-a", "name": "Xã Hai", "token": token})
        assert ack["error"]["code"] == "wrong_node"
        assert ack["error"]["url"] == f"{a.url}/r/hop-a"

        # SIGKILL node-tinh: within 15 s its participant is gone and its site shows offline.
        a.kill()

        async def healed() -> bool:
            data = await dashboard(cluster, b)
            province = next(s for s in data["sites"] if s["code"] == PROVINCE)
            return (
                connected(data).get(COMMUNE_A) == 0
                and alive(data).get("node-tinh") is False
                and province["node"] == "offline"
            )

        took = await until(healed, 15, "node-tinh's participants gone and its site offline")
        assert took < 15
        # The dead node's room is taken over by the node people now reach.
        result = await late.join("hop-a", token)
        assert result["room"] == "hop-a"
    finally:
        for peer in peers:
            await peer.close()


async def test_nodes_re_register_after_redis_restarts_and_meetings_go_on(cluster) -> None:  # type: ignore[no-untyped-def]
    a = cluster.start("node-tinh", PROVINCE)
    b = cluster.start("node-xa", COMMUNE_B)
    peer = await joined(b, "hop-b", cluster.invite("hop-b", COMMUNE_B), "Xã Hai")
    try:

        async def ready(node: NodeProcess, expected: int) -> bool:
            async with aiohttp.ClientSession() as http, http.get(f"{node.url}/readyz") as r:
                return r.status == expected

        await until(lambda: ready(b, 200), 10, "node-xa ready")
        cluster.redis.stop(kill=True)
        await until(lambda: ready(b, 503), 10, "node-xa not ready without Redis")
        # The meeting on node-xa goes on without Redis.
        assert (await peer._ok("raise_hand", {}))["queue"][0]["name"] == "Xã Hai"

        cluster.redis.start()  # empty: it kept nothing

        async def whole_again() -> bool:
            if not (await ready(a, 200) and await ready(b, 200)):
                return False
            data = await dashboard(cluster, a)
            return connected(data).get(COMMUNE_B) == 1 and alive(data) == {
                "node-tinh": True,
                "node-xa": True,
            }

        took = await until(whole_again, 30, "nodes and presence back after the Redis restart")
        assert took < 30
    finally:
        await peer.close()
