"""Archive pages: search the recordings, a recording's detail with its player, files served
with HTTP range requests, the archival metadata, verification, the access log and retention.

Who sees what (issue 5, item 6; the rule is `recordings.can_see_recording`): archivists and
admins every recording; the hosts of a room the recordings of that room unless their access
level is confidential (mật); nobody else (a 403 page, also for an unknown recording, so that its
existence is not disclosed). A host's search lists only what that rule lets them see. Views,
downloads, verifications, metadata changes and deletions are written to the access log, which
only admins read. Times are shown in Vietnam's time.

Limit: a file is logged as viewed on the first request of a playback (no Range header, or a
range starting at byte 0); a browser that reopens a file from the start logs a second view.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.attendance import VIETNAM, attendance_report
from server.attendance_pages import shown_time
from server.auth import require_account
from server.errors import GiaoBanError, NotFound
from server.pages import _render
from server.recording_control import RECORDINGS_DIR
from server.recording_fields import keywords_of, sites_of
from server.recordings import (
    HOSTS_SEE_LEVELS,
    access_log,
    can_see_recording,
    delete_recording,
    get_recording,
    log_access,
    recordings_past_retention,
    search_recordings,
    update_metadata,
    verify_recording,
)
from server.room_pages import Problems
from server.room_records import is_host, site_lineage
from server.store.db import Database
from server.store.models import (
    AccessLevel,
    Account,
    InviteRole,
    MediaKind,
    Recording,
    RecordingAction,
    RecordingFile,
    Role,
    RoomInvite,
    RoomRecord,
)

log = logging.getLogger(__name__)

ARCHIVE_ROLES = (Role.ADMIN, Role.ARCHIVIST)
PAGE_SIZE = 25
ACCESS_LOG_SIZE = 200
MAX_FIELD_INPUT = 400
MAX_PAGE = 10_000
SAFE_FILENAME = re.compile(r"[^A-Za-z0-9._-]+")


# --- helpers --------------------------------------------------------------------------------


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


def recordings_root(request: web.Request) -> Path:
    """The folder `RecordingFile.path` is relative to: ``<data dir>/recordings``."""
    from server.app import CONFIG  # here: server.app imports this module

    return request.app[CONFIG].data_dir / RECORDINGS_DIR


def _address(request: web.Request) -> str:
    return request.remote or ""


def _forbidden(request: web.Request) -> web.Response:
    return _render(request, "error.html", "error", status=403, error="auth_forbidden")


def _not_found(request: web.Request) -> web.Response:
    return _render(request, "archive_not_found.html", "archive", status=404)


def _text(source: Any, name: str, limit: int = MAX_FIELD_INPUT) -> str:
    value = source.get(name)
    return value[:limit].strip() if isinstance(value, str) else ""


def parse_date(text: str) -> date | None:
    """A ``<input type=date>`` value (``2026-11-27``); None when it is not one."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def vietnam_day_start(day: date) -> datetime:
    """Midnight of `day` in Vietnam, as an aware datetime (a date typed in a form means that)."""
    return datetime.combine(day, time(), tzinfo=VIETNAM)


def shown_duration(seconds: float | None) -> str:
    """``1:02:05`` (hours, minutes, seconds); "" for None."""
    if seconds is None:
        return ""
    whole = max(0, round(seconds))
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def shown_size(size: int | None) -> str:
    """A byte count as people read it: ``512 B``, ``3.4 MB``; "" for None."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover - the loop always returns


def content_type(file: RecordingFile) -> str:
    """The Content-Type of a recording file, from its suffix and media kind."""
    suffix = Path(file.path).suffix.lower()
    medium = "audio" if file.media_kind is MediaKind.AUDIO else "video"
    if suffix == ".webm":
        return f"{medium}/webm"
    if suffix in (".mkv", ".mka"):
        return f"{medium}/x-matroska"
    if suffix == ".mp4":
        return "video/mp4"  # the composite
    return "application/octet-stream"


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII fallback name and the UTF-8 name (RFC 6266, RFC 5987)."""
    decomposed = unicodedata.normalize("NFKD", name.replace("đ", "d").replace("Đ", "D"))
    ascii_name = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    fallback = SAFE_FILENAME.sub("_", ascii_name).strip("._") or "recording"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_name(recording: Recording, file: RecordingFile) -> str:
    """What a downloaded file is called: record code (or title), who or "composite", suffix."""
    base = recording.record_code or recording.title
    what = file.participant_name or file.kind.value
    medium = f"-{file.media_kind.value}" if file.media_kind is not None else ""
    name = f"{base} - {what}{medium} - {file.id}{Path(file.path).suffix}"
    # No path separators or control characters in a name a browser saves.
    return "".join(ch for ch in name if ch not in "/\\" and unicodedata.category(ch)[0] != "C")


