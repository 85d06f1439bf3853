"""The live dashboard pages: the site tree with who is online (admins and hosts) and one room's
invited sites with their state (that room's hosts and admins).

Each page is a shell; web/static/js/dashboard.js fills it from the page's ``data.json`` every
two seconds, so it changes without a reload. The figures come from the presence seam (this
node's only in the embedded default, the whole cluster's with Redis) and the store, assembled
by server.dashboard. The JSON answers are never cached, and answer errors as JSON (401 signed
out, 403, 404, 503 when presence is unreachable) so that the page can say it is not updating.

Limits: every poll reads the whole site tree (a few thousand rows for the whole country) and
every participant; hosts see the whole tree and every live meeting's title, as operators do.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server.auth import current_account, require_account
from server.dashboard import (
    SiteRow,
    build_dashboard,
    count_states,
    descendants,
    room_sites_state,
)
from server.errors import Forbidden, GiaoBanError, NotFound, Unauthenticated
from server.pages import _render
from server.presence import Presence, PresenceUnavailable
from server.room_records import find_room, room_role, room_state
from server.store.db import Database
from server.store.models import Account, AttendanceStay, Role, RoomRecord, Site

log = logging.getLogger(__name__)

VIEWER_ROLES = (Role.ADMIN, Role.HOST)
NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


def _presence(request: web.Request) -> Presence:
    from server.app import CLUSTER  # here: server.app imports this module

    return request.app[CLUSTER].presence


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, headers=NO_STORE)


def _json_error(error: GiaoBanError, status: int) -> web.Response:
    return _json(error.to_wire(), status)


def _json_account(request: web.Request, *roles: Role) -> Account:
    """The signed-in account for a JSON answer: a JSON 401/403 instead of the sign-in redirect
    (a fetch would follow it to an HTML page it cannot read)."""
    account = current_account(request)
    if account is None:
        raise web.HTTPUnauthorized(**_json_body(Unauthenticated("sign in")))
    if roles and account.role not in roles:
        raise web.HTTPForbidden(**_json_body(Forbidden("dashboard")))
    return account


def _json_body(error: GiaoBanError) -> dict[str, Any]:
    return {
        "text": json.dumps(error.to_wire()),
        "content_type": "application/json",
        "headers": NO_STORE,
    }


async def site_rows(db: AsyncSession) -> list[SiteRow]:
    """Every site, parents named by code, ordered by code."""
    result = await db.execute(
        select(Site.id, Site.code, Site.name, Site.level, Site.parent_id).order_by(Site.code)
    )
    rows = result.all()
    code_of = {row.id: row.code for row in rows}
    return [
        SiteRow(
            code=row.code,
            name=row.name,
            level=str(row.level),  # a StrEnum: its value
            parent=code_of.get(row.parent_id) if row.parent_id is not None else None,
        )
        for row in rows
    ]


# --- the whole tree ---------------------------------------------------------------------------


async def dashboard_page(request: web.Request) -> web.Response:
    """``GET /dashboard``: the live site tree (admins and hosts); filled by dashboard.js."""
    require_account(request, *VIEWER_ROLES)
    return _render(request, "dashboard.html", "dashboard")


async def dashboard_data(request: web.Request) -> web.Response:
    """``GET /dashboard/data.json``: `server.dashboard.build_dashboard` of now, plus ``now``."""
    _json_account(request, *VIEWER_ROLES)
    presence = _presence(request)
    try:
        nodes = await presence.nodes()
        participants = await presence.participants()
    except PresenceUnavailable as exc:
        log.warning("dashboard: presence unavailable: %s", exc)
        return _json_error(exc, 503)
    slugs = sorted({p.room for p in participants})
    async with _database(request).session() as db:
        sites = await site_rows(db)
        titles: dict[str, str] = {}
        if slugs:
            found = await db.execute(
                select(RoomRecord.slug, RoomRecord.title).where(RoomRecord.slug.in_(slugs))
            )
            titles = {row.slug: row.title for row in found}
    data = build_dashboard(sites, nodes, participants, titles)
    data["now"] = time.time()
    data["recorders"] = await _recorders(request)
    return _json(data)


async def _recorders(request: web.Request) -> dict[str, Any] | None:
    """The `giaoban record` workers alive now, when they record this cluster's meetings."""
    from server.app import RECORDING  # here: server.app imports this module

    jobs = request.app[RECORDING].jobs
    if jobs is None:
        return None  # the nodes record themselves
    try:
        alive = await jobs.workers()
        pending = await jobs.pending()
    except (RedisError, OSError) as exc:
        log.warning("dashboard: recording workers unknown: %s", exc)
        return {"workers": [], "pending": None, "unknown": True}
    workers = [
        {
            "name": name,
            "recordings": [r for r in info.get("recordings", "").split(",") if r],
            "capacity": int(info["capacity"]) if info.get("capacity", "").isdigit() else None,
        }
        for name, info in sorted(alive.items())
    ]
    return {"workers": workers, "pending": pending, "unknown": False}


