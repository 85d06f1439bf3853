"""Rooms and their participants on this node: who is in, what they publish, who receives it."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from server.errors import BadRequest, Forbidden, NotFound
from server.sfu.connections import DownConnection, MediaSettings, UpConnection
from server.sfu.speaker import ActiveSpeakerDetector
from server.sfu.stats import SfuStats
from server.sfu.up_track import UpTrack

if TYPE_CHECKING:
    from server.admission import Entrant

log = logging.getLogger(__name__)

MAX_UP_CONNECTIONS = 4
SPEAKER_INTERVAL = 0.25


class TrackObserver(Protocol):
    """Told when tracks come and go in a room (the room's recorder)."""

    def track_added(self, participant: Participant, track: UpTrack) -> None: ...

    def track_removed(self, track: UpTrack) -> None: ...


class Notifier(Protocol):
    """How a room tells participants what happened (the signaling layer implements it)."""

    def to_room(
        self, room: str, event: str, payload: dict[str, Any], skip: str | None = None
    ) -> Awaitable[None]: ...

    def to_participant(
        self, participant_id: str, event: str, payload: dict[str, Any]
    ) -> Awaitable[None]: ...


HOST_ROLES = ("host", "cohost")
# Receives every track and is shown to nobody: the recording worker (DESIGN §8).
RECORDER_ROLE = "recorder"
# Modes where only hosts and the floor holder may open a microphone (DESIGN §3).
CONTROLLED_MODES = ("conference", "training")
SPEAKING_SOURCES = ("microphone",)


@dataclass
class Participant:
    """One person (or one site's hall) in a room, with their peer connections."""

    id: str
    name: str
    room: Room
    role: str = "member"
    entrant: Entrant | None = None
    # Given on entry: a rejoin that shows it (after a dropped link) skips the lobby and the lock.
    ticket: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    joined_at: float = field(default_factory=time.time)
    up: dict[str, UpConnection] = field(default_factory=dict)
    down: DownConnection | None = None
    left: bool = False
    removed: bool = False  # a host is taking them out
    stay_id: int | None = None  # the attendance record of this stay

    @property
    def tracks(self) -> list[UpTrack]:
        return [t for conn in self.up.values() for t in conn.tracks.values()]

    def track(self, track_id: str) -> UpTrack:
        for track in self.tracks:
            if track.id == track_id:
                return track
        raise NotFound(f"track {track_id}")

    @property
    def is_host(self) -> bool:
        return self.role in HOST_ROLES

    @property
    def site_code(self) -> str | None:
        return self.entrant.site_code if self.entrant is not None else None

    @property
    def hidden(self) -> bool:
        """A recorder: not listed, not announced, not counted as someone in the meeting."""
        return self.role == RECORDER_ROLE

    def describe(self) -> dict[str, Any]:
        entrant = self.entrant
        return {
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "site": entrant.site_name or entrant.site_code if entrant else None,
            "site_code": entrant.site_code if entrant else None,
            "tracks": [t.describe() for t in self.tracks],
        }


@dataclass
class LobbyEntry:
    """Someone waiting for a host to let them in."""

    id: str
    name: str
    entrant: Entrant
    since: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        entrant = self.entrant
        return {
            "id": self.id,
            "name": self.name,
            "site": entrant.site_name or entrant.site_code,
            "role": entrant.role,
            "since": self.since,
        }


class Room:
    """A meeting on this node. Every method is called with the participant's lock held."""

    def __init__(
        self,
        name: str,
        settings: MediaSettings,
        stats: SfuStats,
        notifier: Notifier,
        title: str = "",
        mode: str = "discussion",
    ) -> None:
        self.name = name
        self.title = title or name
        self.mode = mode
        self.locked = False
        self.participants: dict[str, Participant] = {}
        self.lobby: dict[str, LobbyEntry] = {}
        # Raised hands in order: participant id -> time raised (dicts keep insertion order).
        self.hands: dict[str, float] = {}
        self.floor: str | None = None  # who has been given the floor
        self.spotlight: str | None = None
        self.recorder: TrackObserver | None = None  # the node's own recorder, while it records
        self.recording_id: int | None = None  # the recording going on (by any recorder)
        # Going on, but its recorder was lost and none has come back yet (workers only).
        self.recording_paused = False
        # ticket -> the entrant it was given to; kept while the room is live on this node.
        self._tickets: dict[str, Entrant] = {}
        self._settings = settings
        self._stats = stats
        self._notifier = notifier
        self._speakers = ActiveSpeakerDetector()
        self._speaker_task: asyncio.Task[None] | None = None

    # -- membership -------------------------------------------------------------------------

    async def join(self, name: str, entrant: Entrant | None = None) -> Participant:
        role = entrant.role if entrant is not None else "member"
        participant = Participant(f"p-{uuid.uuid4().hex[:12]}", name, self, role, entrant)
        self.participants[participant.id] = participant
        if entrant is not None:
            self._tickets[participant.ticket] = entrant
        log.info(
            "join room=%s participant=%s role=%s account=%s name=%r",
            self.name,
            participant.id,
            role,
            entrant.account_id if entrant else None,
            name,
        )
        if participant.hidden:
            return participant
        if self._speaker_task is None:
            self._speaker_task = asyncio.ensure_future(self._watch_speakers())
        await self._notifier.to_room(
            self.name, "participant_joined", participant.describe(), skip=participant.id
        )
        return participant

    async def leave(self, participant: Participant) -> None:
        """Close the participant's connections and tell the others; safe to call twice."""
        if participant.left:
            return
        participant.left = True
        self.participants.pop(participant.id, None)
        for conn in list(participant.up.values()):
            self._withdraw(conn)
            await conn.close()
        participant.up.clear()
        if participant.down is not None:
            await participant.down.close()
            participant.down = None
        self._speakers.forget(participant.id)
        log.info("leave room=%s participant=%s", self.name, participant.id)
        if participant.hidden:
            return
        await self._notifier.to_room(
            self.name, "participant_left", {"participant_id": participant.id}
        )
        if self.hands.pop(participant.id, None) is not None:
            await self._hands_changed()
        changed = False
        if self.floor == participant.id:
            self.floor, changed = None, True
        if self.spotlight == participant.id:
            self.spotlight, changed = None, True
        if changed:
            await self._notifier.to_room(self.name, "room_updated", self.describe())
        if not self.people and self._speaker_task is not None:
            self._speaker_task.cancel()
            await asyncio.gather(self._speaker_task, return_exceptions=True)
            self._speaker_task = None

    @property
    def people(self) -> list[Participant]:
        """The participants others see (every one but recorders)."""
        return [p for p in self.participants.values() if not p.hidden]

    @property
    def recorders(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.hidden]

    @property
    def empty(self) -> bool:
        """Nobody in the meeting nor waiting (a recorder alone does not keep a room open)."""
        return not self.people and not self.lobby

    def holds_ticket(self, ticket: str | None, entrant: Entrant) -> bool:
        """Whether `ticket` was given in this room to this same entrant (a rejoin)."""
        given = self._tickets.get(ticket) if ticket else None
        return given is not None and (given.account_id, given.token_id) == (
            entrant.account_id,
            entrant.token_id,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "room": self.name,
            "title": self.title,
            "mode": self.mode,
            "locked": self.locked,
            "floor": self.floor,
            "spotlight": self.spotlight,
            "recording": self.recording_id is not None,
            "recording_paused": self.recording_id is not None and self.recording_paused,
        }

    def may_speak(self, participant: Participant) -> bool:
        """Whether the participant may open a microphone now (the mode and the floor)."""
        return (
            participant.is_host or self.mode not in CONTROLLED_MODES or self.floor == participant.id
        )

    # -- lobby --------------------------------------------------------------------------------

    @property
    def hosts(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.is_host]

    async def wait_in_lobby(self, name: str, entrant: Entrant) -> LobbyEntry:
        entry = LobbyEntry(f"l-{uuid.uuid4().hex[:12]}", name, entrant)
        self.lobby[entry.id] = entry
        log.info(
            "lobby wait room=%s entry=%s role=%s account=%s name=%r",
            self.name,
            entry.id,
            entrant.role,
            entrant.account_id,
            name,
        )
        await self.lobby_changed()
        return entry

    def take_from_lobby(self, entry_id: str) -> LobbyEntry:
        entry = self.lobby.pop(entry_id, None)
        if entry is None:
            raise NotFound(f"no one waiting as {entry_id!r}")
        return entry

    async def leave_lobby(self, entry: LobbyEntry) -> None:
        if self.lobby.pop(entry.id, None) is not None:
            log.info("lobby left room=%s entry=%s", self.name, entry.id)
            await self.lobby_changed()

    def lobby_list(self) -> list[dict[str, Any]]:
        return [e.describe() for e in sorted(self.lobby.values(), key=lambda e: e.since)]

    async def lobby_changed(self) -> None:
        """Tell every host who is waiting now."""
        payload = {"waiting": self.lobby_list()}
        for host in self.hosts:
            await self._notifier.to_participant(host.id, "lobby_updated", payload)

    async def set_locked(self, by: Participant, locked: bool) -> None:
        if self.locked == locked:
            return
        self.locked = locked
        log.info("lock room=%s participant=%s locked=%s", self.name, by.id, locked)
        await self._notifier.to_room(self.name, "room_updated", self.describe())

    # -- media ------------------------------------------------------------------------------

    async def publish(
        self, participant: Participant, pc_name: str, sdp: str, sources: dict[str, str]
    ) -> tuple[str, list[UpTrack]]:
        conn = participant.up.get(pc_name)
        if conn is not None and conn.replaced_by(sdp):
            # The browser made a new peer connection under the same name (after a failure):
            # aiortc cannot restart ICE, so the old connection and its tracks go.
            log.info(
                "publish room=%s participant=%s pc=%s: new connection replaces the old",
                self.name,
                participant.id,
                pc_name,
            )
            await self.unpublish(participant, pc_name)
            conn = None
        if conn is None:
            if len(participant.up) >= MAX_UP_CONNECTIONS:
                raise BadRequest(f"at most {MAX_UP_CONNECTIONS} publishing connections")
            conn = UpConnection(
                pc_name,
                participant.id,
                self._settings,
                self._stats,
                self._on_audio_level,
            )
            participant.up[pc_name] = conn
        try:
            answer, added = await conn.negotiate(sdp, sources)
        except Exception:
            if not conn.tracks:
                participant.up.pop(pc_name, None)
                await conn.close()
            raise
        for track in added:
            log.info(
                "publish room=%s participant=%s track=%s kind=%s source=%s codec=%s",
                self.name,
                participant.id,
                track.id,
                track.kind,
                track.source,
                track.codec.mimeType,
            )
            for other in self.participants.values():
                if other is not participant and other.down is not None:
                    other.down.add(track)
            if self.recorder is not None:
                self.recorder.track_added(participant, track)
            await self._notifier.to_room(
                self.name, "track_added", track.describe(), skip=participant.id
            )
        closed = [
            t for t in added if t.source in SPEAKING_SOURCES and not self.may_speak(participant)
        ]
        for track in closed:
            track.set_muted(True)
        if added:
            await self._participant_updated(participant)
        if closed:
            await self._notifier.to_participant(
                participant.id,
                "muted_by_host",
                {"sources": sorted({t.source for t in closed}), "reason": "floor"},
            )
        return answer, added

    async def _participant_updated(self, participant: Participant) -> None:
        await self._notifier.to_room(
            self.name, "participant_updated", participant.describe(), skip=participant.id
        )

    async def unpublish(self, participant: Participant, pc_name: str) -> None:
        conn = participant.up.pop(pc_name, None)
        if conn is None:
            raise NotFound(f"publishing connection {pc_name!r}")
        removed = self._withdraw(conn)
        await conn.close()
        for track in removed:
            log.info(
                "unpublish room=%s participant=%s track=%s", self.name, participant.id, track.id
            )
            await self._notifier.to_room(
                self.name, "track_removed", {"track_id": track.id, "participant_id": participant.id}
            )
        if removed and not participant.left:
            await self._participant_updated(participant)

    def _withdraw(self, conn: UpConnection) -> list[UpTrack]:
        tracks = list(conn.tracks.values())
        for track in tracks:
            if self.recorder is not None:
                self.recorder.track_removed(track)
            for other in self.participants.values():
                if other.down is not None:
                    other.down.remove(track)
        return tracks

    async def subscribe(self, participant: Participant) -> None:
        """(Re)start the participant's down connection with every other participant's tracks."""
        if participant.down is not None:
            await participant.down.close()

        async def send_offer(revision: int, sdp: str, tracks: list[dict[str, str]]) -> None:
            await self._notifier.to_participant(
                participant.id, "down_offer", {"revision": revision, "sdp": sdp, "tracks": tracks}
            )

        down = DownConnection(participant.id, self._settings, self._stats, send_offer)
        participant.down = down
        log.info("subscribe room=%s participant=%s", self.name, participant.id)
        others = [t for p in self.participants.values() if p is not participant for t in p.tracks]
        # With nothing to receive yet, no offer is sent: the first track starts the connection.
        for track in others:
            down.add(track)

    async def set_muted(self, participant: Participant, track_id: str, muted: bool) -> UpTrack:
        track = participant.track(track_id)
        if not muted and track.source in SPEAKING_SOURCES and not self.may_speak(participant):
            raise Forbidden("the chair has not given you the floor: raise your hand")
        if track.muted != muted:
            track.set_muted(muted)
            log.info(
                "mute room=%s participant=%s track=%s muted=%s",
                self.name,
                participant.id,
                track.id,
                muted,
            )
            await self._notifier.to_room(
                self.name, "track_updated", track.describe(), skip=participant.id
            )
            await self._participant_updated(participant)
        return track

    # -- host controls ------------------------------------------------------------------------

    def target(self, participant_id: str) -> Participant:
        """A participant of this room a host acts on; NotFound when gone (or being removed)."""
        target = self.participants.get(participant_id)
        if target is None or target.hidden or target.removed or target.left:
            raise NotFound(f"no participant {participant_id!r} in this room")
        return target

    async def force_mute(
        self, target: Participant, sources: tuple[str, ...], by: Participant | None, reason: str
    ) -> list[UpTrack]:
        """Stop forwarding `target`'s tracks of `sources` and tell them why."""
        muted = [t for t in target.tracks if t.source in sources and not t.muted]
        for track in muted:
            track.set_muted(True)
            await self._notifier.to_room(
                self.name, "track_updated", track.describe(), skip=target.id
            )
        log.info(
            "force mute room=%s participant=%s sources=%s by=%s reason=%s tracks=%d",
            self.name,
            target.id,
            ",".join(sources),
            by.id if by else None,
            reason,
            len(muted),
        )
        if muted:
            await self._participant_updated(target)
        await self._notifier.to_participant(
            target.id,
            "muted_by_host",
            {"sources": list(sources), "reason": reason, "by": by.name if by else None},
        )
        return muted

    async def set_role(self, by: Participant, target: Participant, role: str) -> None:
        if role not in ("cohost", "member"):
            raise BadRequest("'role' must be cohost or member")
        if target.role == "host":
            raise Forbidden("the meeting's hosts keep their role")
        if target.role == role:
            return
        target.role = role
        log.info("role room=%s participant=%s role=%s by=%s", self.name, target.id, role, by.id)
        await self._notifier.to_room(self.name, "participant_updated", target.describe())
        await self._notifier.to_participant(target.id, "role_changed", {"role": role})
        if target.is_host:
            await self._notifier.to_participant(
                target.id, "lobby_updated", {"waiting": self.lobby_list()}
            )
            await self._notifier.to_participant(target.id, "hands_updated", self.hands_list())
        elif not self.may_speak(target):
            await self.force_mute(target, SPEAKING_SOURCES, by, "floor")

    async def set_spotlight(self, by: Participant, target: Participant | None) -> None:
        self.spotlight = target.id if target is not None else None
        log.info("spotlight room=%s participant=%s by=%s", self.name, self.spotlight, by.id)
        await self._notifier.to_room(self.name, "room_updated", self.describe())

    # -- floor control ------------------------------------------------------------------------

    def hands_list(self) -> dict[str, Any]:
        queue = []
        for pid, since in self.hands.items():
            p = self.participants.get(pid)
            if p is not None:
                queue.append({"participant_id": pid, "name": p.name, "since": since})
        return {"queue": queue}

    async def _hands_changed(self) -> None:
        await self._notifier.to_room(self.name, "hands_updated", self.hands_list())

    async def raise_hand(self, participant: Participant) -> None:
        if participant.id in self.hands:
            return
        self.hands[participant.id] = time.time()
        log.info("hand raised room=%s participant=%s", self.name, participant.id)
        await self._hands_changed()

    async def lower_hand(self, participant: Participant, by: Participant) -> None:
        if self.hands.pop(participant.id, None) is None:
            return
        log.info("hand lowered room=%s participant=%s by=%s", self.name, participant.id, by.id)
        await self._hands_changed()

    async def grant_floor(self, by: Participant, target: Participant) -> None:
        previous = self.participants.get(self.floor) if self.floor else None
        self.floor = target.id
        self.hands.pop(target.id, None)
        log.info("floor granted room=%s participant=%s by=%s", self.name, target.id, by.id)
        await self._notifier.to_room(self.name, "room_updated", self.describe())
        await self._hands_changed()
        await self._notifier.to_participant(target.id, "floor_granted", {"by": by.name})
        if previous is not None and previous is not target and not self.may_speak(previous):
            await self.force_mute(previous, SPEAKING_SOURCES, by, "floor")

    async def revoke_floor(self, by: Participant) -> None:
        holder = self.participants.get(self.floor) if self.floor else None
        if self.floor is None:
            return
        self.floor = None
        log.info(
            "floor revoked room=%s participant=%s by=%s", self.name, holder and holder.id, by.id
        )
        await self._notifier.to_room(self.name, "room_updated", self.describe())
        if holder is not None and not self.may_speak(holder):
            await self.force_mute(holder, SPEAKING_SOURCES, by, "floor")

    # -- active speaker ---------------------------------------------------------------------

    def _on_audio_level(self, participant_id: str, level: int, voice: bool) -> None:
        self._speakers.add(participant_id, level, voice, time.monotonic())

    async def _watch_speakers(self) -> None:
        while True:
            await asyncio.sleep(SPEAKER_INTERVAL)
            changed = self._speakers.update(time.monotonic())
            if changed is False:
                continue
            speaker = changed if isinstance(changed, str) else None
            level = self._speakers.level_of(speaker) if speaker else 127
            try:
                await self._notifier.to_room(
                    self.name, "active_speaker", {"participant_id": speaker, "level": level}
                )
            except Exception:
                log.exception("active speaker notice failed in room=%s", self.name)

    async def close(self) -> None:
        for participant in list(self.participants.values()):
            await self.leave(participant)
