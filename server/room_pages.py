"""Room pages: the signed-in user's rooms, scheduling a room, a room's detail with invitation
links for its hosts, and ending a room.

Times are entered and shown in Vietnam's time (Asia/Ho_Chi_Minh) and stored in UTC. Every form
carries the CSRF token (checked by `server.auth.csrf_middleware`). A room the visitor has no role
in answers 404, as an unknown one does: its existence is not disclosed.

Limit: ending a room here marks it ended in the store; people already in the meeting on a node
are not disconnected by this page (that is the signaling layer's part).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.accounts import USERNAME
from server.auth import require_account
from server.config import Config
from server.errors import GiaoBanError
from server.invitations import MAX_LIFETIME, ROLES, invitation_url, mint_invitation
from server.pages import CONFIG_KEY, STRINGS_KEY, Strings, _render, request_lang
from server.room_records import (
    MAX_DURATION_MINUTES,
    MAX_TITLE_LENGTH,
    MIN_DURATION_MINUTES,
    create_room,
    end_room,
    find_room,
    list_rooms,
    room_role,
    room_state,
)
from server.store.db import Database
from server.store.models import Account, Role, RoomMode, RoomRecord, Site

log = logging.getLogger(__name__)


def _vietnam_time() -> tzinfo:
    try:
        return ZoneInfo("Asia/Ho_Chi_Minh")
    except ZoneInfoNotFoundError:
        # No tz database on the machine: Vietnam has kept UTC+7 without daylight saving since
        # 1975, so the fixed offset gives the same times.
        return timezone(timedelta(hours=7), "ICT")


VIETNAM = _vietnam_time()
CREATOR_ROLES = (Role.ADMIN, Role.HOST)
DEFAULT_DURATION = 60
DEFAULT_INVITE_HOURS = 24
MAX_INVITE_HOURS = int(MAX_LIFETIME.total_seconds() // 3600)
# Form inputs are bounded before they are parsed: a list field is a few hundred names at most.
MAX_LIST_INPUT = 5000
MAX_FIELD_INPUT = 400
DATETIME_LOCAL = "%Y-%m-%dT%H:%M"
SHOWN_TIME = "%d/%m/%Y %H:%M"


# --- helpers --------------------------------------------------------------------------------


def _field(form: MultiDictProxy[Any], name: str, limit: int = MAX_FIELD_INPUT) -> str:
    value = form.get(name)
    return value[:limit].strip() if isinstance(value, str) else ""


def split_list(text: str) -> list[str]:
    """A comma (or newline) separated list as typed in a form: items stripped, empties and
    repeats dropped, order kept."""
    items: dict[str, None] = {}
    for part in text.replace("\n", ",").replace(";", ",").split(","):
        item = part.strip()
        if item:
            items.setdefault(item, None)
    return list(items)


def parse_local_time(text: str) -> datetime | None:
    """A ``datetime-local`` value (``2025-09-02T08:00``, seconds allowed) read as Vietnam time,
    as an aware datetime; None when it is not one."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is not None:
        return None
    return parsed.replace(tzinfo=VIETNAM)


def shown_time(when: datetime) -> str:
    """`when` as people in Vietnam read it: ``02/09/2025 08:00``."""
    return when.astimezone(VIETNAM).strftime(SHOWN_TIME)


@dataclass
class Problem:
    """One error shown on a form, in the page's language and the other one."""

    text: str
    alt: str


@dataclass
class Problems:
    """The errors of a form submission, each from an i18n key or a node error."""

    request: web.Request
    items: list[Problem] = field(default_factory=list)

    def add(self, key: str, **values: Any) -> None:
        strings: Strings = self.request.app[STRINGS_KEY]
        lang, _chosen = request_lang(self.request)
        other = next(code for code in strings if code != lang)
        self.items.append(
            Problem(_format(strings, lang, key, values), _format(strings, other, key, values))
        )

    def add_error(self, error: GiaoBanError) -> None:
        # The node's errors carry Vietnamese and English already; the detail is English.
        self.items.append(Problem(error.message, ""))

    def __bool__(self) -> bool:
        return bool(self.items)


def _format(strings: Strings, lang: str, key: str, values: dict[str, Any]) -> str:
    text = strings.get(lang, {}).get(key) or strings.get("vi", {}).get(key) or key
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


async def _unknown_sites(db: AsyncSession, codes: list[str]) -> list[str]:
    if not codes:
        return []
    found = set((await db.execute(select(Site.code).where(Site.code.in_(codes)))).scalars())
    return [code for code in codes if code not in found]


async def _unknown_accounts(db: AsyncSession, usernames: list[str]) -> list[str]:
    names = [name.lower() for name in usernames]
    valid = [name for name in names if USERNAME.fullmatch(name)]
    found: set[str] = set()
    if valid:
        query = select(Account.username).where(Account.username.in_(valid))
        found = set((await db.execute(query)).scalars())
    return [given for given, name in zip(usernames, names, strict=True) if name not in found]


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


def _secret_key(request: web.Request) -> bytes:
    from server.app import SECRET_KEY  # here: server.app imports this module

    return request.app[SECRET_KEY]


