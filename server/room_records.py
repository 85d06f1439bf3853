"""Rooms as scheduled in the store: create, read, list per account, update, end, removals.

Functions over an `AsyncSession`; they flush but never commit: the caller owns the transaction
(`async with db.session() as s, s.begin(): ...`). A room is upcoming, live or ended (see
`room_state`); `server.room.Room` is the live state of a room on one node, this is its record.

Who is in a room: its creator and admins are hosts; an account invited directly has the
invitation's role; an invited site invites the accounts of that site and of every site under
it (inviting a province invites its communes). Only hosts and admins create rooms.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from server.accounts import normalize_username
from server.errors import AlreadyExists, BadRequest, Forbidden, NotFound, RoomEnded
from server.store.models import (
    Account,
    InviteRole,
    Role,
    RoomInvite,
    RoomMode,
    RoomRecord,
    RoomRemoval,
    Site,
    utcnow,
)

log = logging.getLogger(__name__)

SLUG = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_TITLE_LENGTH = 200
MIN_DURATION_MINUTES = 5
MAX_DURATION_MINUTES = 24 * 60
MAX_DISPLAY_NAME_LENGTH = 200
ENDED_LIST_LIMIT = 100
# A random slug has 26**10 values: a collision is rare, a few tries make it vanishingly so.
SLUG_ATTEMPTS = 8
# The site tree is a handful of levels deep; the bound stops a cycle in bad data.
MAX_SITE_DEPTH = 32
CREATOR_ROLES = frozenset({Role.ADMIN, Role.HOST})
UPDATABLE = frozenset(
    {
        "title",
        "starts_at",
        "duration_minutes",
        "mode",
        "lobby",
        "site_codes",
        "member_usernames",
        "host_usernames",
    }
)

UPCOMING = "upcoming"
LIVE = "live"
ENDED = "ended"
STATES = (UPCOMING, LIVE, ENDED)


# --- validation ---------------------------------------------------------------------------


def random_slug() -> str:
    """A readable random room name like Google Meet's: `abc-defg-hij` (lowercase letters)."""
    letters = string.ascii_lowercase
    return "-".join("".join(secrets.choice(letters) for _ in range(n)) for n in (3, 4, 3))


def check_slug(slug: str) -> str:
    """`slug` when it is 1–64 characters of ASCII letters, digits, '-' and '_'; else BadRequest."""
    if not isinstance(slug, str) or not SLUG.fullmatch(slug):
        raise BadRequest(
            f"room name must be 1-64 characters of A-Z, a-z, 0-9, '-', '_' (got {slug!r})"
        )
    return slug


def _title(title: str) -> str:
    # NFC: the same Vietnamese title typed on two systems is the same string.
    text = unicodedata.normalize("NFC", str(title)).strip()
    if not text:
        raise BadRequest("title must not be empty")
    if len(text) > MAX_TITLE_LENGTH:
        raise BadRequest(f"title must have at most {MAX_TITLE_LENGTH} characters")
    return text


def _duration(minutes: int) -> int:
    if isinstance(minutes, bool) or not isinstance(minutes, int):
        raise BadRequest(f"duration must be a whole number of minutes (got {minutes!r})")
    if not MIN_DURATION_MINUTES <= minutes <= MAX_DURATION_MINUTES:
        raise BadRequest(
            f"duration must be {MIN_DURATION_MINUTES}-{MAX_DURATION_MINUTES} minutes "
            f"(got {minutes})"
        )
    return minutes


def _starts_at(when: datetime) -> datetime:
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise BadRequest("start time must be a datetime with a time zone")
    return when


def _mode(mode: str | RoomMode) -> RoomMode:
    try:
        return RoomMode(str(mode).strip().lower())
    except ValueError:
        choices = ", ".join(m.value for m in RoomMode)
        raise BadRequest(f"mode must be one of {choices} (got {mode!r})") from None


def _lobby(lobby: bool) -> bool:
    if not isinstance(lobby, bool):
        raise BadRequest(f"lobby must be true or false (got {lobby!r})")
    return lobby


def _unique(items: Iterable[str]) -> list[str]:
    """Items stripped, empties dropped, first occurrence kept."""
    seen: dict[str, None] = {}
    for item in items:
        text = str(item).strip()
        if text:
            seen.setdefault(text, None)
    return list(seen)