def logs_playback(request: web.Request) -> bool:
    """Whether this file request starts a playback or download, and so is logged: no Range
    header, or a range from byte 0 (a seek asks for a later range and is not logged again)."""
    if "Range" not in request.headers:
        return True
    try:
        start = request.http_range.start
    except ValueError:
        return False  # a malformed range gets 416 from FileResponse: nothing was read
    return start in (None, 0)


async def host_room_ids(db: AsyncSession, account: Account) -> list[int]:
    """The rooms `account` hosts: those it created, and those it is invited to as a host,
    directly or through its site or a site above it (as `room_records.room_role` says)."""
    lineage = await site_lineage(db, account.site_id)
    invited = RoomInvite.account_id == account.id
    if lineage:
        invited = or_(invited, RoomInvite.site_id.in_(lineage))
    as_host = select(RoomInvite.room_id).where(RoomInvite.role == InviteRole.HOST, invited)
    query = select(RoomRecord.id).where(
        or_(RoomRecord.created_by_id == account.id, RoomRecord.id.in_(as_host))
    )
    return list((await db.execute(query)).scalars())


def _may_archive(account: Account) -> bool:
    return account.role in ARCHIVE_ROLES and not account.disabled


async def _visible(
    request: web.Request, db: AsyncSession, account: Account
) -> Recording | web.Response:
    """The URL's recording when the account may see it; else the 403 page (404 only for an
    archivist or admin, who may know which recordings exist)."""
    try:
        recording = await get_recording(db, int(request.match_info["id"]))
    except NotFound:
        return _not_found(request) if _may_archive(account) else _forbidden(request)
    host = not _may_archive(account) and await is_host(db, recording.room, account)
    if not can_see_recording(account, recording, is_host_of_room=host):
        log.info("archive recording=%d refused to account %d", recording.id, account.id)
        return _forbidden(request)
    return recording


# --- GET /archive ---------------------------------------------------------------------------


async def archive_page(request: web.Request) -> web.Response:
    """``GET /archive``: search the recordings the visitor may see (paged, newest first)."""
    account = require_account(request)
    query = request.query
    form = {name: _text(query, name) for name in ("text", "from", "to", "site", "keyword")}
    problems = Problems(request)
    day_from, day_to = parse_date(form["from"]), parse_date(form["to"])
    if form["from"] and day_from is None:
        problems.add("archive.error_date_from")
    if form["to"] and day_to is None:
        problems.add("archive.error_date_to")
    try:
        page = min(max(int(_text(query, "page", 8) or "1"), 1), MAX_PAGE)
    except ValueError:
        page = 1
    async with _database(request).session() as db:
        room_ids: list[int] | None = None
        if not _may_archive(account):
            room_ids = await host_room_ids(db, account)
            if not room_ids and account.role != Role.HOST:
                return _forbidden(request)
        found: list[Recording] = []
        if not problems:
            try:
                found = await search_recordings(
                    db,
                    text=form["text"] or None,
                    site_code=form["site"] or None,
                    keyword=form["keyword"] or None,
                    date_from=vietnam_day_start(day_from) if day_from else None,
                    date_to=vietnam_day_start(day_to + timedelta(days=1)) if day_to else None,
                    room_ids=room_ids,
                    access_levels=HOSTS_SEE_LEVELS if room_ids is not None else None,
                    # One more than a page: whether there is a next page.
                    limit=PAGE_SIZE + 1,
                    offset=(page - 1) * PAGE_SIZE,
                )
            except GiaoBanError as exc:
                problems.add_error(exc)
        # The query already keeps to what the visitor may see; the one rule has the last word.
        found = [
            recording
            for recording in found
            if can_see_recording(
                account,
                recording,
                is_host_of_room=room_ids is not None and recording.room_id in room_ids,
            )
        ]

    def page_url(number: int) -> str:
        kept = {name: value for name, value in form.items() if value}
        return "/archive?" + urlencode({**kept, "page": number})

    return _render(
        request,
        "archive.html",
        "archive",
        status=400 if problems else 200,
        form=form,
        problems=problems.items,
        recordings=found[:PAGE_SIZE],
        page_number=page,
        prev_url=page_url(page - 1) if page > 1 else "",
        next_url=page_url(page + 1) if len(found) > PAGE_SIZE else "",
        keywords_of=keywords_of,
        shown_time=shown_time,
        shown_duration=shown_duration,
        can_archive=_may_archive(account),
    )


# --- GET /archive/{id}, metadata, verify ----------------------------------------------------


