"""Who may enter a room, in which role, and whether through the lobby.

Signaling asks the gate once per `join`: the gate reads the signed-in session (the browser's
session cookie, sent with the Socket.IO handshake) or verifies the invitation token, looks up
the scheduled room and answers with an `Entrant`, or raises. Live state (the lock, the lobby,
who was admitted before) stays with the room on the node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from server.attendance import close_open_stays, record_entry, record_exit
from server.auth import account_for_session_token
from server.errors import Forbidden, RoomEnded, Unauthenticated
from server.invitations import verify_invitation, verify_recorder_pass
from server.room_records import (
    add_removal,
    end_room,
    get_room,
    is_removed,
    mark_started,
    room_role,
    room_state,
)
from server.store.db import Database
from server.store.models import RoomRecord, Site

log = logging.getLogger(__name__)

HOST = "host"
MEMBER = "member"
GUEST = "guest"
RECORDER = "recorder"
_RANK = {GUEST: 0, MEMBER: 1, HOST: 2}


@dataclass(frozen=True)
class Entrant:
    """Someone the store lets into `room`: with `role`, and first into the lobby if `lobby`."""

    room: str
    title: str
    mode: str
    role: str
    lobby: bool
    account_id: int | None
    token_id: str | None
    name: str | None
    site_code: str | None
    site_name: str | None
    recording_id: int | None = None  # a recorder's: the recording it writes

    @property
    def is_host(self) -> bool:
        return self.role == HOST


class Gate:
    """Admission checks against the store and the node's secret key."""

    def __init__(self, database: Database, secret_key: bytes) -> None:
        self._database = database
        self._key = secret_key

    @property
    def database(self) -> Database:
        """The store the gate reads (signaling's chat keeps messages there too)."""
        return self._database

    async def check(
        self, slug: str, *, session_token: str | None, invitation: str | None
    ) -> Entrant:
        """The entrant these credentials make of `slug`; Unauthenticated, InvalidToken,
        NotFound, RoomEnded or Forbidden (removed) otherwise."""
        invite = verify_invitation(self._key, invitation, room=slug) if invitation else None
        async with self._database.session() as db:
            account = await account_for_session_token(db, session_token) if session_token else None
            if account is None and invite is None:
                raise Unauthenticated("no signed-in session and no invitation token")
            room = await get_room(db, slug)
            if room_state(room, datetime.now(UTC)) == "ended":
                raise RoomEnded(slug)
            account_id = account.id if account is not None else None
            token_id = invite.token_id if invite is not None else None
            if await is_removed(db, room, account_id=account_id, token_id=token_id):
                raise Forbidden("removed from this meeting by a host")
            invited_role = await room_role(db, room, account) if account is not None else None
            site_id = account.site_id if account is not None else None
            site = await db.get(Site, site_id) if site_id is not None else None
            if site is None and invite is not None and invite.site:
                site = await db.scalar(select(Site).where(Site.code == invite.site))
        roles = [r for r in (invited_role, invite.role if invite else None) if r is not None]
        # A signed-in account the room did not invite may still knock: it waits in the lobby.
        role = max(roles, key=_RANK.__getitem__) if roles else MEMBER
        lobby = role != HOST and (role == GUEST or room.lobby or not roles)
        return Entrant(
            room=room.slug,
            title=room.title,
            mode=room.mode.value,
            role=role,
            lobby=lobby,
            account_id=account_id,
            token_id=token_id,
            name=(account.display_name if account is not None else invite.name if invite else None),
            site_code=site.code if site is not None else (invite.site if invite else None),
            site_name=site.name if site is not None else None,
        )

    async def check_recorder(self, slug: str, recorder_pass: str) -> Entrant:
        """The hidden recorder a recording worker's pass makes of `slug`; InvalidToken,
        NotFound or RoomEnded otherwise (which recording is going on is the node's check)."""
        grant = verify_recorder_pass(self._key, recorder_pass, room=slug)
        async with self._database.session() as db:
            room = await get_room(db, slug)
            if room_state(room, datetime.now(UTC)) == "ended":
                raise RoomEnded(slug)
        return Entrant(
            room=room.slug,
            title=room.title,
            mode=room.mode.value,
            role=RECORDER,
            lobby=False,
            account_id=None,
            token_id=grant.token_id,
            name=None,
            site_code=None,
            site_name=None,
            recording_id=grant.recording_id,
        )

    async def end(self, slug: str) -> None:
        """Mark the room ended in the store (a host ended it from the meeting)."""
        async with self._database.session() as db, db.begin():
            await end_room(db, None, slug)

    async def remove(self, slug: str, entrant: Entrant, name: str) -> None:
        """Remember that a host removed this entrant: its account and its token stay out."""
        async with self._database.session() as db, db.begin():
            room = await get_room(db, slug)
            await add_removal(
                db,
                room,
                account_id=entrant.account_id,
                token_id=entrant.token_id,
                display_name=name,
            )

    async def entered(self, entrant: Entrant, name: str) -> int:
        """Record that the entrant is in the meeting now; the attendance stay's id."""
        async with self._database.session() as db, db.begin():
            return await record_entry(
                db,
                entrant.room,
                account_id=entrant.account_id,
                token_id=entrant.token_id,
                name=name,
                site_code=entrant.site_code,
                site_name=entrant.site_name,
                role=entrant.role,
                at=datetime.now(UTC),
            )

    async def exited(self, stay_id: int) -> None:
        """Record that the person of this attendance stay left the meeting."""
        async with self._database.session() as db, db.begin():
            await record_exit(db, stay_id, datetime.now(UTC))

    async def close_stays(self, slug: str | None = None) -> int:
        """Close attendance stays still open (of one room, or all after a restart)."""
        async with self._database.session() as db, db.begin():
            return await close_open_stays(db, datetime.now(UTC), slug)

    async def started(self, room: RoomRecord | str) -> None:
        """Record that the room's meeting has begun (the first person got in)."""
        slug = room if isinstance(room, str) else room.slug
        async with self._database.session() as db, db.begin():
            await mark_started(db, slug)
