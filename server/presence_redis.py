"""Presence in Redis: the `Presence` seam shared between nodes (see server/presence.py).

Re-exported as `server.presence.RedisPresence`; `server.presence.make_presence` chooses it when
REDIS_URL is set. Written for one Redis server, not Redis Cluster: the claim script touches
keys it is not given.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from server.presence import (
    LEFT,
    NodeInfo,
    NodeLoad,
    NodeRecord,
    ParticipantPresence,
    PresenceUnavailable,
    check_state,
    participant_matches,
    participant_order,
    record_ttl,
)

log = logging.getLogger(__name__)

# Short socket timeouts: a node whose Redis is gone must find out in about a second (readiness,
# signaling acks), not hang on the OS's connect timeout.
CONNECT_TIMEOUT = 1.0
COMMAND_TIMEOUT = 2.0

# KEYS[1] home key. ARGV: node id, prefix, home TTL ms, room. Returns {winner, previous holder}.
# Liveness is the existence of the holder's `alive` key (PX dead_after, set by heartbeats), so a
# claim and a take-over are one atomic step: two nodes claiming at once get one winner.
_CLAIM_HOME = """
local holder = redis.call('GET', KEYS[1])
if holder and redis.call('EXISTS', ARGV[2] .. 'node:' .. holder .. ':alive') == 1 then
  return {holder, holder}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
if holder then redis.call('SREM', ARGV[2] .. 'node:' .. holder .. ':homes', ARGV[4]) end
local homes = ARGV[2] .. 'node:' .. ARGV[1] .. ':homes'
redis.call('SADD', homes, ARGV[4])
redis.call('PEXPIRE', homes, ARGV[3])
return {ARGV[1], holder or ''}
"""

# KEYS[1] home key, KEYS[2] the node's homes set. ARGV: node id, room. Compare-and-delete.
_RELEASE_HOME = """
redis.call('SREM', KEYS[2], ARGV[2])
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def _member(room: str, participant_id: str) -> str:
    # JSON keeps (room, id) unambiguous whatever characters either holds.
    return json.dumps([room, participant_id], ensure_ascii=False, separators=(",", ":"))


def _participant_json(p: ParticipantPresence) -> str:
    # One JSON string per participant (not a hash): the whole tree is then one MGET, whose
    # reply redis-py parses far faster than a thousand HGETALLs (bench/presence.py).
    return json.dumps(
        {
            "room": p.room,
            "participant_id": p.participant_id,
            "name": p.name,
            "site": p.site,
            "node_id": p.node_id,
            "state": p.state,
            "since": p.since,
        },
        ensure_ascii=False,
        separators=(",", ":"),
    )


def _participant_from(text: str | None) -> ParticipantPresence | None:
    if not text:
        return None
    try:
        d = json.loads(text)
        return ParticipantPresence(
            room=str(d["room"]),
            participant_id=str(d["participant_id"]),
            name=str(d["name"]),
            site=None if d["site"] is None else str(d["site"]),
            node_id=str(d["node_id"]),
            state=str(d["state"]),
            since=float(d["since"]),
        )
    except (ValueError, KeyError, TypeError):
        log.warning("presence: unreadable participant record %.200r ignored", text)
        return None


def _node_fields(load: NodeLoad, seen_at: float, info: NodeInfo | None) -> dict[str, str]:
    fields = {
        "cpu_percent": repr(load.cpu_percent),
        "participants": str(load.participants),
        "streams": str(load.streams),
        "seen_at": repr(seen_at),
    }
    if info is not None:
        fields |= {
            "node_id": info.node_id,
            "url": info.url,
            "site": info.site or "",
            "capacity": str(info.capacity),
        }
    return fields