async def _detail(
    request: web.Request,
    db: AsyncSession,
    account: Account,
    recording: Recording,
    *,
    meta: dict[str, str] | None = None,
    problems: Problems | None = None,
    verified: list[Any] | None = None,
    status: int = 200,
) -> web.Response:
    report = await attendance_report(db, recording.room.slug)
    keywords = keywords_of(recording)
    retention = recording.retention_until
    return _render(
        request,
        "archive_detail.html",
        "archive",
        status=status,
        recording=recording,
        sites=sites_of(recording),
        keywords=keywords,
        files=recording.files,
        report=report,
        can_edit=_may_archive(account),
        meta=meta
        or {
            "record_code": recording.record_code or "",
            "retention_until": retention.isoformat() if retention else "",
            "access_level": recording.access_level.value,
            "keywords": ", ".join(keywords),
        },
        access_levels=[level.value for level in AccessLevel],
        problems=problems.items if problems else [],
        verified=verified,
        saved=request.query.get("saved") == "1",
        shown_time=shown_time,
        shown_duration=shown_duration,
        shown_size=shown_size,
    )


async def detail_page(request: web.Request) -> web.Response:
    """``GET /archive/{id}``: a recording's metadata, sites, files with a player, and the room's
    attendance; logged as a view."""
    account = require_account(request)
    async with _database(request).session() as db, db.begin():
        found = await _visible(request, db, account)
        if isinstance(found, web.Response):
            return found
        await log_access(db, found.id, account.id, RecordingAction.VIEW, _address(request))
        return await _detail(request, db, account, found)


async def metadata_submit(request: web.Request) -> web.StreamResponse:
    """``POST /archive/{id}/metadata``: set record code, retention, access level, keywords
    (archivists and admins); the page again with the errors when one is wrong."""
    account = require_account(request, *ARCHIVE_ROLES)
    form = await request.post()
    meta = {
        name: _text(form, name)
        for name in ("record_code", "retention_until", "access_level", "keywords")
    }
    meta["keywords"] = _text(form, "keywords", 2000)
    problems = Problems(request)
    until = parse_date(meta["retention_until"])
    if meta["retention_until"] and until is None:
        problems.add("archive.error_retention")
    async with _database(request).session() as db:
        found = await _visible(request, db, account)
        if isinstance(found, web.Response):
            return found
        if not problems:
            try:
                # Its own transaction: a refused change is rolled back before the page shows.
                async with db.begin_nested():
                    await update_metadata(
                        db,
                        found.id,
                        record_code=meta["record_code"],
                        retention_until=until,
                        access_level=meta["access_level"],
                        keywords=meta["keywords"],
                    )
                    await log_access(
                        db, found.id, account.id, RecordingAction.METADATA, _address(request)
                    )
            except GiaoBanError as exc:
                problems.add_error(exc)
        if problems:
            recording_id = found.id  # read before the rollback expires it
            await db.rollback()
            recording = await get_recording(db, recording_id)
            return await _detail(
                request, db, account, recording, meta=meta, problems=problems, status=400
            )
        await db.commit()
    raise web.HTTPSeeOther(f"/archive/{found.id}?saved=1")


async def verify_submit(request: web.Request) -> web.Response:
    """``POST /archive/{id}/verify``: recompute every closed file's SHA-256 and show OK or each
    mismatch (missing, unreadable, changed); logged as a verification."""
    account = require_account(request)
    async with _database(request).session() as db, db.begin():
        found = await _visible(request, db, account)
        if isinstance(found, web.Response):
            return found
        mismatches = await verify_recording(db, found.id, recordings_root(request))
        await log_access(db, found.id, account.id, RecordingAction.VERIFY, _address(request))
        return await _detail(request, db, account, found, verified=mismatches)


# --- GET /archive/{id}/files/{file_id} -------------------------------------------------------


async def file_response(request: web.Request) -> web.StreamResponse:
    """``GET /archive/{id}/files/{file_id}[?download=1]``: the file, with Range and If-Range
    handled by `web.FileResponse` (seeking in the player); a download is an attachment."""
    account = require_account(request)
    download = request.query.get("download") == "1"
    root = recordings_root(request).resolve()
    async with _database(request).session() as db, db.begin():
        found = await _visible(request, db, account)
        if isinstance(found, web.Response):
            return found
        file_id = int(request.match_info["file_id"])
        file = next((f for f in found.files if f.id == file_id), None)
        if file is None:
            return _not_found(request)
        path = (root / file.path).resolve()
        # The catalogue checks paths as they are written; a symlink or an edited row could
        # still point outside the recordings folder, so the resolved path is checked again.
        if not path.is_relative_to(root):
            log.warning("archive recording=%d file=%d escapes %s", found.id, file.id, root)
            return _forbidden(request)
        if not path.is_file():
            return _not_found(request)
        # HEAD reads nothing; a seek's later range is the same playback.
        if request.method == "GET" and logs_playback(request):
            action = RecordingAction.DOWNLOAD if download else RecordingAction.VIEW
            await log_access(db, found.id, account.id, action, _address(request))
        headers = {
            "Content-Type": content_type(file),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        }
        if download:
            headers["Content-Disposition"] = content_disposition(download_name(found, file))
    return web.FileResponse(path, headers=headers)