def _not_found(request: web.Request) -> web.Response:
    return _render(request, "error.html", "error", status=404, error="room_not_found")


# --- GET /rooms -------------------------------------------------------------------------------


async def rooms_page(request: web.Request) -> web.Response:
    """``GET /rooms``: the signed-in user's rooms, grouped upcoming / live / ended."""
    account = require_account(request)
    now = datetime.now(UTC)
    async with _database(request).session() as db:
        grouped = await list_rooms(db, account, now)
    return _render(
        request,
        "rooms.html",
        "rooms",
        groups=[(state, grouped[state]) for state in ("live", "upcoming", "ended")],
        can_create=account.role in CREATOR_ROLES,
        shown_time=shown_time,
    )


# --- GET/POST /rooms/new ----------------------------------------------------------------------


def _default_form() -> dict[str, Any]:
    # The next full hour, Vietnam time: the usual start of a briefing.
    start = (datetime.now(VIETNAM) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)
    return {
        "title": "",
        "starts_at": start.strftime(DATETIME_LOCAL),
        "duration": str(DEFAULT_DURATION),
        "mode": RoomMode.DISCUSSION.value,
        "lobby": True,
        "sites": "",
        "members": "",
        "hosts": "",
    }


def _new_form(
    request: web.Request,
    values: dict[str, Any],
    problems: Problems | None = None,
    status: int = 200,
) -> web.Response:
    return _render(
        request,
        "room_new.html",
        "room-new",
        status=status,
        form=values,
        problems=problems.items if problems else [],
        modes=[mode.value for mode in RoomMode],
        min_duration=MIN_DURATION_MINUTES,
        max_duration=MAX_DURATION_MINUTES,
        max_title=MAX_TITLE_LENGTH,
    )


async def new_room_page(request: web.Request) -> web.Response:
    """``GET /rooms/new``: the scheduling form (hosts and admins)."""
    require_account(request, *CREATOR_ROLES)
    return _new_form(request, _default_form())


async def new_room_submit(request: web.Request) -> web.StreamResponse:
    """``POST /rooms/new``: schedule the room and go to its page; the form again with the
    errors (in both languages) when something is wrong."""
    account = require_account(request, *CREATOR_ROLES)
    form = await request.post()
    values: dict[str, Any] = {
        "title": _field(form, "title"),
        "starts_at": _field(form, "starts_at"),
        "duration": _field(form, "duration"),
        "mode": _field(form, "mode"),
        "lobby": form.get("lobby") is not None,
        "sites": _field(form, "sites", MAX_LIST_INPUT),
        "members": _field(form, "members", MAX_LIST_INPUT),
        "hosts": _field(form, "hosts", MAX_LIST_INPUT),
    }
    problems = Problems(request)
    if not values["title"]:
        problems.add("rooms.error_title_required")
    elif len(values["title"]) > MAX_TITLE_LENGTH:
        problems.add("rooms.error_title_long", max=MAX_TITLE_LENGTH)
    starts_at = parse_local_time(values["starts_at"])
    if starts_at is None:
        problems.add("rooms.error_start")
    try:
        duration = int(values["duration"])
    except ValueError:
        duration = 0
    if not MIN_DURATION_MINUTES <= duration <= MAX_DURATION_MINUTES:
        problems.add("rooms.error_duration", min=MIN_DURATION_MINUTES, max=MAX_DURATION_MINUTES)
    if values["mode"] not in {mode.value for mode in RoomMode}:
        problems.add("rooms.error_mode")
    sites = split_list(values["sites"])
    members = split_list(values["members"])
    hosts = split_list(values["hosts"])

    async with _database(request).session() as db, db.begin():
        unknown_sites = await _unknown_sites(db, sites)
        if unknown_sites:
            problems.add("rooms.error_unknown_sites", codes=", ".join(unknown_sites))
        unknown_accounts = await _unknown_accounts(db, [*members, *hosts])
        if unknown_accounts:
            problems.add("rooms.error_unknown_accounts", names=", ".join(unknown_accounts))
        if problems or starts_at is None:
            return _new_form(request, values, problems, status=400)
        try:
            room = await create_room(
                db,
                account,
                title=values["title"],
                starts_at=starts_at,
                duration_minutes=duration,
                mode=values["mode"],
                lobby=values["lobby"],
                site_codes=sites,
                member_usernames=members,
                host_usernames=hosts,
            )
        except GiaoBanError as exc:
            # What the page did not foresee (a name taken meanwhile, …): the node's own message.
            problems.add_error(exc)
            return _new_form(request, values, problems, status=400)
        slug = room.slug
    raise web.HTTPSeeOther(f"/rooms/{slug}")


# --- GET /rooms/{slug}, invitations, end ------------------------------------------------------


@dataclass
class InviteForm:
    """What the invitation form shows: the values typed and, once minted, the link."""

    role: str = "member"
    site: str = ""
    name: str = ""
    hours: str = str(DEFAULT_INVITE_HOURS)
    link: str = ""
    expires: str = ""


