"""The recording catalogue: recordings of rooms, their files, archival metadata, the access log.

Functions over an `AsyncSession`; they flush but never commit: the caller owns the transaction
(`async with db.session() as s, s.begin(): ...`). The recorder and post-processing drive the
state (`RecordingState`: recording → (interrupted → recording as a new segment)* → processing →
ready | failed); archivists edit the metadata, search, verify and delete.

Fields are checked and folded for search in `server.recording_fields`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from server import recording_fields as fields
from server.errors import AlreadyExists, BadRequest, Conflict, NotFound, RoomEnded
from server.recording_fields import SiteRef
from server.store.models import (
    AccessLevel,
    Account,
    AttendanceStay,
    MediaKind,
    Recording,
    RecordingAccess,
    RecordingAction,
    RecordingFile,
    RecordingFileKind,
    RecordingState,
    Role,
    RoomRecord,
    Site,
    utcnow,
)

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_SEARCH_LIMIT = 200
MAX_ACCESS_LOG_LIMIT = 1000
ACTIVE = (RecordingState.RECORDING, RecordingState.INTERRUPTED)
STOPPABLE = ACTIVE
FAILABLE = (RecordingState.RECORDING, RecordingState.INTERRUPTED, RecordingState.PROCESSING)
SEES_EVERY_RECORDING = frozenset({Role.ADMIN, Role.ARCHIVIST})
# The access levels at which a meeting's hosts see its recordings: not confidential (mật).
HOSTS_SEE_LEVELS = frozenset({AccessLevel.INTERNAL, AccessLevel.RESTRICTED})


@dataclass(frozen=True)
class Mismatch:
    """A closed file whose bytes are not what was checksummed at close.

    `reason` is "missing", "unreadable" or "changed"; `actual` is None unless changed."""

    file_id: int
    path: str
    expected: str
    actual: str | None
    reason: str


def _refresh_search_text(recording: Recording) -> None:
    recording.search_text = fields.search_text(
        recording.title, recording.record_code, fields.keywords_of(recording)
    )


def _limit(limit: int, most: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise BadRequest(f"limit must be 1-{most} (got {limit!r})")
    return limit


# --- reading ---------------------------------------------------------------------------------


async def _recording(db: AsyncSession, recording_id: int) -> Recording:
    recording = await db.get(Recording, recording_id)
    if recording is None:
        raise NotFound(f"no recording {recording_id}")
    return recording


async def get_recording(db: AsyncSession, recording_id: int) -> Recording:
    """The recording with its files (by segment) and room; NotFound when there is none."""
    query = (
        select(Recording)
        .where(Recording.id == recording_id)
        .options(selectinload(Recording.files), selectinload(Recording.room))
        .execution_options(populate_existing=True)
    )
    recording = (await db.execute(query)).scalar_one_or_none()
    if recording is None:
        raise NotFound(f"no recording {recording_id}")
    return recording


async def active_recording(db: AsyncSession, room_slug: str) -> Recording | None:
    """The room's recording that is going on (recording or interrupted), or None."""
    query = (
        select(Recording)
        .join(RoomRecord, Recording.room_id == RoomRecord.id)
        .where(RoomRecord.slug == room_slug, Recording.state.in_(ACTIVE))
    )
    return (await db.execute(query)).scalar_one_or_none()


