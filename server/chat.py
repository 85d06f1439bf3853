"""Chat kept with the meeting: what a message may contain, storing it, reading it back.

Store functions take an `AsyncSession`; they flush but never commit (the caller owns the
transaction). A message goes to the whole room, or privately to the room's hosts. Text is kept
verbatim (after NFC normalisation): the browser renders it as text, never as HTML.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.errors import BadRequest, NotFound, TooMany
from server.store.models import ChatMessage, RoomRecord

log = logging.getLogger(__name__)

MAX_CHAT_CHARS = 1000
MAX_CHAT_LINES = 20
HISTORY_LIMIT = 200
# Bidirectional embeddings, overrides and isolates: they can make a message read as something
# else than it is (CVE-2021-42574, "Trojan Source"), so they are refused like control characters.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def clean_text(value: object) -> str:
    """The message text as stored: NFC, stripped, 1–MAX_CHAT_CHARS characters in at most
    MAX_CHAT_LINES lines, no control characters but newline; BadRequest otherwise."""
    if not isinstance(value, str):
        raise BadRequest("'text' must be a string")
    # Windows line ends and lone CRs are line breaks too; everything else must be visible.
    text = unicodedata.normalize("NFC", value.replace("\r\n", "\n").replace("\r", "\n")).strip()
    if not text:
        raise BadRequest("'text' is empty")
    if len(text) > MAX_CHAT_CHARS:
        raise BadRequest(f"'text' is longer than {MAX_CHAT_CHARS} characters")
    for ch in text:
        # Cs: a lone surrogate (JSON allows "\ud800"); PostgreSQL could not store it.
        if (ch != "\n" and unicodedata.category(ch) in ("Cc", "Cs")) or ch in _BIDI_CONTROLS:
            raise BadRequest(f"'text' has a control character U+{ord(ch):04X}")
    if text.count("\n") >= MAX_CHAT_LINES:
        raise BadRequest(f"'text' has more than {MAX_CHAT_LINES} lines")
    return text


async def add_message(
    db: AsyncSession,
    room_slug: str,
    *,
    sender_account_id: int | None,
    sender_name: str,
    sender_role: str,
    to_hosts: bool,
    text: str,
    at: datetime,
) -> ChatMessage:
    """Store a message in room `room_slug` (NotFound if not scheduled); `text` is checked
    with `clean_text` first. Flushes, so the returned message has its id."""
    cleaned = clean_text(text)
    room_id = await db.scalar(select(RoomRecord.id).where(RoomRecord.slug == room_slug))
    if room_id is None:
        raise NotFound(f"room {room_slug!r}")
    message = ChatMessage(
        room_id=room_id,
        sender_account_id=sender_account_id,
        sender_name=sender_name,
        sender_role=sender_role,
        to_hosts=to_hosts,
        text=cleaned,
        sent_at=at,
    )
    db.add(message)
    await db.flush()
    return message


async def recent_messages(
    db: AsyncSession,
    room_slug: str,
    *,
    include_private: bool,
    sender_account_id: int | None = None,
    limit: int = HISTORY_LIMIT,
) -> list[ChatMessage]:
    """The newest `limit` messages of the room, oldest first: room messages, and the private
    ones to hosts when `include_private` (hosts), or else those `sender_account_id` sent.

    A participant without an account (an invitation link) sees its own private messages only
    live: nothing stored tells them apart from another link's."""
    query = (
        select(ChatMessage)
        .join(RoomRecord, RoomRecord.id == ChatMessage.room_id)
        .where(RoomRecord.slug == room_slug)
    )
    if not include_private:
        visible = [ChatMessage.to_hosts.is_(False)]
        if sender_account_id is not None:
            visible.append(ChatMessage.sender_account_id == sender_account_id)
        query = query.where(or_(*visible))
    # Newest first to apply the limit; `id` breaks ties between messages of the same instant.
    query = query.order_by(ChatMessage.sent_at.desc(), ChatMessage.id.desc()).limit(limit)
    found: Sequence[ChatMessage] = (await db.scalars(query)).all()
    return list(reversed(found))


class RateLimit:
    """At most `limit` events per `window` seconds for each key (a sliding window).

    Keys idle for a whole window are forgotten once more than `max_keys` are held, so the
    table stays bounded however many participants come and go."""

    def __init__(
        self,
        limit: int,
        window: float,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self._max_keys = max_keys
        self._clock = clock
        self._events: dict[str, deque[float]] = {}

    def hit(self, key: str) -> None:
        """Count one event for `key`; TooMany (not counted) when the window is full."""
        now = self._clock()
        events = self._events.get(key)
        if events is None:
            if len(self._events) >= self._max_keys:
                self._forget_idle(now)
            events = self._events[key] = deque()
        while events and events[0] <= now - self.window:
            events.popleft()
        if len(events) >= self.limit:
            wait = events[0] + self.window - now
            raise TooMany(f"at most {self.limit} in {self.window:g} s; wait {wait:.1f} s")
        events.append(now)

    def forget(self, key: str) -> None:
        self._events.pop(key, None)

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, ev in self._events.items() if not ev or ev[-1] <= now - self.window]
        for key in idle:
            del self._events[key]

    def __len__(self) -> int:
        return len(self._events)