async def _visible_room(
    request: web.Request, db: AsyncSession, account: Account
) -> tuple[RoomRecord, str] | None:
    """The room of the URL and the account's role in it; None when it is unknown or the
    account has no role in it (both answer 404)."""
    room = await find_room(db, request.match_info["slug"])
    if room is None:
        return None
    role = await room_role(db, room, account)
    if role is None:
        return None
    return room, role


def _detail(
    request: web.Request,
    room: RoomRecord,
    role: str,
    *,
    invite: InviteForm | None = None,
    problems: Problems | None = None,
    status: int = 200,
) -> web.Response:
    ends_at = room.starts_at + timedelta(minutes=room.duration_minutes)
    return _render(
        request,
        "room_detail.html",
        "room-detail",
        status=status,
        room=room,
        state=room_state(room, datetime.now(UTC)),
        is_host=role == "host",
        starts=shown_time(room.starts_at),
        ends=shown_time(ends_at),
        sites=sorted((i.site for i in room.invites if i.site is not None), key=lambda s: s.code),
        people=sorted(
            ((i.account, i.role.value) for i in room.invites if i.account is not None),
            key=lambda pair: pair[0].username,
        ),
        invite=invite or InviteForm(),
        invite_roles=ROLES,
        max_invite_hours=MAX_INVITE_HOURS,
        problems=problems.items if problems else [],
    )


async def room_page(request: web.Request) -> web.Response:
    """``GET /rooms/{slug}``: who is invited and the room's state; for hosts, invitation links
    and the End button."""
    account = require_account(request)
    async with _database(request).session() as db:
        found = await _visible_room(request, db, account)
    if found is None:
        return _not_found(request)
    return _detail(request, *found)


async def invitation_submit(request: web.Request) -> web.Response:
    """``POST /rooms/{slug}/invitations``: mint an invitation link (hosts) and show it once."""
    account = require_account(request)
    form = await request.post()
    invite = InviteForm(
        role=_field(form, "role"),
        site=_field(form, "site", 64),
        name=_field(form, "name"),
        hours=_field(form, "hours"),
    )
    async with _database(request).session() as db:
        found = await _visible_room(request, db, account)
        if found is None:
            return _not_found(request)
        room, role = found
        if role != "host":
            return _render(request, "error.html", "error", status=403, error="auth_forbidden")
        problems = Problems(request)
        if room.ended_at is not None:
            problems.add("rooms.error_ended")
        if invite.role not in ROLES:
            problems.add("rooms.error_invite_role")
        try:
            hours = int(invite.hours)
        except ValueError:
            hours = 0
        if not 1 <= hours <= MAX_INVITE_HOURS:
            problems.add("rooms.error_invite_hours", max=MAX_INVITE_HOURS)
        if invite.site and await _unknown_sites(db, [invite.site]):
            problems.add("rooms.error_unknown_sites", codes=invite.site)
    if problems:
        return _detail(request, room, role, invite=invite, problems=problems, status=400)
    expires_at = datetime.now(UTC) + timedelta(hours=hours)
    try:
        token = mint_invitation(
            _secret_key(request),
            room=room.slug,
            role=invite.role,
            site=invite.site or None,
            expires_at=expires_at,
            name=invite.name or None,
        )
    except GiaoBanError as exc:
        problems.add_error(exc)
        return _detail(request, room, role, invite=invite, problems=problems, status=400)
    config: Config = request.app[CONFIG_KEY]
    base = config.public_url or f"{request.scheme}://{request.host}"
    invite.link = invitation_url(base, room.slug, token)
    invite.expires = shown_time(expires_at)
    # Never the token itself: whoever reads the log could join with it.
    log.info(
        "invitation minted room=%s role=%s site=%s for %d h by account %d",
        room.slug,
        invite.role,
        invite.site or "-",
        hours,
        account.id,
    )
    return _detail(request, room, role, invite=invite)


async def end_submit(request: web.Request) -> web.StreamResponse:
    """``POST /rooms/{slug}/end``: end the meeting (hosts); back to the room's page."""
    account = require_account(request)
    async with _database(request).session() as db, db.begin():
        found = await _visible_room(request, db, account)
        if found is None:
            return _not_found(request)
        room, role = found
        if role != "host":
            return _render(request, "error.html", "error", status=403, error="auth_forbidden")
        await end_room(db, account, room.slug)
    from server.app import SIGNALING  # the composition root imports this module

    # Ended in the store first: nobody gets back in while the live room closes.
    await request.app[SIGNALING].end_meeting(room.slug, f"account {account.id}")
    raise web.HTTPSeeOther(f"/rooms/{room.slug}")


def setup_room_pages(app: web.Application) -> None:
    """Register the room pages on ``app`` (after `setup_pages` and `setup_auth`)."""
    app.router.add_get("/rooms", rooms_page, name="rooms")
    # Before /rooms/{slug}: "new" is this form, not a room.
    app.router.add_get("/rooms/new", new_room_page, name="room_new")
    app.router.add_post("/rooms/new", new_room_submit)
    app.router.add_get("/rooms/{slug}", room_page, name="room_detail")
    app.router.add_post("/rooms/{slug}/invitations", invitation_submit, name="room_invitations")
    app.router.add_post("/rooms/{slug}/end", end_submit, name="room_end")
