"""One contract for both presence implementations, plus what only Redis must prove.

Every contract test runs against LocalPresence and against RedisPresence on a real Redis
(each Redis test under its own key prefix). Several nodes are several RedisPresence clients on
one prefix, or the one LocalPresence (in process there is only one node's view).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from server.presence import (
    LocalPresence,
    NodeInfo,
    NodeLoad,
    ParticipantPresence,
    Presence,
    PresenceUnavailable,
    RedisPresence,
    make_presence,
    record_ttl,
)
from tests.support.redis_server import (
    RedisServer,
    RoundTrips,
    counting_connection,
    delete_prefix,
    free_port,
    unique_prefix,
)
from tests.support.wait import eventually

# Small TTLs for the expiry tests: a participant lives 1 s without heartbeat, a node is dead
# after 1.5 s of silence.
SHORT = {"participant_ttl": 1.0, "dead_after": 1.5}
LOAD = NodeLoad(cpu_percent=12.5, participants=3, streams=6)

Factory = Callable[..., Awaitable[list[Presence]]]


def node(node_id: str, site: str | None = "tinh-01") -> NodeInfo:
    return NodeInfo(node_id=node_id, url=f"https://{node_id}.example.vn", site=site, capacity=200)


def person(
    pid: str,
    *,
    room: str = "giao-ban",
    site: str | None = "xa-001",
    node_id: str = "n1",
    state: str = "connected",
    since: float = 1000.0,
) -> ParticipantPresence:
    return ParticipantPresence(
        room=room,
        participant_id=pid,
        name=f"Người {pid}",
        site=site,
        node_id=node_id,
        state=state,
        since=since,
    )


def ids(found: list[ParticipantPresence]) -> set[str]:
    return {p.participant_id for p in found}


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """`await make(n, **ttls)`: n views of one presence (n clients on one prefix for Redis)."""
    made: list[Presence] = []
    url = prefix = ""
    if request.param == "redis":
        # redis_url is a sync fixture: it may be asked for from here (an async one may not).
        url = request.getfixturevalue("redis_url")
        prefix = unique_prefix()

    async def factory(n: int = 1, **kw: Any) -> list[Presence]:
        if request.param == "local":
            local = LocalPresence(**kw)
            await local.start()
            made.append(local)
            return [local] * n
        views: list[Presence] = []
        for _ in range(n):
            view = RedisPresence(url, prefix=prefix, **kw)
            await view.start()
            made.append(view)
            views.append(view)
        return views

    try:
        yield factory
    finally:
        for presence in made:
            await presence.close()
        if prefix:
            await delete_prefix(url, prefix)


async def one(make: Factory, **kw: Any) -> Presence:
    return (await make(1, **kw))[0]


# --------------------------------------------------------------------------- nodes


async def test_register_and_list_nodes(make: Factory) -> None:
    a, b = await make(2)
    await a.ping()
    before = time.time()
    await a.register_node(node("n1"), LOAD)
    await b.register_node(node("n2", site=None), NodeLoad(0.0, 0, 0))
    records = {r.info.node_id: r for r in await a.nodes()}
    assert set(records) == {"n1", "n2"}
    assert records["n1"].info == node("n1")
    assert records["n1"].load == LOAD
    assert records["n1"].alive and records["n2"].alive
    assert records["n2"].info.site is None
    assert records["n1"].seen_at >= before - 1
    # A heartbeat updates the load.
    await a.heartbeat("n1", NodeLoad(50.0, 7, 14), [])
    records = {r.info.node_id: r for r in await b.nodes()}
    assert records["n1"].load == NodeLoad(50.0, 7, 14)


async def test_node_dead_after_silence_and_alive_again(make: Factory) -> None:
    a, b = await make(2, **SHORT)
    await a.register_node(node("n1"), LOAD)
    await b.register_node(node("n2"), LOAD)
    started = time.monotonic()

    async def n1_dead() -> bool:
        await b.heartbeat("n2", LOAD, [])  # n2 keeps talking, n1 is silent
        alive = {r.info.node_id: r.alive for r in await b.nodes()}
        return alive == {"n1": False, "n2": True}

    await eventually(n1_dead, 5.0, "n1 dead and n2 alive")
    assert time.monotonic() - started >= 1.5 * 0.8  # not dead before dead_after
    await a.heartbeat("n1", LOAD, [])
    assert all(r.alive for r in await b.nodes())


# --------------------------------------------------------------------------- participants


async def test_participants_by_room_site_and_node(make: Factory) -> None:
    a, b = await make(2)
    await a.register_node(node("n1"), LOAD)
    await b.register_node(node("n2"), LOAD)
    await a.set_participant(person("p1", room="r1", site="xa-001", node_id="n1"))
    await a.set_participant(person("p2", room="r1", site="xa-002", node_id="n1"))
    await b.set_participant(person("p3", room="r2", site="xa-001", node_id="n2"))
    await b.set_participant(person("p4", room="r2", site=None, node_id="n2"))

    assert ids(await b.participants()) == {"p1", "p2", "p3", "p4"}
    assert ids(await b.participants(room="r1")) == {"p1", "p2"}
    assert ids(await b.participants(site="xa-001")) == {"p1", "p3"}
    assert ids(await a.participants(node_id="n2")) == {"p3", "p4"}
    assert ids(await a.participants(room="r2", site="xa-001")) == {"p3"}
    assert ids(await a.participants(room="r1", node_id="n2")) == set()
    assert await a.participants(room="nowhere") == []
    assert (await a.participants(room="r1", site="xa-001"))[0] == person(
        "p1", room="r1", site="xa-001", node_id="n1"
    )
    assert [p.participant_id for p in await a.participants(room="r2")] == ["p3", "p4"]


async def test_participant_states_and_moves(make: Factory) -> None:
    a, b = await make(2)
    await a.set_participant(person("p1", state="lobby"))
    assert [p.state for p in await b.participants(room="giao-ban")] == ["lobby"]
    await a.set_participant(person("p1", state="connected"))
    await a.set_participant(person("p1", state="reconnecting"))
    assert [p.state for p in await b.participants(room="giao-ban")] == ["reconnecting"]
    # Reconnected through another node and now counted under another site.
    await b.set_participant(person("p1", node_id="n2", site="xa-009"))
    assert ids(await a.participants(node_id="n1")) == set()
    assert ids(await a.participants(site="xa-001")) == set()
    assert ids(await a.participants(node_id="n2", site="xa-009")) == {"p1"}
    # "left" removes; so does remove_participant; both are idempotent.
    await a.set_participant(person("p1", node_id="n2", site="xa-009", state="left"))
    assert await b.participants() == []
    await a.set_participant(person("p2"))
    await a.remove_participant("giao-ban", "p2")
    await a.remove_participant("giao-ban", "p2")
    assert await b.participants(room="giao-ban") == []
    with pytest.raises(ValueError):
        await a.set_participant(person("p3", state="joining-ish"))


async def test_odd_ids_stay_apart(make: Factory) -> None:
    (a,) = await make(1)
    await a.set_participant(person("b:c", room="a"))
    await a.set_participant(person("c", room="a:b"))
    await a.set_participant(person('ông "x"', room="phòng họp *[1]"))
    assert ids(await a.participants(room="a")) == {"b:c"}
    assert ids(await a.participants(room="a:b")) == {"c"}
    assert ids(await a.participants(room="phòng họp *[1]")) == {'ông "x"'}


async def test_heartbeat_keeps_participants(make: Factory) -> None:
    a, b = await make(2, **SHORT)
    await a.register_node(node("n1"), LOAD)
    people = [person(f"p{i}", room=f"r{i % 3}", site=f"xa-{i % 4}") for i in range(12)]
    for p in people:
        await a.set_participant(p)
    # Three TTLs long, heartbeating every 0.3 s (the pace, not a synchronisation): always there.
    until = time.monotonic() + 3.0
    while time.monotonic() < until:
        await a.heartbeat("n1", LOAD, people)
        assert ids(await b.participants()) == ids(people)
        await asyncio.sleep(0.3)
    assert ids(await b.participants(node_id="n1")) == ids(people)
    assert all(r.alive for r in await b.nodes())


async def test_participants_gone_after_ttl_without_heartbeat(make: Factory) -> None:
    a, b = await make(2, **SHORT)
    await a.register_node(node("n1"), LOAD)
    people = [person("p1", room="r1"), person("p2", room="r2", site="xa-002")]
    await a.heartbeat("n1", LOAD, people)  # a heartbeat also creates them
    assert ids(await b.participants()) == {"p1", "p2"}
    started = time.monotonic()
    # Node n1 is "SIGKILLed": nobody deletes anything, the TTL does.
    await eventually(
        lambda: _all_empty(b), 5.0, "every participant of the silent node to disappear"
    )
    assert time.monotonic() - started >= 1.0 * 0.8
    # Each index was pruned on read: the views stay empty and correct.
    assert await b.participants(room="r1") == []
    assert await b.participants(site="xa-002") == []
    assert await b.participants(node_id="n1") == []


async def _all_empty(p: Presence) -> bool:
    return not any(
        [
            await p.participants(),
            await p.participants(room="r1"),
            await p.participants(site="xa-002"),
            await p.participants(node_id="n1"),
        ]
    )


async def test_set_participant_restarts_its_ttl(make: Factory) -> None:
    (a,) = await make(1, **SHORT)
    await a.set_participant(person("p1", state="lobby"))
    await eventually(lambda: _gone(a, "p1"), 5.0, "p1 to expire")
    await a.set_participant(person("p1", state="lobby"))
    assert ids(await a.participants()) == {"p1"}


async def _gone(p: Presence, pid: str) -> bool:
    return pid not in ids(await p.participants())


# --------------------------------------------------------------------------- home rooms


async def test_claim_home_race_has_one_winner(make: Factory) -> None:
    views = await make(10)
    for i, view in enumerate(views):
        await view.register_node(node(f"n{i}"), LOAD)
    winners = await asyncio.gather(
        *(view.claim_home("giao-ban", f"n{i}") for i, view in enumerate(views))
    )
    assert len(set(winners)) == 1, winners
    (winner,) = set(winners)
    assert winner in {f"n{i}" for i in range(10)}
    for view in views:
        assert await view.home_of("giao-ban") == winner
    # Later claims, by anyone, get the same live holder.
    again = await asyncio.gather(
        *(view.claim_home("giao-ban", f"n{i}") for i, view in enumerate(views))
    )
    assert set(again) == {winner}
    assert await views[0].home_of("other-room") is None


async def test_take_over_after_the_holder_dies(make: Factory) -> None:
    a, b = await make(2, **SHORT)
    await a.register_node(node("n1"), LOAD)
    await b.register_node(node("n2"), LOAD)
    assert await a.claim_home("giao-ban", "n1") == "n1"
    assert await b.claim_home("giao-ban", "n2") == "n1"

    async def holder_dead() -> bool:
        await b.heartbeat("n2", LOAD, [])
        return await b.home_of("giao-ban") is None

    await eventually(holder_dead, 5.0, "n1's home claim to lapse with n1")
    assert await b.claim_home("giao-ban", "n2") == "n2"
    assert await a.home_of("giao-ban") == "n2"
    # n1 comes back: it is alive again but no longer home.
    await a.heartbeat("n1", LOAD, [])
    assert await a.claim_home("giao-ban", "n1") == "n2"
    await a.release_home("giao-ban", "n1")  # not the holder: nothing happens
    assert await b.home_of("giao-ban") == "n2"


async def test_release_home(make: Factory) -> None:
    a, b = await make(2)
    await a.register_node(node("n1"), LOAD)
    await b.register_node(node("n2"), LOAD)
    assert await a.claim_home("r1", "n1") == "n1"
    await b.release_home("r1", "n2")
    assert await b.home_of("r1") == "n1"
    await a.release_home("r1", "n1")
    assert await b.home_of("r1") is None
    assert await b.claim_home("r1", "n2") == "n2"
    await a.release_home("never-claimed", "n1")


# --------------------------------------------------------------------------- clean stop


async def test_forget_node(make: Factory) -> None:
    a, b = await make(2)
    await a.register_node(node("n1"), LOAD)
    await b.register_node(node("n2"), LOAD)
    await a.heartbeat("n1", LOAD, [person("p1", node_id="n1"), person("p2", node_id="n1")])
    await b.set_participant(person("p3", node_id="n2"))
    assert await a.claim_home("r1", "n1") == "n1"
    assert await a.claim_home("r2", "n1") == "n1"
    assert await b.claim_home("r3", "n2") == "n2"

    await a.forget_node("n1")
    assert [r.info.node_id for r in await b.nodes()] == ["n2"]
    assert ids(await b.participants()) == {"p3"}
    assert await b.participants(node_id="n1") == []
    assert await b.home_of("r1") is None and await b.home_of("r2") is None
    assert await b.home_of("r3") == "n2"
    assert await b.claim_home("r1", "n2") == "n2"
    await a.forget_node("n1")  # idempotent


async def test_make_presence_chooses_in_one_place(redis_url: str) -> None:
    assert isinstance(make_presence(None), LocalPresence)
    assert isinstance(make_presence("", prefix="x:", participant_ttl=2.0), LocalPresence)
    chosen = make_presence(redis_url, prefix="unused:", dead_after=3.0)
    try:
        assert isinstance(chosen, RedisPresence)
        assert chosen.dead_after == 3.0 and chosen.prefix == "unused:"
    finally:
        await chosen.close()


async def test_local_presence_follows_its_clock() -> None:
    now = [1000.0]
    local = LocalPresence(participant_ttl=10.0, dead_after=15.0, clock=lambda: now[0])
    await local.register_node(node("n1"), LOAD)
    await local.set_participant(person("p1"))
    assert await local.claim_home("r1", "n1") == "n1"
    now[0] += 9.9
    assert ids(await local.participants()) == {"p1"}
    now[0] += 0.2
    assert await local.participants() == []
    assert [r.alive for r in await local.nodes()] == [True]
    now[0] += 5.0
    assert [r.alive for r in await local.nodes()] == [False]
    assert await local.home_of("r1") is None
    now[0] += record_ttl(15.0)
    assert await local.nodes() == []


# --------------------------------------------------------------------------- Redis only


@pytest.fixture
async def redis_presence(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisPresence]:
    presence = RedisPresence(redis_url, prefix=redis_prefix, **SHORT)
    await presence.start()
    try:
        yield presence
    finally:
        await presence.close()


async def test_heartbeat_is_one_round_trip(redis_presence: RedisPresence) -> None:
    trips = RoundTrips()
    redis_presence.client.connection_pool.connection_class = counting_connection(trips)
    await redis_presence.client.connection_pool.disconnect()
    await redis_presence.register_node(node("n1"), LOAD)
    await redis_presence.claim_home("r1", "n1")
    people = [person(f"p{i}", room=f"r{i % 5}", site=f"xa-{i % 7}") for i in range(200)]
    await redis_presence.heartbeat("n1", LOAD, people)  # warm-up: the connection exists now
    before = trips.count
    for _ in range(5):
        await redis_presence.heartbeat("n1", LOAD, people)
    assert trips.count - before == 5, f"{trips.count - before} round trips for 5 heartbeats"
    assert len(await redis_presence.participants()) == 200


async def test_every_key_expires(redis_presence: RedisPresence, redis_url: str) -> None:
    # A SIGKILLed node deletes nothing: every key it wrote must go by itself.
    await redis_presence.register_node(node("n1"), LOAD)
    await redis_presence.heartbeat("n1", LOAD, [person("p1"), person("p2", site=None)])
    await redis_presence.set_participant(person("p3", room="r9"))
    await redis_presence.claim_home("r1", "n1")
    client = redis_presence.client
    keys = [key async for key in client.scan_iter(match=redis_presence.prefix + "*")]
    assert len(keys) >= 10
    limit = record_ttl(redis_presence.dead_after) * 1000
    for key in keys:
        ttl = await client.pttl(key)
        assert 0 < ttl <= limit, f"{key} has PTTL {ttl}"
        assert await client.type(key) in ("string", "hash", "set")


async def test_ping_fails_fast_on_a_closed_port() -> None:
    presence = RedisPresence(f"redis://127.0.0.1:{free_port()}/0", prefix="unused:")
    started = time.monotonic()
    try:
        with pytest.raises(PresenceUnavailable) as caught:
            await presence.ping()
        with pytest.raises(PresenceUnavailable):
            await presence.heartbeat("n1", LOAD, [person("p1")])
        with pytest.raises(PresenceUnavailable):
            await presence.participants()
    finally:
        await presence.close()
    assert time.monotonic() - started < 3.0
    assert caught.value.code == "presence_unavailable"
    assert caught.value.to_wire()["error"]["code"] == "presence_unavailable"


async def test_heartbeat_refills_a_restarted_redis() -> None:
    with RedisServer() as server:
        presence = RedisPresence(server.url, prefix="restart:")
        try:
            await presence.register_node(node("n1"), LOAD)
            await presence.claim_home("r1", "n1")
            people = [person("p1"), person("p2")]
            await presence.heartbeat("n1", LOAD, people)
            server.restart(kill=True)  # no persistence: Redis comes back empty
            assert await presence.nodes() == []
            await presence.heartbeat("n1", LOAD, people)
            assert [r.info for r in await presence.nodes()] == [node("n1")]
            assert ids(await presence.participants(room="giao-ban")) == {"p1", "p2"}
            # The home claim was lost with the data; the next claim restores it.
            assert await presence.claim_home("r1", "n1") == "n1"
        finally:
            await presence.close()
        await delete_prefix(server.url, "restart:")