async def _sites(db: AsyncSession, codes: Sequence[str]) -> list[Site]:
    wanted = _unique(codes)
    if not wanted:
        return []
    found = {
        site.code: site
        for site in (await db.execute(select(Site).where(Site.code.in_(wanted)))).scalars()
    }
    for code in wanted:
        if code not in found:
            raise NotFound(f"no site with code {code!r}")
    return [found[code] for code in wanted]


async def _accounts(db: AsyncSession, usernames: Sequence[str]) -> list[Account]:
    wanted: list[str] = []
    for given in _unique(usernames):
        try:
            wanted.append(normalize_username(given))
        except BadRequest:
            raise NotFound(f"no account {given!r}") from None
    wanted = _unique(wanted)
    if not wanted:
        return []
    found = {
        account.username: account
        for account in (
            await db.execute(select(Account).where(Account.username.in_(wanted)))
        ).scalars()
    }
    for name in wanted:
        if name not in found:
            raise NotFound(f"no account {name!r}")
    return [found[name] for name in wanted]


def _invites(
    sites: Sequence[Site], members: Sequence[Account], hosts: Sequence[Account]
) -> list[RoomInvite]:
    """One invite per site and per account; an account named as both host and member is a host."""
    host_ids = {account.id for account in hosts}
    invites = [RoomInvite(site=site, role=InviteRole.MEMBER) for site in sites]
    invites += [RoomInvite(account=account, role=InviteRole.HOST) for account in hosts]
    invites += [
        RoomInvite(account=account, role=InviteRole.MEMBER)
        for account in members
        if account.id not in host_ids
    ]
    return invites


# --- reading ------------------------------------------------------------------------------


def _with_invites(query: Select[tuple[RoomRecord]]) -> Select[tuple[RoomRecord]]:
    return query.options(
        selectinload(RoomRecord.invites).selectinload(RoomInvite.site),
        selectinload(RoomRecord.invites).selectinload(RoomInvite.account),
        selectinload(RoomRecord.created_by),
    )


async def find_room(db: AsyncSession, slug: str) -> RoomRecord | None:
    """The room called `slug` with its invites (and their site and account), or None."""
    if not isinstance(slug, str) or not SLUG.fullmatch(slug):
        return None
    # populate_existing: a room already in this session gets its invites reloaded too.
    query = _with_invites(select(RoomRecord).where(RoomRecord.slug == slug))
    result = await db.execute(query.execution_options(populate_existing=True))
    return result.scalar_one_or_none()


async def get_room(db: AsyncSession, slug: str) -> RoomRecord:
    """The room called `slug` with its invites (and their site and account); NotFound else."""
    room = await find_room(db, slug)
    if room is None:
        raise NotFound(f"no room {slug!r}")
    return room


def room_state(room: RoomRecord, now: datetime) -> str:
    """The state: "ended" once ended, "live" once started, else "upcoming".

    The state follows what happened, not the clock: a room whose scheduled time has passed
    without anyone starting it stays upcoming. `now` is taken so that every caller passes the
    one clock it uses elsewhere (and so that a rule on the schedule can be added here)."""
    if room.ended_at is not None:
        return ENDED
    if room.started_at is not None:
        return LIVE
    return UPCOMING


async def site_lineage(db: AsyncSession, site_id: int | None) -> list[int]:
    """The id of the site and of each site above it, nearest first; [] for no site."""
    lineage: list[int] = []
    current = site_id
    while current is not None and current not in lineage and len(lineage) < MAX_SITE_DEPTH:
        lineage.append(current)
        current = (
            await db.execute(select(Site.parent_id).where(Site.id == current))
        ).scalar_one_or_none()
    return lineage


def _invited(account: Account, lineage: Sequence[int]) -> Any:
    """SQL condition: an invite names this account, or its site or a site above it."""
    condition = RoomInvite.account_id == account.id
    if lineage:
        condition = or_(condition, RoomInvite.site_id.in_(lineage))
    return condition


async def list_rooms(
    db: AsyncSession, account: Account, now: datetime
) -> dict[str, list[RoomRecord]]:
    """The rooms `account` may see, by state: upcoming by start time, live by start time, the
    last 100 ended, most recently ended first. Admins see every room; others the rooms they
    created or are invited to (directly, or through their site or a site above it)."""
    query = _with_invites(select(RoomRecord))
    if account.role != Role.ADMIN:
        lineage = await site_lineage(db, account.site_id)
        invited = exists().where(
            and_(RoomInvite.room_id == RoomRecord.id, _invited(account, lineage))
        )
        query = query.where(or_(RoomRecord.created_by_id == account.id, invited))
    open_rooms = (
        await db.execute(
            query.where(RoomRecord.ended_at.is_(None)).order_by(RoomRecord.starts_at, RoomRecord.id)
        )
    ).scalars()
    ended = (
        await db.execute(
            query.where(RoomRecord.ended_at.is_not(None))
            .order_by(RoomRecord.ended_at.desc(), RoomRecord.id.desc())
            .limit(ENDED_LIST_LIMIT)
        )
    ).scalars()
    grouped: dict[str, list[RoomRecord]] = {state: [] for state in STATES}
    for room in open_rooms:
        grouped[room_state(room, now)].append(room)
    grouped[ENDED] = list(ended)
    return grouped