def _node_from(fields: dict[str, str], alive: bool) -> NodeRecord | None:
    try:
        return NodeRecord(
            info=NodeInfo(
                node_id=fields["node_id"],
                url=fields["url"],
                site=fields["site"] or None,
                capacity=int(fields["capacity"]),
            ),
            load=NodeLoad(
                cpu_percent=float(fields["cpu_percent"]),
                participants=int(fields["participants"]),
                streams=int(fields["streams"]),
            ),
            seen_at=float(fields["seen_at"]),
            alive=alive,
        )
    except (KeyError, ValueError):
        return None  # a heartbeat without a registration: nothing to show


class RedisPresence:
    """Presence shared between nodes through one Redis server, every key under `prefix`.

    Keys (P = prefix): `P nodes` (set of ids), `P node:<id>` (hash), `P node:<id>:alive`
    (PX dead_after), `P node:<id>:homes` (set of rooms), `P home:<room>` (node id),
    `P participant:<["room","id"]>` (a JSON string, PX participant_ttl) and the index sets
    `P participants`, `P room:<room>`, `P site:<site>`, `P node:<id>:participants` whose
    members are pruned when a read finds their record expired. Everything has a TTL, so a
    SIGKILLed node leaves nothing behind for good. Values are strings and hashes, never pickles.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "giaoban:",
        participant_ttl: float = 10.0,
        dead_after: float = 15.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.participant_ttl = participant_ttl
        self.dead_after = dead_after
        self._participant_ms = max(1, round(participant_ttl * 1000))
        self._dead_ms = max(1, round(dead_after * 1000))
        self._record_ms = max(1, round(record_ttl(dead_after) * 1000))
        # One retry: after a Redis restart the pooled sockets are dead and the first command on
        # each would fail; a second attempt reconnects. No backoff keeps failures fast.
        self._redis: aioredis.Redis = aioredis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(NoBackoff(), 1),
        )
        self._claim = self._redis.register_script(_CLAIM_HOME)
        self._release = self._redis.register_script(_RELEASE_HOME)
        # What this process registered and claimed, so heartbeats can rewrite the node's record
        # (a restarted Redis comes back empty) and refresh its homes' TTLs in the same round trip.
        self._registered: dict[str, NodeInfo] = {}
        self._homes: dict[str, set[str]] = {}

    @property
    def client(self) -> aioredis.Redis:
        """The redis-py client (tests and the benchmark count its round trips)."""
        return self._redis

    # keys
    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _participant_key(self, room: str, participant_id: str) -> str:
        return self._k("participant", _member(room, participant_id))

    def _indexes(self, p: ParticipantPresence) -> list[str]:
        keys = [self._k("participants"), self._k("room", p.room)]
        keys.append(self._k("node", p.node_id, "participants"))
        if p.site is not None:
            keys.append(self._k("site", p.site))
        return keys

    @contextlib.contextmanager
    def _reachable(self, what: str) -> Iterator[None]:
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError) as exc:
            raise PresenceUnavailable(f"{what}: {exc}") from exc

    async def start(self) -> None:
        """The client connects lazily; call `ping` to check Redis is there."""

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    async def ping(self) -> None:
        """PING Redis; PresenceUnavailable within about a second when it cannot be reached."""
        with self._reachable(f"PING {self.prefix}"):
            await self._redis.ping()

    async def register_node(self, info: NodeInfo, load: NodeLoad) -> None:
        """Write the node's record and mark it alive."""
        self._registered[info.node_id] = info
        with self._reachable(f"register node {info.node_id}"):
            pipe = self._redis.pipeline(transaction=True)
            self._queue_node(pipe, info.node_id, load, info)
            await pipe.execute()
        log.info("presence: node %s registered (site %s, %s)", info.node_id, info.site, info.url)

    def _queue_node(self, pipe: Any, node_id: str, load: NodeLoad, info: NodeInfo | None) -> None:
        key = self._k("node", node_id)
        pipe.hset(key, mapping=_node_fields(load, time.time(), info))
        pipe.pexpire(key, self._record_ms)
        pipe.set(self._k("node", node_id, "alive"), "1", px=self._dead_ms)
        pipe.sadd(self._k("nodes"), node_id)
        pipe.pexpire(self._k("nodes"), self._record_ms)

    async def heartbeat(
        self, node_id: str, load: NodeLoad, participants: Sequence[ParticipantPresence]
    ) -> None:
        """One pipelined round trip: node record, alive key, homes and every participant."""
        info = self._registered.get(node_id)
        pipe = self._redis.pipeline(transaction=False)
        if info is None:
            log.warning("presence: heartbeat from unregistered node %s: node part ignored", node_id)
        else:
            self._queue_node(pipe, node_id, load, info)
            for room in self._homes.get(node_id, ()):
                pipe.pexpire(self._k("home", room), self._record_ms)
            pipe.pexpire(self._k("node", node_id, "homes"), self._record_ms)
        # Rewrite (not just PEXPIRE) each participant so a restarted, empty Redis is refilled
        # by the next heartbeat; index members are grouped so each set gets one SADD.
        index_members: dict[str, list[str]] = {}
        for p in participants:
            check_state(p)
            if p.state == LEFT:
                continue
            key = self._participant_key(p.room, p.participant_id)
            pipe.set(key, _participant_json(p), px=self._participant_ms)
            member = _member(p.room, p.participant_id)
            for index in self._indexes(p):
                index_members.setdefault(index, []).append(member)
        for index, members in index_members.items():
            pipe.sadd(index, *members)
            pipe.pexpire(index, self._record_ms)
        if not len(pipe):
            return
        with self._reachable(f"heartbeat of node {node_id}"):
            await pipe.execute()
        log.debug("presence: heartbeat of node %s, %d participants", node_id, len(participants))

    async def nodes(self) -> list[NodeRecord]:
        """Every node record not yet expired; ids whose record expired are pruned."""
        with self._reachable("list nodes"):
            ids = sorted(await self._redis.smembers(self._k("nodes")))
            if not ids:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for node_id in ids:
                pipe.hgetall(self._k("node", node_id))
                pipe.exists(self._k("node", node_id, "alive"))
            replies = await pipe.execute()
            records: list[NodeRecord] = []
            gone: list[str] = []
            for i, node_id in enumerate(ids):
                fields, alive = replies[2 * i], replies[2 * i + 1]
                if not fields:
                    gone.append(node_id)
                    continue
                record = _node_from(fields, bool(alive))
                if record is not None:
                    records.append(record)
            if gone:
                await self._redis.srem(self._k("nodes"), *gone)
        return records

    async def set_participant(self, p: ParticipantPresence) -> None:
        """Write `p` with a fresh TTL, moving it between index sets if its site or node
        changed; state "left" removes it."""
        check_state(p)
        if p.state == LEFT:
            await self.remove_participant(p.room, p.participant_id)
            return
        key = self._participant_key(p.room, p.participant_id)
        member = _member(p.room, p.participant_id)
        with self._reachable(f"set participant {p.participant_id} of room {p.room}"):
            old = _participant_from(await self._redis.get(key))
            pipe = self._redis.pipeline(transaction=True)
            if old is not None and old.node_id != p.node_id:
                pipe.srem(self._k("node", old.node_id, "participants"), member)
            if old is not None and old.site is not None and old.site != p.site:
                pipe.srem(self._k("site", old.site), member)
            pipe.set(key, _participant_json(p), px=self._participant_ms)
            for index in self._indexes(p):
                pipe.sadd(index, member)
                pipe.pexpire(index, self._record_ms)
            await pipe.execute()
        log.info(
            "presence: participant %s of room %s on node %s is %s",
            p.participant_id,
            p.room,
            p.node_id,
            p.state,
        )

    async def remove_participant(self, room: str, participant_id: str) -> None:
        """Delete the participant and its index memberships."""
        key = self._participant_key(room, participant_id)
        member = _member(room, participant_id)
        with self._reachable(f"remove participant {participant_id} of room {room}"):
            old = _participant_from(await self._redis.get(key))
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(key)
            pipe.srem(self._k("participants"), member)
            pipe.srem(self._k("room", room), member)
            if old is not None:
                pipe.srem(self._k("node", old.node_id, "participants"), member)
                if old.site is not None:
                    pipe.srem(self._k("site", old.site), member)
            deleted = (await pipe.execute())[0]
        if deleted:
            log.info("presence: participant %s of room %s left", participant_id, room)

    async def participants(
        self, *, room: str | None = None, site: str | None = None, node_id: str | None = None
    ) -> list[ParticipantPresence]:
        """Read the narrowest index, MGET its records, prune the members that expired."""
        if room is not None:
            index = self._k("room", room)
        elif node_id is not None:
            index = self._k("node", node_id, "participants")
        elif site is not None:
            index = self._k("site", site)
        else:
            index = self._k("participants")
        with self._reachable("list participants"):
            members = list(await self._redis.smembers(index))
            if not members:
                return []
            replies = await self._redis.mget([self._k("participant", m) for m in members])
            found: list[ParticipantPresence] = []
            expired: list[str] = []
            for member, text in zip(members, replies, strict=True):
                p = _participant_from(text)
                if p is None:
                    expired.append(member)
                elif participant_matches(p, room, site, node_id):
                    found.append(p)
            if expired:
                # The record expired (its node stopped heartbeating): drop the stale index entry.
                await self._redis.srem(index, *expired)
        return sorted(found, key=participant_order)

    async def claim_home(self, room: str, node_id: str) -> str:
        """Claim or read the room's home with one Lua script (atomic take-over)."""
        with self._reachable(f"claim home of room {room}"):
            winner, previous = await self._claim(
                keys=[self._k("home", room)],
                args=[node_id, self.prefix, self._record_ms, room],
            )
        if winner == node_id:
            self._homes.setdefault(node_id, set()).add(room)
            if previous and previous != node_id:
                log.warning(
                    "presence: node %s took room %s over from dead node %s", node_id, room, previous
                )
            elif not previous:
                log.info("presence: node %s is home of room %s", node_id, room)
        return str(winner)

    async def home_of(self, room: str) -> str | None:
        """The room's home node while it is alive, else None."""
        with self._reachable(f"home of room {room}"):
            holder = await self._redis.get(self._k("home", room))
            if holder is None or not await self._redis.exists(self._k("node", holder, "alive")):
                return None
        return str(holder)

    async def release_home(self, room: str, node_id: str) -> None:
        """Compare-and-delete the room's home."""
        self._homes.get(node_id, set()).discard(room)
        with self._reachable(f"release home of room {room}"):
            released = await self._release(
                keys=[self._k("home", room), self._k("node", node_id, "homes")],
                args=[node_id, room],
            )
        if released:
            log.info("presence: node %s released room %s", node_id, room)

    async def forget_node(self, node_id: str) -> None:
        """Delete the node's record, its participants and its homes (a clean stop)."""
        self._registered.pop(node_id, None)
        local_homes = self._homes.pop(node_id, set())
        with self._reachable(f"forget node {node_id}"):
            by_node = self._k("node", node_id, "participants")
            rooms = set(await self._redis.smembers(self._k("node", node_id, "homes")))
            for room in rooms | local_homes:
                await self._release(
                    keys=[self._k("home", room), self._k("node", node_id, "homes")],
                    args=[node_id, room],
                )
            members = list(await self._redis.smembers(by_node))
            keys = [self._k("participant", m) for m in members]
            replies = await self._redis.mget(keys) if keys else []
            pipe = self._redis.pipeline(transaction=True)
            for member, text in zip(members, replies, strict=True):
                p = _participant_from(text)
                if p is None or p.node_id != node_id:
                    continue  # expired, or moved to another node since
                pipe.delete(self._participant_key(p.room, p.participant_id))
                for index in self._indexes(p):
                    pipe.srem(index, member)
            for suffix in ("", ":alive", ":homes", ":participants"):
                pipe.delete(self._k("node", node_id) + suffix)
            pipe.srem(self._k("nodes"), node_id)
            await pipe.execute()
        log.info("presence: node %s forgotten with its participants and homes", node_id)
