"""The chat events of the `/meeting` namespace: `chat` and `chat_history` (PROTOCOL.md, "Chat").

A message is stored first, then sent as `chat_message` to the whole room, or to every host of
the room and its sender. Limits: `server.chat.clean_text`, and RATE messages per RATE_WINDOW
seconds per participant.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from server.chat import HISTORY_LIMIT, RateLimit, add_message, clean_text, recent_messages
from server.errors import BadRequest
from server.room import Participant
from server.store.models import ChatMessage

if TYPE_CHECKING:
    from signaling.namespace import MeetingNamespace, Session

log = logging.getLogger(__name__)

Handler = Callable[["Session", dict[str, Any]], Awaitable[dict[str, Any]]]

RATE = 10
RATE_WINDOW = 10.0
TO_ROOM = "room"
TO_HOSTS = "hosts"


def describe(message: ChatMessage, participant_id: str | None) -> dict[str, Any]:
    """The wire Message; `participant_id` is None for stored history (it is not kept)."""
    return {
        "id": f"m-{message.id}",
        "from": {
            "participant_id": participant_id,
            "name": message.sender_name,
            "role": message.sender_role,
        },
        "to": TO_HOSTS if message.to_hosts else TO_ROOM,
        "text": message.text,
        "sent_at": message.sent_at.isoformat(),
    }


class Chat:
    """Chat handlers of one namespace, with the per-participant rate limit."""

    def __init__(self, namespace: MeetingNamespace) -> None:
        self._namespace = namespace
        self._limit = RateLimit(RATE, RATE_WINDOW)

    async def send(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        """`chat`: store the message, deliver `chat_message`, ack `{"message": Message}`."""
        namespace = self._namespace
        participant = namespace._joined(session)
        to = data.get("to", TO_ROOM)
        if to not in (TO_ROOM, TO_HOSTS):
            raise BadRequest("'to' must be 'room' or 'hosts'")
        text = clean_text(data.get("text"))
        # Counted only once the message is well formed: a typo does not eat the allowance.
        self._limit.hit(participant.id)
        room = participant.room
        entrant = participant.entrant
        async with namespace.gate.database.session() as db, db.begin():
            stored = await add_message(
                db,
                room.name,
                sender_account_id=entrant.account_id if entrant is not None else None,
                sender_name=participant.name,
                sender_role=participant.role,
                to_hosts=to == TO_HOSTS,
                text=text,
                at=datetime.now(UTC),
            )
        message = describe(stored, participant.id)
        log.info(
            "chat room=%s participant=%s message=%s to=%s chars=%d",
            room.name,
            participant.id,
            message["id"],
            to,
            len(text),
        )
        namespace.metrics.chat_messages.labels(to=to).inc()
        if to == TO_ROOM:
            await namespace.to_room(room.name, "chat_message", message)
        else:
            for receiver in _hosts_and(room.hosts, participant):
                await namespace.to_participant(receiver.id, "chat_message", message)
        return {"message": message}

    async def history(self, session: Session, data: dict[str, Any]) -> dict[str, Any]:
        """`chat_history`: the room's newest messages this participant may see, oldest first."""
        participant = self._namespace._joined(session)
        entrant = participant.entrant
        async with self._namespace.gate.database.session() as db:
            found = await recent_messages(
                db,
                participant.room.name,
                include_private=participant.is_host,
                sender_account_id=entrant.account_id if entrant is not None else None,
                limit=HISTORY_LIMIT,
            )
        return {"messages": [describe(m, None) for m in found]}


def _hosts_and(hosts: list[Participant], sender: Participant) -> list[Participant]:
    """Who receives a private message: every host, and its sender once."""
    return hosts if any(h is sender for h in hosts) else [*hosts, sender]


def chat_handlers(namespace: MeetingNamespace) -> dict[str, Handler]:
    """The chat events for `namespace._handlers` (event name -> handler)."""
    chat = Chat(namespace)
    return {"chat": chat.send, "chat_history": chat.history}