# --- one room ---------------------------------------------------------------------------------


async def _hosted_room(request: web.Request, account: Account) -> RoomRecord:
    """The room of the URL when `account` hosts it (admins host every room); NotFound when it
    is unknown or the account has no role in it (its existence is not disclosed), Forbidden
    for a member."""
    async with _database(request).session() as db:
        room = await find_room(db, request.match_info["slug"])
        role = await room_role(db, room, account) if room is not None else None
    if room is None or role is None:
        raise NotFound("room")
    if role != "host":
        raise Forbidden("room dashboard")
    return room


async def room_dashboard_page(request: web.Request) -> web.Response:
    """``GET /dashboard/rooms/{slug}``: the room's invited sites with their state (its hosts
    and admins); filled by dashboard.js."""
    account = require_account(request)
    try:
        room = await _hosted_room(request, account)
    except NotFound:
        return _render(request, "error.html", "error", status=404, error="room_not_found")
    except Forbidden:
        return _render(request, "error.html", "error", status=403, error="auth_forbidden")
    return _render(request, "dashboard_room.html", "dashboard-room", room=room)


async def room_dashboard_data(request: web.Request) -> web.Response:
    """``GET /dashboard/rooms/{slug}/data.json``: ``room`` (slug, title, state), ``sites`` (see
    `server.dashboard.room_sites_state`), ``counts`` per state, ``no_site`` (names of people in
    the meeting without a site) and ``now``."""
    account = _json_account(request)
    try:
        room = await _hosted_room(request, account)
    except NotFound as exc:
        return _json_error(exc, 404)
    except Forbidden as exc:
        return _json_error(exc, 403)
    try:
        participants = await _presence(request).participants(room=room.slug)
    except PresenceUnavailable as exc:
        log.warning("dashboard: room=%s presence unavailable: %s", room.slug, exc)
        return _json_error(exc, 503)
    async with _database(request).session() as db:
        sites = await site_rows(db)
        attended = (
            await db.execute(
                select(AttendanceStay.site_code)
                .where(AttendanceStay.room_id == room.id, AttendanceStay.site_code.is_not(None))
                .distinct()
            )
        ).scalars()
        attended_codes = list(attended)
    # An invited province brings every commune below it, as room_role admits them.
    invited_roots = sorted(i.site.code for i in room.invites if i.site is not None)
    invited = descendants(invited_roots, sites)
    rows = room_sites_state(invited, {s.code: s for s in sites}, participants, attended_codes)
    return _json(
        {
            "room": {
                "slug": room.slug,
                "title": room.title,
                "state": room_state(room, datetime.now(UTC)),
            },
            "sites": rows,
            "counts": count_states(r for r in rows if r["invited"]),
            "no_site": [p.name for p in participants if p.site is None and p.state != "lobby"],
            "now": time.time(),
        }
    )


def setup_dashboard_pages(app: web.Application) -> None:
    """Register the dashboard pages and their JSON on ``app`` (after `setup_auth`)."""
    app.router.add_get("/dashboard", dashboard_page, name="dashboard")
    app.router.add_get("/dashboard/data.json", dashboard_data, name="dashboard_data")
    app.router.add_get("/dashboard/rooms/{slug}", room_dashboard_page, name="dashboard_room")
    app.router.add_get(
        "/dashboard/rooms/{slug}/data.json", room_dashboard_data, name="dashboard_room_data"
    )
