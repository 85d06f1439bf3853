"""This node in the cluster: its registration and heartbeats, the presence of its participants,
and the home-node claims of the rooms it runs.

One `NodePresence` per node, over the `Presence` seam (in process in the embedded default, Redis
with `REDIS_URL`). Presence is advisory for meetings already running: when Redis is unreachable
the node keeps serving its rooms, `/readyz` fails, and the next successful heartbeat writes
everything back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from server.config import Config
from server.errors import GiaoBanError
from server.presence import (
    NodeInfo,
    NodeLoad,
    NodeRecord,
    ParticipantPresence,
    Presence,
)
from server.rooms import Rooms
from server.sfu.stats import SfuStats

if TYPE_CHECKING:
    from server.room import LobbyEntry, Participant

log = logging.getLogger(__name__)


class WrongNode(GiaoBanError):
    """The room's meeting runs on another node: go there (its URL is in `url`)."""

    code = "wrong_node"
    message_vi = "Cuộc họp đang diễn ra trên máy chủ khác"
    message_en = "The meeting runs on another node"

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url

    def to_wire(self) -> dict[str, dict[str, str]]:
        wire = super().to_wire()
        wire["error"]["url"] = self.url
        return wire


class CpuMeter:
    """This process's CPU use in percent of one core since the previous reading."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = time.process_time()

    def read(self) -> float:
        wall, cpu = time.monotonic(), time.process_time()
        spent, elapsed = cpu - self._cpu, wall - self._wall
        self._wall, self._cpu = wall, cpu
        return round(100.0 * spent / elapsed, 1) if elapsed > 0 else 0.0


class NodePresence:
    """Registers this node, heartbeats it with its participants, claims room homes."""

    def __init__(self, presence: Presence, config: Config, rooms: Rooms, stats: SfuStats) -> None:
        self.presence = presence
        self.info = NodeInfo(
            node_id=config.node_name,
            url=config.base_url,
            site=config.site,
            capacity=config.capacity,
        )
        self.healthy = False
        self._interval = config.heartbeat_interval
        self._rooms = rooms
        self._stats = stats
        self._cpu = CpuMeter()
        self._task: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @property
    def node_id(self) -> str:
        return self.info.node_id

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Register and start heartbeating; an unreachable backend is retried by the beats."""
        await self.presence.start()
        await self.beat()
        self._task = asyncio.ensure_future(self._beat_forever())

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            self._task.cancel()
            # Bounded, and the loop also ends on `_closing`: redis-py can swallow a
            # cancellation that lands inside a command (redis/redis-py#2028).
            await asyncio.wait({self._task}, timeout=2 * self._interval)
            self._task = None
        try:
            await self.presence.forget_node(self.node_id)
        except Exception as exc:  # stopping anyway: the TTLs clean up after us
            log.warning("node %s: could not leave presence cleanly: %s", self.node_id, exc)
        await self.presence.close()

    async def _beat_forever(self) -> None:
        while not self._closing.is_set():
            await asyncio.sleep(self._interval)
            await self.beat()

    # -- heartbeat ----------------------------------------------------------------------------

    def load(self) -> NodeLoad:
        rooms = self._rooms.by_name.values()
        streams = sum(
            len(t.down_tracks) for r in rooms for p in r.participants.values() for t in p.tracks
        )
        return NodeLoad(
            cpu_percent=self._cpu.read(),
            participants=self._rooms.participant_count,
            streams=streams,
        )

    def snapshot(self) -> list[ParticipantPresence]:
        """Everyone on this node now: in rooms (connected) and in lobbies."""
        now = time.time()
        found: list[ParticipantPresence] = []
        for room in self._rooms.by_name.values():
            for p in room.people:
                found.append(self._presence_of(room.name, p.id, p.name, _site(p), "connected", now))
            for entry in room.lobby.values():
                site = entry.entrant.site_code
                found.append(self._presence_of(room.name, entry.id, entry.name, site, "lobby", now))
        return found

    def _presence_of(
        self, room: str, pid: str, name: str, site: str | None, state: str, since: float
    ) -> ParticipantPresence:
        return ParticipantPresence(
            room=room,
            participant_id=pid,
            name=name,
            site=site,
            node_id=self.node_id,
            state=state,
            since=since,
        )

    async def beat(self) -> bool:
        """One heartbeat; whether the presence backend took it."""
        load = self.load()
        try:
            # Registered again after any failure; a Redis that restarted empty between two
            # beats is refilled by the heartbeat itself (it rewrites every record).
            if not self.healthy:
                await self.presence.register_node(self.info, load)
            await self.presence.heartbeat(self.node_id, load, self.snapshot())
        except Exception as exc:
            if self.healthy:
                log.warning("node %s: presence unavailable: %s", self.node_id, exc)
            self.healthy = False
            return False
        if not self.healthy:
            log.info("node %s: registered in presence (site %s)", self.node_id, self.info.site)
        self.healthy = True
        return True

    # -- participants -------------------------------------------------------------------------

    async def entered(self, participant: Participant) -> None:
        await self._set(
            participant.room.name, participant.id, participant.name, _site(participant), "connected"
        )

    async def waiting(self, room: str, entry: LobbyEntry) -> None:
        await self._set(room, entry.id, entry.name, entry.entrant.site_code, "lobby")

    async def dropped(self, participant: Participant) -> None:
        """The socket went without saying goodbye: shown as reconnecting until the TTL ends."""
        await self._set(
            participant.room.name,
            participant.id,
            participant.name,
            _site(participant),
            "reconnecting",
        )

    async def gone(self, room: str, participant_id: str) -> None:
        try:
            await self.presence.remove_participant(room, participant_id)
        except Exception as exc:
            log.warning(
                "room=%s participant=%s: presence not updated: %s", room, participant_id, exc
            )

    async def _set(self, room: str, pid: str, name: str, site: str | None, state: str) -> None:
        # Written at once so dashboards change without waiting for the next heartbeat; a
        # failure is only logged: the heartbeat writes the whole state again.
        try:
            await self.presence.set_participant(
                self._presence_of(room, pid, name, site, state, time.time())
            )
        except Exception as exc:
            log.warning("room=%s participant=%s: presence not updated: %s", room, pid, exc)

    # -- room homes ---------------------------------------------------------------------------

    async def home_elsewhere(self, room: str) -> NodeRecord | None:
        """Claim `room` for this node; the record of the live node holding it instead, if any.

        Without a reachable presence backend the node serves the room itself: a meeting must
        not stop because Redis did."""
        try:
            winner = await self.presence.claim_home(room, self.node_id)
            if winner == self.node_id:
                return None
            record = await self._live_node(winner)
            if record is not None:
                return record
        except Exception as exc:
            log.warning("room=%s: home not claimed (%s); serving it here", room, exc)
            return None
        log.warning("room=%s: home node %s claimed but not alive; serving it here", room, winner)
        return None

    async def home_url(self, room: str) -> str | None:
        """The URL of another live node that holds `room` now (nothing is claimed)."""
        try:
            home = await self.presence.home_of(room)
            if home is None or home == self.node_id:
                return None
            record = await self._live_node(home)
            if record is not None:
                return record.info.url
        except Exception as exc:
            log.warning("room=%s: home not looked up: %s", room, exc)
        return None

    async def _live_node(self, node_id: str) -> NodeRecord | None:
        for record in await self.presence.nodes():
            if record.info.node_id == node_id and record.alive:
                return record
        return None

    async def release(self, room: str) -> None:
        try:
            await self.presence.release_home(room, self.node_id)
        except Exception as exc:
            log.warning("room=%s: home not released: %s", room, exc)


def _site(participant: Participant) -> str | None:
    return participant.entrant.site_code if participant.entrant is not None else None
