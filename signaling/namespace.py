"""The `/meeting` Socket.IO namespace: parse a message, check it, call the room, ack.

Every handler answers through the ack with {"ok": ...} or {"error": {...}}; no exception
escapes to python-socketio (whose default is to log and drop it, leaving the client hanging).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

from server.errors import (
    AlreadyJoined,
    BadRequest,
    GiaoBanError,
    NotFound,
    NotJoined,
    UnknownEvent,
)
from server.metrics import Metrics
from server.room import Participant
from server.rooms import Rooms
from signaling import messages

log = logging.getLogger(__name__)

NAMESPACE = "/meeting"


@dataclass
class Session:
    """What the node knows about one socket."""

    sid: str
    participant: Participant | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class MeetingNamespace(socketio.AsyncNamespace):
    """Signaling for meetings; one instance per node."""

    def __init__(self, rooms: Rooms, metrics: Metrics, ice_servers: list[dict[str, Any]]) -> None:
        super().__init__(NAMESPACE)
        self.rooms = rooms
        self.sessions: dict[str, Session] = {}
        self.participant_sids: dict[str, str] = {}
        self._metrics = metrics
        self._ice_servers = ice_servers
        self._handlers: dict[
            str, Callable[[Session, dict[str, Any]], Awaitable[dict[str, Any]]]
        ] = {
            "join": self._join,
            "publish": self._publish,
            "unpublish": self._unpublish,
            "subscribe": self._subscribe,
            "down_answer": self._down_answer,
            "ice": self._ice,
            "mute": self._mute,
            "leave": self._leave,
        }

    # -- Notifier for rooms -------------------------------------------------------------------

    async def to_room(
        self, room: str, event: str, payload: dict[str, Any], skip: str | None = None
    ) -> None:
        skip_sid = self.participant_sids.get(skip) if skip else None
        await self.emit(event, payload, room=room, skip_sid=skip_sid)

    async def to_participant(
        self, participant_id: str, event: str, payload: dict[str, Any]
    ) -> None:
        sid = self.participant_sids.get(participant_id)
        if sid is not None:
            await self.emit(event, payload, to=sid)

    # -- dispatch -----------------------------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == "connect":
            self.sessions[args[0]] = Session(args[0])
            return True
        if event == "disconnect":
            await self._disconnected(args[0])
            return None
        sid, payload_args = args[0], args[1:]
        session = self.sessions.get(sid)
        try:
            handler = self._handlers.get(event)
            if handler is None:
                raise UnknownEvent(event[:64])
            if session is None:
                raise NotJoined("no session")
            data = messages.payload_of(payload_args)
            async with session.lock:
                result = await handler(session, data)
            return {"ok": result}
        except GiaoBanError as exc:
            pid = session.participant.id if session and session.participant else "-"
            log.warning(
                "signaling error event=%s sid=%s participant=%s code=%s: %s",
                event[:64],
                sid,
                pid,
                exc.code,
                exc.detail,
            )
            self._metrics.signaling_error(exc.code, event)
            return exc.to_wire()
        except Exception:
            log.exception("signaling handler %s failed (sid=%s)", event[:64], sid)
            self._metrics.signaling_error("internal", event)
            return GiaoBanError().to_wire()

    async def _disconnected(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        async with session.lock:
            await self._leave_room(session)

    # -- handlers -----------------------------------------------------------------------------

    def _joined(self, session: Session) -> Participant:
        if session.participant is None or session.participant.left:
            raise NotJoined()
        return session.participant

    async def _join(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        if session.participant is not None and not session.participant.left:
            raise AlreadyJoined(session.participant.room.name)
        room_name = messages.room_name(data)
        name = messages.display_name(data)
        room = self.rooms.get_or_create(room_name)
        others = [p.describe() for p in room.participants.values()]
        participant = await room.join(name)
        session.participant = participant
        self.participant_sids[participant.id] = session.sid
        await self.enter_room(session.sid, room_name)
        self._metrics.joins.inc()
        return {
            "participant_id": participant.id,
            "room": room_name,
            "participants": others,
            "ice_servers": self._ice_servers,
        }

    async def _publish(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        pc = messages.pc_name(data)
        sdp = messages.sdp(data)
        sources = messages.sources(data)
        answer, tracks = await participant.room.publish(participant, pc, sdp, sources)
        return {"sdp": answer, "tracks": [t.describe() for t in tracks]}

    async def _unpublish(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        await participant.room.unpublish(participant, messages.pc_name(data))
        return {}

    async def _subscribe(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        await participant.room.subscribe(participant)
        return {}

    async def _down_answer(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        if participant.down is None:
            raise NotFound("no down connection: send 'subscribe' first")
        await participant.down.apply_answer(messages.revision(data), messages.sdp(data))
        return {}

    async def _ice(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        pc = messages.pc_name(data)
        candidate = messages.candidate(data)
        if pc == "down":
            if participant.down is None:
                raise NotFound("no down connection")
            await participant.down.add_ice_candidate(candidate)
        else:
            conn = participant.up.get(pc)
            if conn is None:
                raise NotFound(f"publishing connection {pc!r}")
            await conn.add_ice_candidate(candidate)
        return {}

    async def _mute(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        track_id = data.get("track_id")
        if not isinstance(track_id, str):
            raise BadRequest("'track_id' must be a string")
        track = await participant.room.set_muted(
            participant, track_id, messages.flag(data, "muted")
        )
        return {"track": track.describe()}

    async def _leave(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        self._joined(session)
        await self._leave_room(session)
        return {}

    async def _leave_room(self, session: Session) -> None:
        participant = session.participant
        if participant is None:
            return
        session.participant = None
        room = participant.room
        await self.leave_room(session.sid, room.name)
        await room.leave(participant)
        self.participant_sids.pop(participant.id, None)
        self._metrics.leaves.inc()
        await self.rooms.discard_if_empty(room)