async def room_role(db: AsyncSession, room: RoomRecord, account: Account) -> str | None:
    """The account's role: "host" for the creator, an admin or an invited host; "member" for an
    account invited directly or through its site or a site above it; None for anyone else.
    A disabled account has no role anywhere."""
    if account.disabled:
        return None
    if account.role == Role.ADMIN or room.created_by_id == account.id:
        return "host"
    lineage = await site_lineage(db, account.site_id)
    roles = set(
        (
            await db.execute(
                select(RoomInvite.role).where(
                    RoomInvite.room_id == room.id, _invited(account, lineage)
                )
            )
        ).scalars()
    )
    if InviteRole.HOST in roles:
        return "host"
    if roles:
        return "member"
    return None


async def is_host(db: AsyncSession, room: RoomRecord, account: Account) -> bool:
    """Whether `account` may run `room` (see `room_role`)."""
    return await room_role(db, room, account) == "host"


def can_create_rooms(account: Account) -> bool:
    """Admins and hosts schedule rooms; members and archivists do not."""
    return account.role in CREATOR_ROLES and not account.disabled


# --- writing ------------------------------------------------------------------------------


async def _slug_taken(db: AsyncSession, slug: str) -> bool:
    found = await db.execute(select(RoomRecord.id).where(RoomRecord.slug == slug).limit(1))
    return found.first() is not None


async def create_room(
    db: AsyncSession,
    creator: Account,
    *,
    title: str,
    starts_at: datetime,
    duration_minutes: int,
    mode: str,
    lobby: bool,
    site_codes: Sequence[str] = (),
    member_usernames: Sequence[str] = (),
    host_usernames: Sequence[str] = (),
    slug: str | None = None,
) -> RoomRecord:
    """Schedule a room. Forbidden unless `creator` is an admin or a host; BadRequest for a bad
    field; NotFound naming an unknown site code or username; AlreadyExists for a taken `slug`.
    Without `slug` the room gets a random readable one (`abc-defg-hij`)."""
    if not can_create_rooms(creator):
        raise Forbidden("only hosts and admins may schedule rooms")
    fields = {
        "title": _title(title),
        "starts_at": _starts_at(starts_at),
        "duration_minutes": _duration(duration_minutes),
        "mode": _mode(mode),
        "lobby": _lobby(lobby),
    }
    if slug is not None:
        check_slug(slug)
    sites = await _sites(db, site_codes)
    members = await _accounts(db, member_usernames)
    hosts = await _accounts(db, host_usernames)

    for _attempt in range(1 if slug is not None else SLUG_ATTEMPTS):
        name = slug if slug is not None else random_slug()
        if await _slug_taken(db, name):
            if slug is not None:
                raise AlreadyExists(f"room name {slug!r} is taken")
            continue
        room = RoomRecord(
            slug=name,
            # By id: `creator` may come from another session (the signed-in request's).
            created_by_id=creator.id,
            invites=_invites(sites, members, hosts),
            **fields,
        )
        try:
            # A savepoint: another writer may take the name between the check and the insert,
            # and the caller's transaction must survive that.
            async with db.begin_nested():
                db.add(room)
                await db.flush()
        except IntegrityError:
            if slug is not None:
                raise AlreadyExists(f"room name {slug!r} is taken") from None
            continue
        log.info("room created room=%s by account %d", room.slug, creator.id)
        return await get_room(db, room.slug)
    raise AlreadyExists(f"no free room name after {SLUG_ATTEMPTS} tries")


