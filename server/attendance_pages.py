"""Attendance pages: a meeting's report (per person and per site) and its CSV export.

Only the room's hosts and admins see them. As on the room pages, a room the visitor has no
role in answers 404 like an unknown one (its existence is not disclosed); a member of the room
gets 403. Times are stored in UTC and shown in Vietnam's time.
"""

from __future__ import annotations

import logging
from datetime import datetime

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from server.attendance import VIETNAM, Report, attendance_csv, attendance_report
from server.auth import require_account
from server.pages import _render
from server.room_records import find_room, room_role
from server.store.db import Database
from server.store.models import Account

log = logging.getLogger(__name__)

SHOWN_TIME = "%d/%m/%Y %H:%M:%S"
CSV_LANGS = ("vi", "en")
ROLE_KEYS = frozenset({"host", "member", "guest"})


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


def shown_time(when: datetime | None) -> str:
    """`when` in Vietnam's time, to the second (``27/11/2026 08:00:05``); "" for None."""
    return when.astimezone(VIETNAM).strftime(SHOWN_TIME) if when is not None else ""


async def _report_for_host(
    request: web.Request, db: AsyncSession, account: Account
) -> Report | web.Response:
    """The report of the URL's room, or the error page: 404 unknown or not the visitor's room,
    403 for a member of it."""
    room = await find_room(db, request.match_info["slug"])
    role = await room_role(db, room, account) if room is not None else None
    if room is None or role is None:
        return _render(request, "error.html", "error", status=404, error="room_not_found")
    if role != "host":
        log.info("attendance room=%s refused to account %d (%s)", room.slug, account.id, role)
        return _render(request, "error.html", "error", status=403, error="auth_forbidden")
    return await attendance_report(db, room.slug)


async def attendance_page(request: web.Request) -> web.Response:
    """``GET /rooms/{slug}/attendance``: who attended, per person and per site (hosts)."""
    account = require_account(request)
    async with _database(request).session() as db:
        found = await _report_for_host(request, db, account)
    if isinstance(found, web.Response):
        return found
    return _render(
        request,
        "attendance.html",
        "attendance",
        report=found,
        shown_time=shown_time,
        role_keys=ROLE_KEYS,
    )


async def attendance_download(request: web.Request) -> web.Response:
    """``GET /rooms/{slug}/attendance.csv?lang=vi|en``: the per-person report as a CSV file
    (UTF-8 with a BOM; Vietnamese header unless ``lang=en``)."""
    account = require_account(request)
    async with _database(request).session() as db:
        found = await _report_for_host(request, db, account)
    if isinstance(found, web.Response):
        return found
    lang = request.query.get("lang", "vi")
    body = attendance_csv(found, lang if lang in CSV_LANGS else "vi")
    log.info("attendance csv room=%s for account %d", found.room_slug, account.id)
    return web.Response(
        body=body,
        headers={
            "Content-Type": "text/csv; charset=utf-8",
            # The slug is ASCII letters, digits, '-' and '_': safe in the header as it is.
            "Content-Disposition": f'attachment; filename="diem-danh-{found.room_slug}.csv"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


def setup_attendance_pages(app: web.Application) -> None:
    """Register the attendance pages on ``app`` (after `setup_room_pages`)."""
    app.router.add_get("/rooms/{slug}/attendance", attendance_page, name="room_attendance")
    app.router.add_get(
        "/rooms/{slug}/attendance.csv", attendance_download, name="room_attendance_csv"
    )
