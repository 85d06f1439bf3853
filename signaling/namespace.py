"""The `/meeting` Socket.IO namespace: parse a message, check it, call the room, ack.

Every handler answers through the ack with {"ok": ...} or {"error": {...}}; no exception
escapes to python-socketio (whose default is to log and drop it, leaving the client hanging).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any

import socketio

from server.admission import Entrant, Gate
from server.auth import SESSION_COOKIE
from server.cluster import NodePresence, WrongNode
from server.errors import (
    AlreadyJoined,
    BadRequest,
    Forbidden,
    GiaoBanError,
    NotFound,
    NotJoined,
    RoomLocked,
    UnknownEvent,
)
from server.metrics import Metrics
from server.recording_control import RecordingControl
from server.room import SPEAKING_SOURCES, LobbyEntry, Participant, Room
from server.rooms import Rooms
from signaling import messages
from signaling.chat import chat_handlers

log = logging.getLogger(__name__)

NAMESPACE = "/meeting"
# What a hidden recorder may do: receive, nothing else.
RECORDER_EVENTS = frozenset({"join", "subscribe", "down_answer", "ice", "leave"})


@dataclass
class Session:
    """What the node knows about one socket."""

    sid: str
    # The browser's sign-in session (from the handshake's cookie); checked at every join.
    session_token: str | None = None
    participant: Participant | None = None
    # While waiting in a room's lobby (then `participant` is None).
    waiting: LobbyEntry | None = None
    waiting_room: Room | None = None
    removed: bool = False  # a host took this socket's person out of the meeting
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def session_token_of(environ: dict[str, Any]) -> str | None:
    """The sign-in session token in the handshake's Cookie header, if any."""
    header = environ.get("HTTP_COOKIE", "")
    if not header:
        return None
    try:
        cookies = SimpleCookie(header)
    except CookieError:
        return None
    morsel = cookies.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


