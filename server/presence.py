"""Presence across nodes: who is in which room, on which node and site, and which node is home.

One seam (`Presence`), two implementations chosen in one place (`make_presence`):
`LocalPresence` keeps everything in this process (the embedded default, one node), and
`RedisPresence` shares it between nodes through Redis. Both expire what is not refreshed:
a participant not covered by a heartbeat within `participant_ttl` disappears, a node silent
past `dead_after` counts as dead (its home rooms can be taken over), and a dead node's record
itself goes after `record_ttl(dead_after)`. Limits: one Redis server (not Redis Cluster: the
claim script touches keys it is not given), and liveness is judged by Redis key expiry, so the
nodes' clocks only matter for the `seen_at`/`since` figures shown to people. `RedisPresence`
lives in server/presence_redis.py (size) and is importable from here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import GiaoBanError

if TYPE_CHECKING:
    from server.presence_redis import RedisPresence

log = logging.getLogger(__name__)

STATES = frozenset({"lobby", "connected", "reconnecting", "left"})
LEFT = "left"


class PresenceUnavailable(GiaoBanError):
    """The presence backend (Redis) cannot be reached or did not answer in time."""

    code = "presence_unavailable"
    message_vi = "Không kết nối được máy chủ trạng thái"
    message_en = "Presence service unavailable"


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself when it registers: where to reach it and how big it is."""

    node_id: str
    url: str
    site: str | None
    capacity: int


@dataclass(frozen=True)
class NodeLoad:
    """A node's load, sent with every heartbeat."""

    cpu_percent: float
    participants: int
    streams: int


@dataclass(frozen=True)
class NodeRecord:
    """A registered node as presence sees it; `alive` means heard from within `dead_after`."""

    info: NodeInfo
    load: NodeLoad
    seen_at: float
    alive: bool


@dataclass(frozen=True)
class ParticipantPresence:
    """One participant of one room, as every node sees it."""

    room: str
    participant_id: str
    name: str
    site: str | None
    node_id: str
    state: str  # "lobby" | "connected" | "reconnecting" | "left"
    since: float


class Presence(Protocol):
    """The presence seam: node registry, participants with TTLs, room → home node."""

    async def start(self) -> None:
        """Get ready; does not need the backend to be reachable (see `ping`)."""

    async def close(self) -> None:
        """Release connections; keys stay until their TTLs (use `forget_node` to go at once)."""

    async def ping(self) -> None:
        """Raise PresenceUnavailable when the backend cannot be reached."""

    async def register_node(self, info: NodeInfo, load: NodeLoad) -> None:
        """Record this node (alive from now) with its public URL, site, capacity and load."""

    async def heartbeat(
        self, node_id: str, load: NodeLoad, participants: Sequence[ParticipantPresence]
    ) -> None:
        """Keep the node alive and refresh ALL its participants' TTLs (one Redis round trip).

        The participants given are (re)written as given, so a restarted Redis refills: pass the
        node's current list. Only a node registered through this object has its record kept.
        """

    async def nodes(self) -> list[NodeRecord]:
        """Every registered node not yet forgotten, dead ones with `alive=False`."""

    async def set_participant(self, p: ParticipantPresence) -> None:
        """Create or update a participant (TTL restarts); state "left" removes it."""

    async def remove_participant(self, room: str, participant_id: str) -> None:
        """Remove a participant at once (no-op when absent)."""

    async def participants(
        self, *, room: str | None = None, site: str | None = None, node_id: str | None = None
    ) -> list[ParticipantPresence]:
        """Live participants matching every filter given, ordered by room, since, id."""

    async def claim_home(self, room: str, node_id: str) -> str:
        """Atomically: the room's live home node id, claiming it for `node_id` when there is
        none or its holder is dead (take-over). Returns the winner. Register before claiming."""

    async def home_of(self, room: str) -> str | None:
        """The room's home node id while that node is alive, else None."""

    async def release_home(self, room: str, node_id: str) -> None:
        """Give up the room's home, only if `node_id` holds it."""

    async def forget_node(self, node_id: str) -> None:
        """A node stopping cleanly: its registration, participants and homes go at once."""


def record_ttl(dead_after: float) -> float:
    """How long a silent node's record (and its home claims) stay listed: well past dead."""
    return max(4.0 * dead_after, 60.0)


def check_state(p: ParticipantPresence) -> None:
    """ValueError unless `p.state` is one of STATES."""
    if p.state not in STATES:
        raise ValueError(f"unknown participant state {p.state!r} (one of {sorted(STATES)})")


def participant_order(p: ParticipantPresence) -> tuple[str, float, str]:
    """Sort key of listings: room, then arrival, then id."""
    return (p.room, p.since, p.participant_id)


def participant_matches(
    p: ParticipantPresence, room: str | None, site: str | None, node_id: str | None
) -> bool:
    """True when `p` passes every filter that is not None."""
    return (
        (room is None or p.room == room)
        and (site is None or p.site == site)
        and (node_id is None or p.node_id == node_id)
    )


# --------------------------------------------------------------------------- in process


@dataclass
class _LocalNode:
    info: NodeInfo
    load: NodeLoad
    seen_at: float