async def update_room(db: AsyncSession, account: Account, slug: str, **changes: Any) -> RoomRecord:
    """Change a room's schedule or invitations: only its hosts may (Forbidden), not once it has
    ended (RoomEnded). `site_codes`, `member_usernames` and `host_usernames` each replace that
    whole list of invitations; fields not given stay as they are."""
    unknown = sorted(set(changes) - UPDATABLE)
    if unknown:
        raise BadRequest(f"cannot change {', '.join(unknown)}")
    room = await get_room(db, slug)
    if not await is_host(db, room, account):
        raise Forbidden("only the room's hosts may change it")
    if room.ended_at is not None:
        raise RoomEnded(f"room {slug!r} has ended")

    if "title" in changes:
        room.title = _title(changes["title"])
    if "starts_at" in changes:
        room.starts_at = _starts_at(changes["starts_at"])
    if "duration_minutes" in changes:
        room.duration_minutes = _duration(changes["duration_minutes"])
    if "mode" in changes:
        room.mode = _mode(changes["mode"])
    if "lobby" in changes:
        room.lobby = _lobby(changes["lobby"])
    if {"site_codes", "member_usernames", "host_usernames"} & set(changes):
        current_sites = [i.site for i in room.invites if i.site is not None]
        current_members = [
            i.account for i in room.invites if i.account is not None and i.role == InviteRole.MEMBER
        ]
        current_hosts = [
            i.account for i in room.invites if i.account is not None and i.role == InviteRole.HOST
        ]
        sites = (
            await _sites(db, changes["site_codes"]) if "site_codes" in changes else current_sites
        )
        members = (
            await _accounts(db, changes["member_usernames"])
            if "member_usernames" in changes
            else current_members
        )
        hosts = (
            await _accounts(db, changes["host_usernames"])
            if "host_usernames" in changes
            else current_hosts
        )
        # Replaced whole: the old rows go (delete-orphan), one row per invitee comes back.
        room.invites.clear()
        await db.flush()
        room.invites.extend(_invites(sites, members, hosts))
    await db.flush()
    log.info(
        "room updated room=%s by account %d: %s", room.slug, account.id, ", ".join(sorted(changes))
    )
    return room


async def end_room(db: AsyncSession, account: Account | None, slug: str) -> RoomRecord:
    """End a room: no one may join it any more. `account` None is the node itself (a schedule
    that ran out); otherwise only the room's hosts may (Forbidden). Ending twice is no error."""
    room = await get_room(db, slug)
    if account is not None and not await is_host(db, room, account):
        raise Forbidden("only the room's hosts may end it")
    if room.ended_at is None:
        room.ended_at = utcnow()
        await db.flush()
        who = f"account {account.id}" if account is not None else "the node"
        log.info("room ended room=%s by %s", room.slug, who)
    return room


async def mark_started(db: AsyncSession, slug: str) -> None:
    """Record when the room first went live; later calls change nothing. RoomEnded once the
    room has ended, NotFound for no such room."""
    room = await get_room(db, slug)
    if room.ended_at is not None:
        raise RoomEnded(f"room {slug!r} has ended")
    if room.started_at is not None:
        return
    # Conditional: two nodes starting the room at once keep the first time.
    result = await db.execute(
        update(RoomRecord)
        .where(RoomRecord.id == room.id, RoomRecord.started_at.is_(None))
        .values(started_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    if getattr(result, "rowcount", 0):
        log.info("room started room=%s", room.slug)


async def add_removal(
    db: AsyncSession,
    room: RoomRecord,
    *,
    account_id: int | None,
    token_id: str | None,
    display_name: str,
) -> None:
    """Remember that a host removed this account or this invitation token (its `jti`) from
    `room`: `is_removed` then refuses it. BadRequest when neither is given."""
    if account_id is None and not token_id:
        raise BadRequest("a removal names an account or an invitation token")
    name = unicodedata.normalize("NFC", str(display_name)).strip()[:MAX_DISPLAY_NAME_LENGTH]
    db.add(
        RoomRemoval(
            room_id=room.id,
            account_id=account_id,
            token_id=token_id or None,
            display_name=name,
        )
    )
    await db.flush()
    log.info(
        "room=%s: removed %s",
        room.slug,
        f"account {account_id}" if account_id is not None else "an invitation-link guest",
    )


async def is_removed(
    db: AsyncSession, room: RoomRecord, *, account_id: int | None, token_id: str | None
) -> bool:
    """Whether a host removed this account, or this invitation token, from `room`."""
    conditions = []
    if account_id is not None:
        conditions.append(RoomRemoval.account_id == account_id)
    if token_id:
        conditions.append(RoomRemoval.token_id == token_id)
    if not conditions:
        return False
    found = await db.execute(
        select(RoomRemoval.id).where(RoomRemoval.room_id == room.id, or_(*conditions)).limit(1)
    )
    return found.first() is not None