class MeetingNamespace(socketio.AsyncNamespace):
    """Signaling for meetings; one instance per node."""

    def __init__(
        self,
        rooms: Rooms,
        metrics: Metrics,
        ice_servers: list[dict[str, Any]],
        gate: Gate,
        cluster: NodePresence,
        recording: RecordingControl,
    ) -> None:
        super().__init__(NAMESPACE)
        self.rooms = rooms
        self.gate = gate
        self.cluster = cluster
        self.recording = recording
        self.sessions: dict[str, Session] = {}
        self.participant_sids: dict[str, str] = {}
        self.waiting_sids: dict[str, str] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._metrics = metrics
        self.metrics = metrics  # for handler modules beside this one (signaling/chat.py)
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
            "admit": self._admit,
            "deny": self._deny,
            "lock": self._lock,
            "end": self._end,
            "remove": self._remove,
            "mute_participant": self._mute_participant,
            "mute_all": self._mute_all,
            "ask_unmute": self._ask_unmute,
            "stop_camera": self._stop_camera,
            "set_role": self._set_role,
            "spotlight": self._spotlight,
            "raise_hand": self._raise_hand,
            "lower_hand": self._lower_hand,
            "grant_floor": self._grant_floor,
            "revoke_floor": self._revoke_floor,
            "start_recording": self._start_recording,
            "stop_recording": self._stop_recording,
        }
        self._handlers.update(chat_handlers(self))

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
            environ = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
            self.sessions[args[0]] = Session(args[0], session_token_of(environ))
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
            if session.participant and session.participant.hidden and event not in RECORDER_EVENTS:
                raise Forbidden("a recorder only receives the meeting")
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
            await self._leave_room(session, dropped=True)

    # -- handlers -----------------------------------------------------------------------------

    def _joined(self, session: Session) -> Participant:
        if session.participant is None or session.participant.left:
            raise NotJoined()
        return session.participant

    async def _join(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        if session.participant is not None and not session.participant.left:
            raise AlreadyJoined(session.participant.room.name)
        if session.waiting is not None:
            raise AlreadyJoined("waiting in the lobby")
        room_name = messages.room_name(data)
        recorder_pass = messages.recorder_pass(data)
        if recorder_pass is not None:
            return await self._join_recorder(session, room_name, recorder_pass)
        name = messages.display_name(data)
        invitation = messages.token(data)
        ticket = messages.ticket(data)
        entrant = await self.gate.check(
            room_name, session_token=session.session_token, invitation=invitation
        )
        if room_name not in self.rooms.by_name:
            # A room's media lives on one node: its home, claimed by the first to open it.
            home = await self.cluster.home_elsewhere(room_name)
            if home is not None:
                raise WrongNode(f"{home.info.url}/r/{room_name}")
        room = self.rooms.get_or_create(room_name, entrant.title, entrant.mode)
        try:
            if room.holds_ticket(ticket, entrant):
                return await self._enter(session, room, name, entrant)
            if room.locked and not entrant.is_host:
                raise RoomLocked(room_name)
            if not entrant.lobby:
                return await self._enter(session, room, name, entrant)
            entry = await room.wait_in_lobby(name, entrant)
            await self.cluster.waiting(room.name, entry)
        finally:
            # A refused entrant must not leave an empty room behind.
            if session.participant is None and session.waiting is None:
                await self._close_if_empty(room)
        session.waiting, session.waiting_room = entry, room
        self.waiting_sids[entry.id] = session.sid
        self._metrics.lobby_waits.inc()
        return {"lobby": True, "entry_id": entry.id, **room.describe(), "role": entrant.role}

    async def _join_recorder(
        self, session: Session, room_name: str, recorder_pass: str
    ) -> dict[str, Any]:
        """A recording worker's hidden recorder joins the live room it records."""
        entrant = await self.gate.check_recorder(room_name, recorder_pass)
        room = self.rooms.by_name.get(room_name)
        if room is None or room.empty:
            home = await self.cluster.home_elsewhere(room_name)
            if home is not None:
                raise WrongNode(f"{home.info.url}/r/{room_name}")
            raise NotFound(f"the meeting of room {room_name!r} is not live on this node")
        self.recording.recorder_may_join(room, entrant)
        participant = await room.join("recorder", entrant)
        if room.recording_paused:
            room.recording_paused = False
            await self.to_room(room.name, "room_updated", room.describe())
        session.participant = participant
        self.participant_sids[participant.id] = session.sid
        await self.enter_room(session.sid, room.name)
        self._metrics.recorder_joins.inc()
        log.info(
            "recorder joined room=%s participant=%s recording=%s",
            room.name,
            participant.id,
            entrant.recording_id,
        )
        return {
            "participant_id": participant.id,
            "room": room.name,
            "participants": [p.describe() for p in room.people],
            "ice_servers": self._ice_servers,
            "role": participant.role,
            **room.describe(),
        }

    async def dismiss_recorders(self, room: Room) -> None:
        """The room's recording stopped: its hidden recorders are told and taken out."""
        for recorder in room.recorders:
            sid = self.participant_sids.get(recorder.id)
            session = self.sessions.get(sid) if sid is not None else None
            if session is None:
                await room.leave(recorder)
                continue
            await self.emit(
                "recording_stopped",
                {"recording_id": recorder.entrant.recording_id if recorder.entrant else None},
                to=sid,
            )
            async with session.lock:
                if session.participant is recorder:
                    session.participant = None
                    await self._recorder_left(session.sid, recorder)

    async def _recorder_left(self, sid: str, recorder: Participant) -> None:
        room = recorder.room
        await self.leave_room(sid, room.name)
        await room.leave(recorder)
        self.participant_sids.pop(recorder.id, None)
        log.info("recorder left room=%s participant=%s", room.name, recorder.id)
        if recorder.entrant is not None:
            try:
                lost = await self.recording.recorder_lost(room, recorder.entrant)
            except Exception:
                log.exception("room=%s: the lost recorder not noted", room.name)
                lost = True
            if lost and room.people:
                # Everyone sees that nothing is being written until a recorder is back.
                room.recording_paused = True
                await self.to_room(room.name, "room_updated", room.describe())

    async def _close_if_empty(self, room: Room) -> None:
        """Drop a room nobody is in (nor waiting for) and give up its home claim."""
        if room.empty and room.recording_id is not None:
            try:
                await self.recording.stop(room, "the node (the meeting emptied)")
            except Exception:
                log.exception("room=%s: recording not stopped cleanly", room.name)
        await self.rooms.discard_if_empty(room)
        if self.rooms.by_name.get(room.name) is not room:
            await self.cluster.release(room.name)

    async def _enter(
        self, session: Session, room: Room, name: str, entrant: Entrant
    ) -> dict[str, Any]:
        """Put the session's person into the room; the join result (ack or `admitted`)."""
        first = not room.people
        others = [p.describe() for p in room.people]
        participant = await room.join(name, entrant)
        await self.cluster.entered(participant)
        if first:
            try:
                await self.recording.room_live(room)
            except Exception:
                log.exception("room=%s: the cut-off recording did not resume", room.name)
        session.participant = participant
        self.participant_sids[participant.id] = session.sid
        await self.enter_room(session.sid, room.name)
        self._metrics.joins.inc()
        # The store's records must not keep anyone out of a meeting: failures are logged.
        if first:
            try:
                await self.gate.started(room.name)
            except Exception:
                log.exception("room=%s: could not record the meeting start", room.name)
        try:
            participant.stay_id = await self.gate.entered(entrant, name)
        except Exception:
            log.exception(
                "room=%s participant=%s: attendance not recorded", room.name, participant.id
            )
        result = {
            "participant_id": participant.id,
            "room": room.name,
            "participants": others,
            "ice_servers": self._ice_servers,
            "role": participant.role,
            "ticket": participant.ticket,
            **room.describe(),
        }
        result["hands"] = room.hands_list()["queue"]
        if participant.is_host:
            result["waiting"] = room.lobby_list()
        return result

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
        if session.waiting is not None:
            await self._leave_lobby(session)
            return {}
        self._joined(session)
        await self._leave_room(session)
        return {}

    async def _leave_room(self, session: Session, dropped: bool = False) -> None:
        """Take the session's person out of its room (or lobby). `dropped`: the socket went
        without a goodbye, shown as reconnecting in presence until its time runs out."""
        if session.waiting is not None:
            await self._leave_lobby(session)
        participant = session.participant
        if participant is None:
            return
        session.participant = None
        room = participant.room
        if participant.hidden:
            await self._recorder_left(session.sid, participant)
            await self._close_if_empty(room)
            return
        await self.leave_room(session.sid, room.name)
        await room.leave(participant)
        if dropped:
            await self.cluster.dropped(participant)
        else:
            await self.cluster.gone(room.name, participant.id)
        self.participant_sids.pop(participant.id, None)
        self._metrics.leaves.inc()
        # Two tabs of one person share a stay: it ends when the last of them leaves.
        shared = any(p.stay_id == participant.stay_id for p in room.participants.values())
        if participant.stay_id is not None and not shared:
            try:
                await self.gate.exited(participant.stay_id)
            except Exception:
                log.exception(
                    "room=%s participant=%s: attendance exit not recorded",
                    room.name,
                    participant.id,
                )
        await self._close_if_empty(room)

    async def _leave_lobby(self, session: Session) -> None:
        entry, room = session.waiting, session.waiting_room
        session.waiting = session.waiting_room = None
        if entry is None or room is None:
            return
        self.waiting_sids.pop(entry.id, None)
        await room.leave_lobby(entry)
        await self.cluster.gone(room.name, entry.id)
        await self._close_if_empty(room)

    # -- host actions -------------------------------------------------------------------------

    def _host(self, session: Session) -> Participant:
        if session.waiting is not None:
            raise Forbidden("waiting in the lobby: only a host may do this")
        if session.removed:
            raise Forbidden("removed from the meeting by a host")
        participant = self._joined(session)
        if not participant.is_host:
            raise Forbidden("only a host may do this")
        return participant

    async def _admit(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        entry = host.room.take_from_lobby(messages.entry_id(data))
        sid = self.waiting_sids.pop(entry.id, None)
        waiting = self.sessions.get(sid) if sid is not None else None
        if waiting is None or waiting.waiting is not entry:
            await host.room.lobby_changed()
            raise NotFound(f"{entry.id} is no longer waiting")
        waiting.waiting = waiting.waiting_room = None
        await self.cluster.gone(host.room.name, entry.id)
        # The admitted socket's own lock: a concurrent `leave` of theirs waits for this.
        async with waiting.lock:
            result = await self._enter(waiting, host.room, entry.name, entry.entrant)
        log.info(
            "admit room=%s entry=%s participant=%s by=%s",
            host.room.name,
            entry.id,
            result["participant_id"],
            host.id,
        )
        self._metrics.host_actions.labels(action="admit").inc()
        await self.emit("admitted", result, to=waiting.sid)
        await host.room.lobby_changed()
        return {"participant_id": result["participant_id"]}

    async def _deny(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        entry = host.room.take_from_lobby(messages.entry_id(data))
        sid = self.waiting_sids.pop(entry.id, None)
        waiting = self.sessions.get(sid) if sid is not None else None
        if waiting is not None and waiting.waiting is entry:
            waiting.waiting = waiting.waiting_room = None
            await self.emit("denied", {"room": host.room.name}, to=waiting.sid)
        await self.cluster.gone(host.room.name, entry.id)
        log.info("deny room=%s entry=%s by=%s", host.room.name, entry.id, host.id)
        self._metrics.host_actions.labels(action="deny").inc()
        await host.room.lobby_changed()
        return {}

    async def _remove(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target_id = messages.participant_id(data)
        target = host.room.target(target_id)
        if target is host:
            raise BadRequest("a host cannot remove themselves: leave instead")
        # Claimed before the first await: a second host removing the same person at the same
        # moment finds them gone instead of removing them twice.
        target.removed = True
        entrant = target.entrant
        if entrant is not None:
            # Stored first: from here on neither this account nor this link gets back in.
            try:
                await self.gate.remove(host.room.name, entrant, target.name)
            except BaseException:
                target.removed = False
                raise
        log.info("remove room=%s participant=%s by=%s", host.room.name, target.id, host.id)
        self._metrics.host_actions.labels(action="remove").inc()
        sid = self.participant_sids.get(target.id)
        removed = self.sessions.get(sid) if sid is not None else None
        if removed is not None:
            await self.emit("removed", {"room": host.room.name}, to=removed.sid)
            async with removed.lock:
                await self._leave_room(removed)
                removed.removed = True
        return {}

    def _counted(self, action: str) -> None:
        self._metrics.host_actions.labels(action=action).inc()

    async def _mute_participant(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target = host.room.target(messages.participant_id(data))
        muted = await host.room.force_mute(target, SPEAKING_SOURCES, host, "host")
        self._counted("mute")
        return {"tracks": [t.describe() for t in muted]}

    async def _mute_all(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        count = 0
        for target in list(host.room.participants.values()):
            if not target.is_host and not target.removed and not target.left:
                count += len(await host.room.force_mute(target, SPEAKING_SOURCES, host, "host"))
        self._counted("mute_all")
        return {"muted_tracks": count}

    async def _ask_unmute(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target = host.room.target(messages.participant_id(data))
        log.info("ask unmute room=%s participant=%s by=%s", host.room.name, target.id, host.id)
        await self.to_participant(target.id, "unmute_requested", {"by": host.name})
        self._counted("ask_unmute")
        return {}

    async def _stop_camera(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target = host.room.target(messages.participant_id(data))
        muted = await host.room.force_mute(target, ("camera",), host, "host")
        self._counted("stop_camera")
        return {"tracks": [t.describe() for t in muted]}

    async def _set_role(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target = host.room.target(messages.participant_id(data))
        role = messages.text(data, "role", 16)
        await host.room.set_role(host, target, role)
        self._counted("promote" if role == "cohost" else "demote")
        return {"participant": target.describe()}

    async def _spotlight(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target = (
            host.room.target(messages.participant_id(data))
            if data.get("participant_id") is not None
            else None
        )
        await host.room.set_spotlight(host, target)
        self._counted("spotlight")
        return host.room.describe()

    async def _raise_hand(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        participant = self._joined(session)
        await participant.room.raise_hand(participant)
        return participant.room.hands_list()

    async def _lower_hand(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        if data.get("participant_id") is None:
            participant = target = self._joined(session)
        else:
            # Someone else's hand: only a host may lower it.
            participant = self._host(session)
            target = participant.room.target(messages.participant_id(data))
        await participant.room.lower_hand(target, participant)
        return participant.room.hands_list()

    async def _grant_floor(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        target = host.room.target(messages.participant_id(data))
        await host.room.grant_floor(host, target)
        self._counted("grant_floor")
        return host.room.describe()

    async def _revoke_floor(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        await host.room.revoke_floor(host)
        self._counted("revoke_floor")
        return host.room.describe()

    async def _start_recording(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        account_id = host.entrant.account_id if host.entrant else None
        recording_id = await self.recording.start(host.room, account_id, f"participant {host.id}")
        self._counted("start_recording")
        await self.to_room(host.room.name, "room_updated", host.room.describe())
        return {"recording_id": recording_id, **host.room.describe()}

    async def _stop_recording(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        recording_id = await self.recording.stop(host.room, f"participant {host.id}")
        self._counted("stop_recording")
        await self.to_room(host.room.name, "room_updated", host.room.describe())
        return {"recording_id": recording_id, **host.room.describe()}

    async def _end(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        room = host.room.name
        await self.gate.end(room)
        self._metrics.host_actions.labels(action="end").inc()
        # Not under this session's lock: ending makes every session (this one too) leave.
        task = asyncio.ensure_future(self.end_meeting(room, f"participant {host.id}"))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return {}

    async def end_meeting(self, room_name: str, by: str) -> int:
        """Close the live room: everyone in it and in its lobby gets `meeting_ended` and is
        taken out. The store must already say the room ended. Returns how many were in it."""
        room = self.rooms.by_name.get(room_name)
        if room is None:
            return 0
        # People first: the recording stops as the last of them goes, and a recorder taken
        # out before that would count as lost.
        everyone = sorted(room.participants.values(), key=lambda p: p.hidden)
        sids = [self.participant_sids.get(p.id) for p in everyone]
        sids += [self.waiting_sids.get(entry_id) for entry_id in list(room.lobby)]
        log.info("meeting ended room=%s by=%s people=%d", room_name, by, len(sids))
        for sid in sids:
            session = self.sessions.get(sid) if sid is not None else None
            if session is None:
                continue
            await self.emit("meeting_ended", {"room": room_name}, to=sid)
            async with session.lock:
                await self._leave_room(session)
        try:
            await self.gate.close_stays(room_name)
        except Exception:
            log.exception("room=%s: open attendance stays not closed", room_name)
        return len(sids)

    async def _lock(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        host = self._host(session)
        locked = messages.flag(data, "locked")
        await host.room.set_locked(host, locked)
        self._metrics.host_actions.labels(action="lock" if locked else "unlock").inc()
        return host.room.describe()
