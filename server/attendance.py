"""Attendance: who was in a meeting, from when to when, per person and per site.

Functions over an `AsyncSession`; they flush but never commit: the caller owns the transaction.
A stay (`AttendanceStay`) runs from entering a room to leaving it; a person who comes back
within `MERGE_WINDOW` (a dropped link, a reload) continues the same stay, counted as a
reconnect. The same person is the same account; without an account, the same invitation token
(`jti`) *and* the same display name, since one guest link may be shared by several people.

Limit: a stay has one open/closed state, not a count of connections. A person in two tabs gets
one stay, and the caller records the exit when that person's last connection leaves the room.
"""

from __future__ import annotations

import csv
import io
import logging
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.errors import NotFound
from server.store.models import AttendanceStay, RoomRecord

log = logging.getLogger(__name__)

MERGE_WINDOW = timedelta(minutes=2)
MAX_NAME_LENGTH = 200
MAX_SITE_CODE_LENGTH = 32
MAX_ROLE_LENGTH = 16
MAX_TOKEN_ID_LENGTH = 64
CSV_TIME = "%Y-%m-%d %H:%M:%S"
CSV_LANGS = ("vi", "en")
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection");
# tab and carriage return are on OWASP's list too.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

CSV_HEADERS: dict[str, tuple[str, ...]] = {
    "vi": (
        "Mã đơn vị",
        "Tên đơn vị",
        "Họ tên",
        "Vai trò",
        "Vào lúc",
        "Rời lúc",
        "Số phút tham dự",
        "Số lần kết nối lại",
    ),
    "en": (
        "Site code",
        "Site name",
        "Name",
        "Role",
        "First join",
        "Last leave",
        "Minutes present",
        "Reconnects",
    ),
}
ROLE_LABELS: dict[str, dict[str, str]] = {
    "vi": {"host": "Chủ trì", "member": "Thành viên", "guest": "Khách", "viewer": "Người xem"},
    "en": {"host": "Host", "member": "Member", "guest": "Guest", "viewer": "Viewer"},
}


def _vietnam_time() -> tzinfo:
    try:
        return ZoneInfo("Asia/Ho_Chi_Minh")
    except ZoneInfoNotFoundError:
        # No tz database on the machine: Vietnam has kept UTC+7 without daylight saving since
        # 1975, so the fixed offset gives the same times.
        return timezone(timedelta(hours=7), "ICT")


VIETNAM = _vietnam_time()


def _text(value: str | None, limit: int) -> str:
    # NFC: the same Vietnamese name typed on two systems is the same string (and the same person).
    return unicodedata.normalize("NFC", str(value or "")).strip()[:limit]