async def search_recordings(
    db: AsyncSession,
    *,
    text: str | None = None,
    site_code: str | None = None,
    keyword: str | None = None,
    date_from: datetime | None = None,
    date_to: datetime | None = None,
    room_ids: Collection[int] | None = None,
    access_levels: Collection[AccessLevel] | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[Recording]:
    """Recordings, newest first, with their room, matching every filter given.

    `text` is found in the title, the record code or a keyword (case-insensitive, with or
    without diacritics: see `server.recording_fields`); `keyword` is one whole keyword;
    `site_code` is the chair unit or a participating site (that site only, not the sites under
    it); `date_from` ≤ start < `date_to`. `room_ids` limits the result to those rooms (a host's
    own meetings), `access_levels` to those levels (`HOSTS_SEE_LEVELS` for a host: see
    `can_see_recording`)."""
    query = select(Recording).options(selectinload(Recording.room))
    if text is not None and fields.needle(text):
        query = query.where(Recording.search_text.contains(fields.needle(text), autoescape=True))
    if keyword is not None and fields.needle(keyword):
        query = query.where(
            Recording.search_text.contains(fields.keyword_needle(keyword), autoescape=True)
        )
    if site_code is not None and fields.nfc(site_code):
        code = fields.nfc(site_code)
        query = query.where(
            or_(
                Recording.chair_site_code == code,
                Recording.participating_sites.contains(
                    json.dumps({"code": code}, ensure_ascii=False, separators=(",", ":"))[1:-1],
                    autoescape=True,
                ),
            )
        )
    if date_from is not None:
        query = query.where(Recording.started_at >= fields.check_aware(date_from, "date_from"))
    if date_to is not None:
        query = query.where(Recording.started_at < fields.check_aware(date_to, "date_to"))
    if room_ids is not None:
        query = query.where(Recording.room_id.in_(list(room_ids)))
    if access_levels is not None:
        query = query.where(Recording.access_level.in_(list(access_levels)))
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest(f"offset must be 0 or more (got {offset!r})")
    query = (
        query.order_by(Recording.started_at.desc(), Recording.id.desc())
        .limit(_limit(limit, MAX_SEARCH_LIMIT))
        .offset(offset)
    )
    return list((await db.execute(query)).scalars())


async def recordings_past_retention(db: AsyncSession, now: datetime) -> list[Recording]:
    """Finished recordings whose retention date is before `now`'s date (in `now`'s time zone),
    oldest retention first, for an archivist to review; recordings without one are kept."""
    today = fields.check_aware(now, "now").date()
    query = (
        select(Recording)
        .options(selectinload(Recording.room))
        .where(
            Recording.retention_until.is_not(None),
            Recording.retention_until < today,
            Recording.state.not_in(ACTIVE),
        )
        .order_by(Recording.retention_until, Recording.id)
    )
    return list((await db.execute(query)).scalars())


def can_see_recording(
    account: Account | None, recording: Recording, *, is_host_of_room: bool
) -> bool:
    """Who may see a recording (its page, files, downloads, verification), by its access level:

    - archivists and admins: every recording, whatever its level;
    - a host of the recorded room: its own meetings' recordings when the level is internal or
      restricted (`HOSTS_SEE_LEVELS`), not when it is confidential (mật);
    - nobody else, nor a disabled account.

    `is_host_of_room` is the caller's answer from `room_records.is_host` for `recording.room`.
    A list of a host's recordings (`search_recordings` with `room_ids` and `access_levels`)
    must give the same answer: it filters on `HOSTS_SEE_LEVELS`, and the archive page checks
    each result with this function too."""
    if account is None or account.disabled:
        return False
    if account.role in SEES_EVERY_RECORDING:
        return True
    return is_host_of_room and recording.access_level in HOSTS_SEE_LEVELS


# --- the recorder's side -----------------------------------------------------------------------


async def start_recording(
    db: AsyncSession,
    room_slug: str,
    *,
    by_account_id: int | None,
    chair_site: SiteRef | None = None,
    sites: Iterable[SiteRef] = (),
) -> Recording:
    """A new recording of the room, state recording, segment 1, title taken from the room.

    NotFound for no such room, RoomEnded for an ended one, Conflict when the room already has a
    recording going on (recording or interrupted; the database holds this across nodes too)."""
    room = (
        await db.execute(select(RoomRecord).where(RoomRecord.slug == room_slug))
    ).scalar_one_or_none()
    if room is None:
        raise NotFound(f"no room {room_slug!r}")
    if room.ended_at is not None:
        raise RoomEnded(f"room {room_slug!r} has ended")
    if await active_recording(db, room_slug) is not None:
        raise Conflict(f"room {room_slug!r} is already being recorded")
    if chair_site is None:
        chair_site = await _site_of_account(db, by_account_id or room.created_by_id)
    chair = fields.site_refs([chair_site])[0] if chair_site is not None else None
    recording = Recording(
        room_id=room.id,
        title=room.title,
        chair_site_code=chair[0] if chair else None,
        chair_site_name=chair[1] if chair else None,
        started_by_account_id=by_account_id,
        started_at=utcnow(),
        state=RecordingState.RECORDING,
        processing_progress=0,
        keywords="[]",
        participating_sites=fields.sites_json(fields.site_refs(sites)),
        segments=1,
    )
    _refresh_search_text(recording)
    try:
        # A savepoint: losing the race to another node must not end the caller's transaction.
        async with db.begin_nested():
            db.add(recording)
    except IntegrityError:
        raise Conflict(f"room {room_slug!r} is already being recorded") from None
    log.info(
        "recording started room=%s recording=%d by_account=%s",
        room_slug,
        recording.id,
        by_account_id,
    )
    return recording


async def _site_of_account(db: AsyncSession, account_id: int) -> SiteRef | None:
    """The chair unit of a recording: the site of the account that starts it (or of the room's
    creator, for a start by a program or a guest link)."""
    row = (
        await db.execute(
            select(Site.code, Site.name)
            .join(Account, Account.site_id == Site.id)
            .where(Account.id == account_id)
        )
    ).first()
    return (row[0], row[1]) if row is not None else None


async def _sites_present(
    db: AsyncSession, room_id: int, start: datetime, end: datetime
) -> list[SiteRef]:
    """The sites of everyone who was in the meeting at some time between start and end."""
    rows = await db.execute(
        select(AttendanceStay.site_code, AttendanceStay.site_name)
        .where(
            AttendanceStay.room_id == room_id,
            AttendanceStay.site_code.is_not(None),
            AttendanceStay.joined_at < end,
            or_(AttendanceStay.left_at.is_(None), AttendanceStay.left_at > start),
        )
        .order_by(AttendanceStay.joined_at, AttendanceStay.id)
    )
    return [(code, name or code) for code, name in rows]


async def add_sites(db: AsyncSession, recording_id: int, sites: Iterable[SiteRef]) -> Recording:
    """Add sites that joined to the recording's participating sites (known ones are kept)."""
    recording = await _recording(db, recording_id)
    merged = fields.site_refs([*fields.sites_of(recording), *sites])
    recording.participating_sites = fields.sites_json(merged)
    await db.flush()
    return recording


async def add_file(
    db: AsyncSession,
    recording_id: int,
    *,
    kind: str | RecordingFileKind,
    segment: int,
    path: str,
    track_id: str | None = None,
    participant_name: str | None = None,
    site_code: str | None = None,
    site_name: str | None = None,
    media_kind: str | MediaKind | None = None,
    codec: str | None = None,
) -> RecordingFile:
    """Catalogue a file as it is opened; `path` is relative to the recordings folder.

    A track file needs its media kind (audio or video) and may come in any state but ready
    (a late file of a lost worker is still a file on disk); the composite comes only while
    processing. BadRequest for a bad value, Conflict for the wrong state or a path taken."""
    recording = await _recording(db, recording_id)
    try:
        file_kind = RecordingFileKind(str(kind))
    except ValueError:
        raise BadRequest(f"file kind must be track or composite (got {kind!r})") from None
    if isinstance(segment, bool) or not isinstance(segment, int):
        raise BadRequest(f"segment must be a whole number (got {segment!r})")
    if not 1 <= segment <= recording.segments:
        raise BadRequest(f"segment must be 1-{recording.segments} (got {segment})")
    media: MediaKind | None = None
    if file_kind is RecordingFileKind.TRACK:
        if recording.state is RecordingState.READY:
            raise Conflict(f"recording {recording_id} is ready: no more track files")
        try:
            media = MediaKind(str(media_kind))
        except ValueError:
            raise BadRequest(f"a track file is audio or video (got {media_kind!r})") from None
    elif recording.state is not RecordingState.PROCESSING:
        raise Conflict(f"recording {recording_id} is {recording.state}: not processing")
    file = RecordingFile(
        recording_id=recording.id,
        kind=file_kind,
        segment=segment,
        track_id=track_id[:64] if track_id else None,
        participant_name=fields.nfc(participant_name)[:200] if participant_name else None,
        site_code=fields.nfc(site_code)[:32] if site_code else None,
        site_name=fields.nfc(site_name)[:200] if site_name else None,
        media_kind=media,
        codec=codec[:64] if codec else None,
        path=fields.check_relative_path(path),
        created_at=utcnow(),
    )
    try:
        async with db.begin_nested():
            db.add(file)
    except IntegrityError:
        raise AlreadyExists(f"file {file.path!r} is already catalogued") from None
    log.info(
        "recording=%d file=%d opened kind=%s segment=%d path=%s",
        recording.id,
        file.id,
        file_kind,
        segment,
        file.path,
    )
    return file


async def close_file(
    db: AsyncSession,
    file_id: int,
    *,
    size: int,
    sha256: str,
    duration: float | None,
    media_started_at: datetime | None = None,
) -> RecordingFile:
    """Record a closed file's size, SHA-256 (64 lower-case hex) and duration in seconds, once.

    NotFound for no such file, Conflict when it is already closed, BadRequest for bad values."""
    file = await db.get(RecordingFile, file_id)
    if file is None:
        raise NotFound(f"no recording file {file_id}")
    if file.closed_at is not None:
        raise Conflict(f"recording file {file_id} is already closed")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRequest(f"size must be 0 or more bytes (got {size!r})")
    if not isinstance(sha256, str) or not SHA256.fullmatch(sha256):
        raise BadRequest("sha256 must be 64 lower-case hex digits")
    if duration is not None and (isinstance(duration, bool) or not duration >= 0):
        raise BadRequest(f"duration must be 0 or more seconds (got {duration!r})")
    file.size_bytes = size
    file.sha256 = sha256
    file.duration_seconds = None if duration is None else float(duration)
    file.media_started_at = media_started_at
    file.closed_at = utcnow()
    await db.flush()
    log.info(
        "recording=%d file=%d closed size=%d sha256=%s", file.recording_id, file.id, size, sha256
    )
    return file


async def _move(
    db: AsyncSession,
    recording_id: int,
    allowed: Collection[RecordingState],
    to: RecordingState,
    **changes: Any,
) -> Recording:
    """Move the recording from one of `allowed` to `to`; Conflict from any other state."""
    recording = await _recording(db, recording_id)
    if recording.state not in allowed:
        raise Conflict(f"recording {recording_id} is {recording.state}, not {to}-able")
    was = recording.state
    recording.state = to
    for name, value in changes.items():
        setattr(recording, name, value)
    await db.flush()
    log.info(
        "recording=%d room_id=%d %s → %s%s",
        recording.id,
        recording.room_id,
        was,
        to,
        f" reason={changes['failure_reason']!r}" if changes.get("failure_reason") else "",
    )
    return recording


async def stop_recording(db: AsyncSession, recording_id: int, at: datetime) -> Recording:
    """Stopped at `at`: from recording or interrupted to processing (progress 0). The sites of
    everyone attending while it recorded join its participating sites."""
    recording = await _move(
        db,
        recording_id,
        STOPPABLE,
        RecordingState.PROCESSING,
        stopped_at=fields.check_aware(at, "stop time"),
        processing_progress=0,
    )
    present = await _sites_present(db, recording.room_id, recording.started_at, at)
    if present:
        await add_sites(db, recording_id, present)
    return recording


async def mark_interrupted(db: AsyncSession, recording_id: int, reason: str) -> Recording:
    """The recorder was lost (its worker died): interrupted, with why. Marking an interrupted
    recording again only updates the reason, so two watchers may both report it."""
    return await _move(
        db,
        recording_id,
        ACTIVE,
        RecordingState.INTERRUPTED,
        failure_reason=fields.check_reason(reason),
    )


async def resume_recording(db: AsyncSession, recording_id: int) -> int:
    """A recorder takes an interrupted recording up again: recording, one more segment, whose
    number is returned. The reason of the interruption is cleared (the log keeps it)."""
    recording = await _recording(db, recording_id)
    segment = recording.segments + 1
    await _move(
        db,
        recording_id,
        (RecordingState.INTERRUPTED,),
        RecordingState.RECORDING,
        segments=segment,
        failure_reason=None,
    )
    return segment


async def set_progress(db: AsyncSession, recording_id: int, percent: int) -> Recording:
    """Post-processing progress, 0-100, while processing (a retried step may go back)."""
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
        raise BadRequest(f"progress must be 0-100 (got {percent!r})")
    recording = await _recording(db, recording_id)
    if recording.state is not RecordingState.PROCESSING:
        raise Conflict(f"recording {recording_id} is {recording.state}, not processing")
    recording.processing_progress = percent
    await db.flush()
    return recording


async def mark_ready(db: AsyncSession, recording_id: int) -> Recording:
    """Post-processing done: ready, progress 100."""
    return await _move(
        db,
        recording_id,
        (RecordingState.PROCESSING,),
        RecordingState.READY,
        processing_progress=100,
        failure_reason=None,
    )


async def mark_failed(db: AsyncSession, recording_id: int, reason: str) -> Recording:
    """A step failed for good (recording, or processing after its retries): failed, with why.
    The files catalogued so far stay; a stop time is set if there was none."""
    recording = await _recording(db, recording_id)
    changes: dict[str, Any] = {"failure_reason": fields.check_reason(reason)}
    if recording.stopped_at is None:
        changes["stopped_at"] = utcnow()
    return await _move(db, recording_id, FAILABLE, RecordingState.FAILED, **changes)


# --- the archivist's side ----------------------------------------------------------------------


async def update_metadata(
    db: AsyncSession,
    recording_id: int,
    *,
    record_code: str | None,
    retention_until: date | None,
    access_level: str | AccessLevel,
    keywords: str | Iterable[str],
) -> Recording:
    """Set the archival metadata (all of it, as a form sends it). An empty record code is none;
    keywords as in `parse_keywords`. BadRequest for a bad value, AlreadyExists for a record
    code another recording has. The caller logs the change with `log_access(..., "metadata")`."""
    code = fields.check_record_code(record_code)
    until = fields.check_retention(retention_until)
    level = fields.check_access_level(access_level)
    words = fields.parse_keywords(keywords)
    recording = await _recording(db, recording_id)
    if code is not None:
        taken = await db.scalar(
            select(Recording.id).where(Recording.record_code == code, Recording.id != recording_id)
        )
        if taken is not None:
            raise AlreadyExists(f"record code {code!r} is used by recording {taken}")
    recording.record_code = code
    recording.retention_until = until
    recording.access_level = level
    recording.keywords = json.dumps(words, ensure_ascii=False)
    _refresh_search_text(recording)
    try:
        async with db.begin_nested():
            await db.flush()
    except IntegrityError:
        # Another archivist took the code between the check and the write.
        raise AlreadyExists(f"record code {code!r} is taken") from None
    log.info(
        "recording=%d metadata record_code=%s retention_until=%s access=%s keywords=%d",
        recording.id,
        code,
        until,
        level,
        len(words),
    )
    return recording


async def log_access(
    db: AsyncSession,
    recording_id: int,
    account_id: int | None,
    action: str | RecordingAction,
    address: str = "",
) -> RecordingAccess:
    """Write one access to the log: who (account, address), what, when (now)."""
    try:
        what = RecordingAction(str(action))
    except ValueError:
        raise BadRequest(f"unknown access action {action!r}") from None
    recording = await _recording(db, recording_id)
    entry = RecordingAccess(
        recording_id=recording.id,
        recording_title=recording.title,
        record_code=recording.record_code,
        account_id=account_id,
        action=what,
        at=utcnow(),
        address=str(address)[:64],
    )
    db.add(entry)
    await db.flush()
    log.info(
        "recording=%d access action=%s account=%s address=%s",
        recording.id,
        what,
        account_id,
        entry.address,
    )
    return entry


async def access_log(
    db: AsyncSession, recording_id: int | None = None, limit: int = 100
) -> list[RecordingAccess]:
    """The newest accesses first, of one recording or of all, with their account."""
    query = select(RecordingAccess).options(selectinload(RecordingAccess.account))
    if recording_id is not None:
        query = query.where(RecordingAccess.recording_id == recording_id)
    query = query.order_by(RecordingAccess.at.desc(), RecordingAccess.id.desc()).limit(
        _limit(limit, MAX_ACCESS_LOG_LIMIT)
    )
    return list((await db.execute(query)).scalars())


async def delete_recording(
    db: AsyncSession,
    recording_id: int,
    *,
    confirmed: bool,
    account_id: int | None = None,
    address: str = "",
) -> list[str]:
    """Delete the recording and its catalogue entries; returns the paths (relative to the
    recordings folder) of its files, for the caller to remove once the transaction commits.

    BadRequest unless `confirmed` is True (an archivist's explicit confirmation); Conflict while
    it is still being recorded. The deletion is written to the access log, which keeps it."""
    if confirmed is not True:
        raise BadRequest("deleting a recording needs an explicit confirmation")
    recording = await get_recording(db, recording_id)
    if recording.state in ACTIVE:
        raise Conflict(f"recording {recording_id} is still being recorded")
    paths = [file.path for file in recording.files]
    await log_access(db, recording_id, account_id, RecordingAction.DELETE, address)
    # The files' rows go with it (ORM cascade); the log entries stay, the database setting
    # their recording_id to NULL (ON DELETE SET NULL).
    await db.delete(recording)
    await db.flush()
    log.warning(
        "recording=%d deleted room_id=%d title=%r record_code=%s by_account=%s files=%d",
        recording_id,
        recording.room_id,
        recording.title,
        recording.record_code,
        account_id,
        len(paths),
    )
    return paths


# --- checksums -------------------------------------------------------------------------------


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of the file as 64 lower-case hex digits, read in 1 MiB chunks (blocking:
    call it in a thread from async code)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


async def verify_recording(db: AsyncSession, recording_id: int, root: Path) -> list[Mismatch]:
    """Recompute the checksum of every closed file under `root` (the recordings folder), in a
    thread, and return those that differ or cannot be read. Files still open are skipped. The
    caller logs the verification with `log_access(..., "verify")`."""
    recording = await get_recording(db, recording_id)
    mismatches: list[Mismatch] = []
    for file in recording.files:
        if file.closed_at is None or file.sha256 is None:
            continue
        full = root / file.path
        actual: str | None = None
        try:
            actual = await asyncio.to_thread(sha256_file, full)
        except FileNotFoundError:
            reason = "missing"
        except OSError as exc:
            log.debug("recording=%d file=%d unreadable: %s", recording_id, file.id, exc)
            reason = "unreadable"
        else:
            if actual == file.sha256:
                continue
            reason = "changed"
        mismatch = Mismatch(file.id, file.path, file.sha256, actual, reason)
        mismatches.append(mismatch)
        log.warning(
            "recording=%d file=%d checksum mismatch (%s) path=%s expected=%s actual=%s",
            recording_id,
            file.id,
            reason,
            file.path,
            file.sha256,
            actual,
        )
    log.info(
        "recording=%d verified files=%d mismatches=%d",
        recording_id,
        len(recording.files),
        len(mismatches),
    )
    return mismatches