class LocalPresence:
    """Presence kept in this process: the embedded default, for a node without Redis.

    Expiry is judged against `clock` whenever something is read, so no task is needed.
    """

    def __init__(
        self,
        *,
        participant_ttl: float = 10.0,
        dead_after: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.participant_ttl = participant_ttl
        self.dead_after = dead_after
        self._clock = clock
        self._nodes: dict[str, _LocalNode] = {}
        # (room, participant id) → (presence, expires at)
        self._participants: dict[tuple[str, str], tuple[ParticipantPresence, float]] = {}
        self._homes: dict[str, str] = {}  # room → node id

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Nothing to release."""

    async def ping(self) -> None:
        """Always reachable."""

    def _alive(self, node_id: str, now: float) -> bool:
        node = self._nodes.get(node_id)
        return node is not None and now - node.seen_at <= self.dead_after

    def _prune(self, now: float) -> None:
        # Expire on read, like Redis: a participant whose node stopped heartbeating vanishes.
        for key, (p, expires) in list(self._participants.items()):
            if expires <= now:
                del self._participants[key]
                log.info(
                    "presence: participant %s of room %s on node %s expired",
                    p.participant_id,
                    p.room,
                    p.node_id,
                )
        forget_before = now - record_ttl(self.dead_after)
        for node_id, node in list(self._nodes.items()):
            if node.seen_at < forget_before:
                del self._nodes[node_id]

    async def register_node(self, info: NodeInfo, load: NodeLoad) -> None:
        """Record the node as alive now."""
        self._nodes[info.node_id] = _LocalNode(info, load, self._clock())
        log.info("presence: node %s registered (site %s, %s)", info.node_id, info.site, info.url)

    async def heartbeat(
        self, node_id: str, load: NodeLoad, participants: Sequence[ParticipantPresence]
    ) -> None:
        """Mark the node seen and restart every given participant's TTL."""
        now = self._clock()
        node = self._nodes.get(node_id)
        if node is None:
            log.warning("presence: heartbeat from unregistered node %s: node part ignored", node_id)
        else:
            node.load, node.seen_at = load, now
        for p in participants:
            check_state(p)
            if p.state != LEFT:
                self._participants[(p.room, p.participant_id)] = (p, now + self.participant_ttl)

    async def nodes(self) -> list[NodeRecord]:
        """Every node not yet forgotten, with `alive` judged now."""
        now = self._clock()
        self._prune(now)
        return [
            NodeRecord(n.info, n.load, n.seen_at, self._alive(node_id, now))
            for node_id, n in sorted(self._nodes.items())
        ]

    async def set_participant(self, p: ParticipantPresence) -> None:
        """Create or update `p`; state "left" removes it."""
        check_state(p)
        if p.state == LEFT:
            await self.remove_participant(p.room, p.participant_id)
            return
        self._participants[(p.room, p.participant_id)] = (p, self._clock() + self.participant_ttl)
        log.info(
            "presence: participant %s of room %s on node %s is %s",
            p.participant_id,
            p.room,
            p.node_id,
            p.state,
        )

    async def remove_participant(self, room: str, participant_id: str) -> None:
        """Remove at once (no-op when absent)."""
        if self._participants.pop((room, participant_id), None) is not None:
            log.info("presence: participant %s of room %s left", participant_id, room)

    async def participants(
        self, *, room: str | None = None, site: str | None = None, node_id: str | None = None
    ) -> list[ParticipantPresence]:
        """Live participants matching every filter given."""
        self._prune(self._clock())
        found = [
            p for p, _ in self._participants.values() if participant_matches(p, room, site, node_id)
        ]
        return sorted(found, key=participant_order)

    async def claim_home(self, room: str, node_id: str) -> str:
        """Claim or read the room's home; atomic because nothing here awaits."""
        now = self._clock()
        holder = self._homes.get(room)
        if holder is not None and self._alive(holder, now):
            return holder
        self._homes[room] = node_id
        if holder is not None and holder != node_id:
            log.warning(
                "presence: node %s took room %s over from dead node %s", node_id, room, holder
            )
        else:
            log.info("presence: node %s is home of room %s", node_id, room)
        return node_id

    async def home_of(self, room: str) -> str | None:
        """The live home node of `room`, or None."""
        holder = self._homes.get(room)
        return holder if holder is not None and self._alive(holder, self._clock()) else None

    async def release_home(self, room: str, node_id: str) -> None:
        """Give up the home of `room` if `node_id` holds it."""
        if self._homes.get(room) == node_id:
            del self._homes[room]
            log.info("presence: node %s released room %s", node_id, room)

    async def forget_node(self, node_id: str) -> None:
        """Drop the node, its participants and its homes."""
        self._nodes.pop(node_id, None)
        for key, (p, _) in list(self._participants.items()):
            if p.node_id == node_id:
                del self._participants[key]
        for room, holder in list(self._homes.items()):
            if holder == node_id:
                del self._homes[room]
        log.info("presence: node %s forgotten with its participants and homes", node_id)


def make_presence(redis_url: str | None, **kw: Any) -> Presence:
    """The one place the presence backend is chosen: Redis when a URL is given, else local.

    `kw` are the constructor's keywords (participant_ttl, dead_after, prefix for Redis).
    """
    if redis_url:
        from server.presence_redis import RedisPresence

        return RedisPresence(redis_url, **kw)
    kw.pop("prefix", None)  # a Redis key prefix means nothing in process
    return LocalPresence(**kw)


def __getattr__(name: str) -> Any:
    # `from server.presence import RedisPresence` works, but the Redis module (it imports this
    # one) loads only when asked for: no import cycle, whichever module is imported first.
    if name == "RedisPresence":
        from server.presence_redis import RedisPresence

        return RedisPresence
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "STATES",
    "LocalPresence",
    "NodeInfo",
    "NodeLoad",
    "NodeRecord",
    "ParticipantPresence",
    "Presence",
    "PresenceUnavailable",
    "RedisPresence",
    "make_presence",
    "record_ttl",
]