def _aware(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("attendance times must be aware datetimes")
    return at.astimezone(UTC)


# --- recording --------------------------------------------------------------------------------


async def _room_id(db: AsyncSession, room_slug: str) -> int:
    room_id = await db.scalar(select(RoomRecord.id).where(RoomRecord.slug == room_slug))
    if room_id is None:
        raise NotFound(f"no room {room_slug!r}")
    return int(room_id)


async def record_entry(
    db: AsyncSession,
    room_slug: str,
    *,
    account_id: int | None,
    token_id: str | None,
    name: str,
    site_code: str | None,
    site_name: str | None,
    role: str,
    at: datetime,
) -> int:
    """Record that a person entered `room_slug` at `at`; returns the id of their stay.

    An open stay of the same person (a second tab, a leave the node never saw), or one that
    ended at most `MERGE_WINDOW` before `at`, is continued (reopened, one more reconnect);
    otherwise a new stay starts. Someone with neither account nor token always gets a new
    stay: nothing tells two such people apart. NotFound for an unknown room."""
    at = _aware(at)
    room_id = await _room_id(db, room_slug)
    display_name = _text(name, MAX_NAME_LENGTH)
    # The column holds 64 characters; PostgreSQL refuses more (a jti is far shorter).
    token = (token_id or "")[:MAX_TOKEN_ID_LENGTH] or None

    same_person: ColumnElement[bool] | None = None
    if account_id is not None:
        same_person = AttendanceStay.account_id == account_id
    elif token is not None:
        same_person = and_(
            AttendanceStay.account_id.is_(None),
            AttendanceStay.token_id == token,
            AttendanceStay.display_name == display_name,
        )
    if same_person is not None:
        query = (
            select(AttendanceStay)
            .where(
                AttendanceStay.room_id == room_id,
                same_person,
                or_(AttendanceStay.left_at.is_(None), AttendanceStay.left_at >= at - MERGE_WINDOW),
            )
            # An open stay first, then the one that ended last.
            .order_by(
                AttendanceStay.left_at.is_not(None),
                AttendanceStay.left_at.desc(),
                AttendanceStay.id.desc(),
            )
            .limit(1)
        )
        stay = (await db.execute(query)).scalar_one_or_none()
        if stay is not None:
            stay.left_at = None
            stay.reconnects += 1
            await db.flush()
            log.info(
                "attendance room=%s stay=%d continued (reconnect %d)",
                room_slug,
                stay.id,
                stay.reconnects,
            )
            return stay.id

    stay = AttendanceStay(
        room_id=room_id,
        account_id=account_id,
        token_id=token,
        display_name=display_name,
        site_code=_text(site_code, MAX_SITE_CODE_LENGTH) or None,
        site_name=_text(site_name, MAX_NAME_LENGTH) or None,
        role=_text(role, MAX_ROLE_LENGTH),
        joined_at=at,
        left_at=None,
        reconnects=0,
    )
    db.add(stay)
    await db.flush()
    log.info(
        "attendance room=%s stay=%d started account=%s site=%s role=%s",
        room_slug,
        stay.id,
        account_id if account_id is not None else "-",
        stay.site_code or "-",
        stay.role,
    )
    return stay.id


async def record_exit(db: AsyncSession, stay_id: int, at: datetime) -> None:
    """Record that the stay `stay_id` ended at `at`. An unknown or already closed stay is
    logged and left as it is (a leave may arrive twice, or after `close_open_stays`)."""
    at = _aware(at)
    stay = await db.get(AttendanceStay, stay_id)
    if stay is None:
        log.warning("attendance: exit of unknown stay=%s ignored", stay_id)
        return
    if stay.left_at is not None:
        log.info("attendance: stay=%d already closed; exit ignored", stay_id)
        return
    # A clock step backwards must not make a negative stay.
    stay.left_at = max(at, stay.joined_at)
    await db.flush()
    log.info("attendance: stay=%d closed room_id=%d", stay.id, stay.room_id)


async def close_open_stays(db: AsyncSession, at: datetime, room_slug: str | None = None) -> int:
    """Close every open stay (of `room_slug` only, when given) at `at`; returns how many.

    For a node starting after a crash (its leaves were never seen) and for a meeting's end.
    An unknown `room_slug` closes nothing."""
    at = _aware(at)
    query = select(AttendanceStay).where(AttendanceStay.left_at.is_(None))
    if room_slug is not None:
        query = query.join(RoomRecord, RoomRecord.id == AttendanceStay.room_id).where(
            RoomRecord.slug == room_slug
        )
    # Loaded, not a bulk UPDATE: each stay is clamped to its own start, and open stays are few.
    stays = list((await db.execute(query)).scalars())
    for stay in stays:
        stay.left_at = max(at, stay.joined_at)
    await db.flush()
    if stays:
        log.info("attendance: closed %d open stays room=%s", len(stays), room_slug or "*")
    return len(stays)


# --- the report -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PersonRow:
    """One person's attendance: their stays in the room put together."""

    name: str
    site_code: str | None
    site_name: str | None
    role: str
    first_join: datetime
    last_leave: datetime | None  # None while still present
    present: timedelta  # time in the room, overlaps of stays counted once
    stays: int
    reconnects: int
    still_present: bool

    @property
    def minutes(self) -> int:
        """Whole minutes present, rounded to the nearest."""
        return round(self.present.total_seconds() / 60)


@dataclass(frozen=True)
class SiteRow:
    """One site's attendance: how many of its people came, from when to when."""

    site_code: str | None  # None: people with no site (guests, accounts without one)
    site_name: str | None
    people: int
    first_join: datetime
    last_leave: datetime | None  # None while one of its people is still present
    still_present: int


@dataclass(frozen=True)
class Report:
    """A meeting's attendance, times in UTC: people by first join, sites by code (no site
    last), and the meeting's totals."""

    room_slug: str
    room_title: str
    people: list[PersonRow]
    sites: list[SiteRow]
    first_join: datetime | None
    last_leave: datetime | None  # None while someone is present, or nobody came
    still_present: int
    generated_at: datetime

    @property
    def people_count(self) -> int:
        """How many people attended."""
        return len(self.people)

    @property
    def sites_count(self) -> int:
        """How many sites (with a code) had someone attend."""
        return sum(1 for site in self.sites if site.site_code is not None)


def _person_key(stay: AttendanceStay) -> tuple[object, ...]:
    if stay.account_id is not None:
        return ("account", stay.account_id)
    if stay.token_id is not None:
        return ("token", stay.token_id, stay.display_name)
    return ("stay", stay.id)


def _union(intervals: Iterable[tuple[datetime, datetime]]) -> timedelta:
    """Length of the union of the intervals: overlapping stays (a race between two tabs) are
    counted once."""
    total = timedelta()
    current: tuple[datetime, datetime] | None = None
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                total += current[1] - current[0]
            current = (start, end)
        elif end > current[1]:
            current = (current[0], end)
    if current is not None:
        total += current[1] - current[0]
    return total


def _person(stays: Sequence[AttendanceStay], now: datetime) -> PersonRow:
    # Name, site and role as at the person's latest entry.
    latest = max(stays, key=lambda s: (s.joined_at, s.id))
    leaves = [s.left_at for s in stays if s.left_at is not None]
    still_present = len(leaves) < len(stays)
    return PersonRow(
        name=latest.display_name,
        site_code=latest.site_code,
        site_name=latest.site_name,
        role=latest.role,
        first_join=min(s.joined_at for s in stays),
        last_leave=None if still_present else max(leaves),
        present=_union((s.joined_at, max(s.joined_at, s.left_at or now)) for s in stays),
        stays=len(stays),
        reconnects=sum(s.reconnects for s in stays),
        still_present=still_present,
    )


def _site(people: Sequence[PersonRow]) -> SiteRow:
    still_present = sum(1 for p in people if p.still_present)
    leaves = [p.last_leave for p in people if p.last_leave is not None]
    return SiteRow(
        site_code=people[0].site_code,
        site_name=next((p.site_name for p in people if p.site_name), None),
        people=len(people),
        first_join=min(p.first_join for p in people),
        last_leave=None if still_present else max(leaves),
        still_present=still_present,
    )


async def attendance_report(
    db: AsyncSession, room_slug: str, *, now: datetime | None = None
) -> Report:
    """The attendance of `room_slug`: one row per person, one per site, and the totals.
    Time present of someone still in the room counts up to `now` (default: the clock).
    NotFound for an unknown room."""
    now = _aware(now) if now is not None else datetime.now(UTC)
    room = (
        await db.execute(select(RoomRecord).where(RoomRecord.slug == room_slug))
    ).scalar_one_or_none()
    if room is None:
        raise NotFound(f"no room {room_slug!r}")
    stays = (
        await db.execute(
            select(AttendanceStay)
            .where(AttendanceStay.room_id == room.id)
            .order_by(AttendanceStay.joined_at, AttendanceStay.id)
        )
    ).scalars()
    by_person: dict[tuple[object, ...], list[AttendanceStay]] = {}
    for stay in stays:
        by_person.setdefault(_person_key(stay), []).append(stay)
    people = sorted(
        (_person(group, now) for group in by_person.values()),
        key=lambda p: (p.first_join, p.name),
    )
    by_site: dict[str | None, list[PersonRow]] = {}
    for person in people:
        by_site.setdefault(person.site_code, []).append(person)
    sites = sorted(
        (_site(group) for group in by_site.values()),
        key=lambda s: (s.site_code is None, s.site_code or ""),
    )
    still_present = sum(1 for p in people if p.still_present)
    leaves = [p.last_leave for p in people if p.last_leave is not None]
    return Report(
        room_slug=room.slug,
        room_title=room.title,
        people=people,
        sites=sites,
        first_join=min((p.first_join for p in people), default=None),
        last_leave=None if still_present or not leaves else max(leaves),
        still_present=still_present,
        generated_at=now,
    )


# --- CSV --------------------------------------------------------------------------------------


def _cell(text: str | None) -> str:
    """A text cell a spreadsheet shows as text: one starting like a formula gets a quote."""
    value = text or ""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _csv_time(when: datetime | None) -> str:
    return when.astimezone(VIETNAM).strftime(CSV_TIME) if when is not None else ""


def attendance_csv(report: Report, lang: str = "vi") -> bytes:
    """The report's people as CSV: UTF-8 with a BOM (so spreadsheet programs read Vietnamese
    right), a header row in `lang` ("vi", else "en"), times in Vietnam's time, an empty
    last-leave cell for someone still present. Text cells that start like a formula
    (= + - @) are prefixed with a single quote."""
    lang = lang if lang in CSV_LANGS else "vi"
    roles = ROLE_LABELS[lang]
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(CSV_HEADERS[lang])
    for person in report.people:
        writer.writerow(
            (
                _cell(person.site_code),
                _cell(person.site_name),
                _cell(person.name),
                _cell(roles.get(person.role, person.role)),
                _csv_time(person.first_join),
                _csv_time(person.last_leave),
                person.minutes,
                person.reconnects,
            )
        )
    # utf-8-sig writes the BOM (EF BB BF) first.
    return out.getvalue().encode("utf-8-sig")