# --- GET /archive/access-log ----------------------------------------------------------------


async def access_log_page(request: web.Request) -> web.Response:
    """``GET /archive/access-log``: the newest accesses to recordings (admins)."""
    require_account(request, Role.ADMIN)
    async with _database(request).session() as db:
        entries = await access_log(db, limit=ACCESS_LOG_SIZE)
    return _render(
        request, "archive_access_log.html", "archive", entries=entries, shown_time=shown_time
    )


# --- GET /archive/retention, POST /archive/{id}/delete --------------------------------------


def _today() -> date:
    return datetime.now(UTC).astimezone(VIETNAM).date()


async def _retention(
    request: web.Request, db: AsyncSession, problems: Problems | None = None, status: int = 200
) -> web.Response:
    due = await recordings_past_retention(db, datetime.now(UTC).astimezone(VIETNAM))
    return _render(
        request,
        "archive_retention.html",
        "archive",
        status=status,
        recordings=due,
        problems=problems.items if problems else [],
        deleted=_text(request.query, "deleted", 100),
        shown_time=shown_time,
    )


async def retention_page(request: web.Request) -> web.Response:
    """``GET /archive/retention``: recordings past their retention date, for review
    (archivists and admins), each with a delete form."""
    require_account(request, *ARCHIVE_ROLES)
    async with _database(request).session() as db:
        return await _retention(request, db)


def _remove_files(root: Path, paths: list[str]) -> None:
    """Remove a deleted recording's files (blocking: run in a thread); a failure is logged, the
    catalogue entry being gone already."""
    resolved_root = root.resolve()
    for relative in paths:
        path = (root / relative).resolve()
        if not path.is_relative_to(resolved_root):
            log.warning("archive delete: %s escapes %s, left alone", relative, root)
            continue
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.error("archive delete: could not remove %s: %s", path, exc)


async def delete_submit(request: web.Request) -> web.StreamResponse:
    """``POST /archive/{id}/delete``: delete a recording past its retention date and its files
    (archivists and admins), only with the box ticked and the record code (or the id when it
    has none) typed again; logged."""
    account = require_account(request, *ARCHIVE_ROLES)
    form = await request.post()
    confirmed = form.get("confirm") == "1"
    typed = _text(form, "confirm_code", 100)
    problems = Problems(request)
    async with _database(request).session() as db:
        found = await _visible(request, db, account)
        if isinstance(found, web.Response):
            return found
        expected = found.record_code or str(found.id)
        if not confirmed:
            problems.add("archive.error_confirm_box")
        if typed != expected:
            problems.add("archive.error_confirm_code", code=expected)
        if found.retention_until is None or found.retention_until >= _today():
            problems.add("archive.error_not_due")
        paths: list[str] = []
        if not problems:
            try:
                async with db.begin_nested():
                    paths = await delete_recording(
                        db,
                        found.id,
                        confirmed=True,
                        account_id=account.id,
                        address=_address(request),
                    )
            except GiaoBanError as exc:
                problems.add_error(exc)
        if problems:
            await db.rollback()
            return await _retention(request, db, problems, status=400)
        await db.commit()
    # Only once the catalogue entry is gone for good: a failed commit keeps files and entry.
    await asyncio.to_thread(_remove_files, recordings_root(request), paths)
    log.warning(
        "archive recording=%d deleted by account %d, %d files", found.id, account.id, len(paths)
    )
    raise web.HTTPSeeOther("/archive/retention?" + urlencode({"deleted": expected}))


def setup_archive_pages(app: web.Application) -> None:
    """Register the archive pages on ``app``."""
    app.router.add_get("/archive", archive_page, name="archive")
    app.router.add_get("/archive/access-log", access_log_page, name="archive_access_log")
    app.router.add_get("/archive/retention", retention_page, name="archive_retention")
    app.router.add_get(r"/archive/{id:\d{1,18}}", detail_page, name="archive_detail")
    app.router.add_post(r"/archive/{id:\d{1,18}}/metadata", metadata_submit)
    app.router.add_post(r"/archive/{id:\d{1,18}}/verify", verify_submit)
    app.router.add_post(r"/archive/{id:\d{1,18}}/delete", delete_submit)
    app.router.add_get(
        r"/archive/{id:\d{1,18}}/files/{file_id:\d{1,18}}", file_response, name="archive_file"
    )
