"""server/attendance.py against both databases: stays, merged reconnects, the report, the CSV."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server import accounts
from server.attendance import (
    MERGE_WINDOW,
    Report,
    attendance_csv,
    attendance_report,
    close_open_stays,
    record_entry,
    record_exit,
)
from server.errors import NotFound
from server.room_records import create_room
from server.store.db import Database
from server.store.models import AttendanceStay

PASSWORD = "mật khẩu đủ dài"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
# 08:00 Vietnam time on 27 November 2026.
START = datetime(2026, 11, 27, 1, 0, tzinfo=UTC)
ROOM = "giao-ban-tuan"
BOM = b"\xef\xbb\xbf"

T = TypeVar("T")


async def _in(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with database.session() as session, session.begin():
        return await work(session)


@pytest.fixture
async def room(database: Database) -> dict[str, int]:
    """Room ROOM hosted by `chu-tri`; members `lan.nguyen` and `an.tran`: ids by short name."""

    async def make(session: AsyncSession) -> dict[str, int]:
        ids = {}
        for key, username, role in (
            ("chu-tri", "chu-tri", "host"),
            ("lan", "lan.nguyen", "member"),
            ("an", "an.tran", "member"),
        ):
            made = await accounts.create_account(
                session, username, PASSWORD, role=role, hasher=FAST
            )
            ids[key] = made.id
        host = await accounts.get_account(session, "chu-tri")
        await create_room(
            session,
            host,
            title="Giao ban tuần",
            starts_at=START,
            duration_minutes=60,
            mode="discussion",
            lobby=False,
            slug=ROOM,
        )
        return ids

    return await _in(database, make)


async def _enter(database: Database, at: datetime, **kw: Any) -> int:
    kw.setdefault("account_id", None)
    kw.setdefault("token_id", None)
    kw.setdefault("name", "Nguyễn Thị Lan")
    kw.setdefault("site_code", None)
    kw.setdefault("site_name", None)
    kw.setdefault("role", "member")
    return await _in(database, lambda s: record_entry(s, ROOM, at=at, **kw))


async def _exit(database: Database, stay_id: int, at: datetime) -> None:
    await _in(database, lambda s: record_exit(s, stay_id, at))


async def _stays(database: Database) -> list[AttendanceStay]:
    async def load(session: AsyncSession) -> list[AttendanceStay]:
        query = select(AttendanceStay).order_by(AttendanceStay.id)
        return list((await session.execute(query)).scalars())

    return await _in(database, load)


async def _report(database: Database, now: datetime) -> Report:
    return await _in(database, lambda s: attendance_report(s, ROOM, now=now))


def _at(minutes: float) -> datetime:
    return START + timedelta(minutes=minutes)


async def test_new_stay(database: Database, room: dict[str, int]) -> None:
    stay_id = await _enter(
        database, _at(0), account_id=room["lan"], site_code="26734", site_name="Xã Tân Phú"
    )
    [stay] = await _stays(database)
    assert stay.id == stay_id
    assert (stay.account_id, stay.display_name, stay.site_code, stay.site_name, stay.role) == (
        room["lan"],
        "Nguyễn Thị Lan",
        "26734",
        "Xã Tân Phú",
        "member",
    )
    assert (stay.joined_at, stay.left_at, stay.reconnects) == (_at(0), None, 0)


async def test_unknown_room(database: Database, room: dict[str, int]) -> None:
    with pytest.raises(NotFound):
        await _in(
            database,
            lambda s: record_entry(
                s,
                "no-such-room",
                account_id=room["lan"],
                token_id=None,
                name="Lan",
                site_code=None,
                site_name=None,
                role="member",
                at=_at(0),
            ),
        )


async def test_reconnect_within_window_is_merged(database: Database, room: dict[str, int]) -> None:
    first = await _enter(database, _at(0), account_id=room["lan"])
    await _exit(database, first, _at(10))
    again = await _enter(database, _at(10) + MERGE_WINDOW, account_id=room["lan"])
    assert again == first
    [stay] = await _stays(database)
    assert (stay.joined_at, stay.left_at, stay.reconnects) == (_at(0), None, 1)


async def test_reconnect_after_window_is_new_stay(database: Database, room: dict[str, int]) -> None:
    first = await _enter(database, _at(0), account_id=room["lan"])
    await _exit(database, first, _at(10))
    later = await _enter(
        database, _at(10) + MERGE_WINDOW + timedelta(seconds=1), account_id=room["lan"]
    )
    assert later != first
    old, new = await _stays(database)
    assert (old.left_at, old.reconnects) == (_at(10), 0)
    assert (new.left_at, new.reconnects) == (None, 0)


async def test_open_stay_and_second_entry_merged(database: Database, room: dict[str, int]) -> None:
    # A second tab, or a leave the node never saw: an hour later is still the same stay.
    first = await _enter(database, _at(0), account_id=room["lan"])
    second = await _enter(database, _at(60), account_id=room["lan"], name="Lan (máy 2)")
    assert second == first
    [stay] = await _stays(database)
    assert (stay.left_at, stay.reconnects, stay.display_name) == (None, 1, "Nguyễn Thị Lan")


async def test_other_person_not_merged(database: Database, room: dict[str, int]) -> None:
    lan = await _enter(database, _at(0), account_id=room["lan"])
    an = await _enter(database, _at(1), account_id=room["an"], name="Trần Văn An")
    assert lan != an
    assert len(await _stays(database)) == 2


async def test_guests_share_token_by_name(database: Database, room: dict[str, int]) -> None:
    hall = await _enter(database, _at(0), token_id="jti-1", name="Hội trường xã", role="guest")
    other = await _enter(database, _at(1), token_id="jti-1", name="Khách mời", role="guest")
    assert hall != other
    again = await _enter(database, _at(2), token_id="jti-1", name="Hội trường xã", role="guest")
    assert again == hall
    # Another link with the same name is someone else too.
    elsewhere = await _enter(database, _at(3), token_id="jti-2", name="Hội trường xã")
    assert elsewhere not in (hall, other)
    # Without account or token nothing tells people apart: always a new stay.
    nobody = await _enter(database, _at(4), name="Ẩn danh")
    assert await _enter(database, _at(5), name="Ẩn danh") != nobody


async def test_exit_unknown_or_twice_is_harmless(
    database: Database, room: dict[str, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.attendance")
    await _exit(database, 987654, _at(1))
    assert "unknown stay=987654" in caplog.text
    stay_id = await _enter(database, _at(0), account_id=room["lan"])
    await _exit(database, stay_id, _at(5))
    await _exit(database, stay_id, _at(9))
    [stay] = await _stays(database)
    assert stay.left_at == _at(5)


async def test_close_open_stays(database: Database, room: dict[str, int]) -> None:
    async def other_room(session: AsyncSession) -> None:
        host = await accounts.get_account(session, "chu-tri")
        await create_room(
            session,
            host,
            title="Họp khác",
            starts_at=START,
            duration_minutes=30,
            mode="discussion",
            lobby=False,
            slug="hop-khac",
        )
        await record_entry(
            session,
            "hop-khac",
            account_id=room["an"],
            token_id=None,
            name="An",
            site_code=None,
            site_name=None,
            role="member",
            at=_at(0),
        )

    await _in(database, other_room)
    lan = await _enter(database, _at(0), account_id=room["lan"])
    closed = await _enter(database, _at(0), account_id=room["chu-tri"], role="host")
    await _exit(database, closed, _at(3))
    await _enter(database, _at(1), token_id="jti", name="Khách", role="guest")

    assert await _in(database, lambda s: close_open_stays(s, _at(30), ROOM)) == 2
    stays = {stay.id: stay for stay in await _stays(database)}
    assert stays[lan].left_at == _at(30)
    assert stays[closed].left_at == _at(3)
    assert [s.left_at for s in stays.values() if s.room_id != stays[lan].room_id] == [None]
    # Node start after a crash: every room.
    assert await _in(database, lambda s: close_open_stays(s, _at(40))) == 1
    assert await _in(database, lambda s: close_open_stays(s, _at(50))) == 0
    assert await _in(database, lambda s: close_open_stays(s, _at(50), "no-such-room")) == 0


async def _meeting(database: Database, room: dict[str, int]) -> None:
    """A known meeting: two people of commune 26734, one of 26735, a guest without a site."""
    tan_phu = {"site_code": "26734", "site_name": 'Xã Tân Phú, huyện "Đồng" Nai'}
    lan = await _enter(database, _at(0), account_id=room["lan"], **tan_phu)
    await _exit(database, lan, _at(20))
    await _enter(database, _at(21), account_id=room["lan"], **tan_phu)  # merged: 1 reconnect
    await _exit(database, lan, _at(50))
    # Back after the window: a second stay, 5 more minutes.
    lan2 = await _enter(database, _at(55), account_id=room["lan"], **tan_phu)
    await _exit(database, lan2, _at(60))

    an = await _enter(database, _at(5), account_id=room["an"], name='=HYPERLINK("x")', **tan_phu)
    await _exit(database, an, _at(35))

    await _enter(
        database,
        _at(2),
        account_id=room["chu-tri"],
        name="Chủ trì",
        role="host",
        site_code="26735",
        site_name="Phường Bến Thành",
    )
    await _enter(database, _at(10), token_id="jti", name="-Khách, mời", role="guest")


async def test_report_totals(database: Database, room: dict[str, int]) -> None:
    await _meeting(database, room)
    report = await _report(database, now=_at(70))

    assert [p.name for p in report.people] == [
        "Nguyễn Thị Lan",
        "Chủ trì",
        '=HYPERLINK("x")',
        "-Khách, mời",
    ]
    lan, host, an, guest = report.people
    assert (lan.first_join, lan.last_leave, lan.minutes, lan.stays, lan.reconnects) == (
        _at(0),
        _at(60),
        55,
        2,
        1,
    )
    assert not lan.still_present
    assert (an.minutes, an.last_leave, an.reconnects) == (30, _at(35), 0)
    # Still present: counted up to `now`.
    assert (host.still_present, host.last_leave, host.minutes, host.role) == (
        True,
        None,
        68,
        "host",
    )
    assert (guest.site_code, guest.minutes) == (None, 60)

    assert [(s.site_code, s.people) for s in report.sites] == [
        ("26734", 2),
        ("26735", 1),
        (None, 1),
    ]
    tan_phu, ben_thanh, no_site = report.sites
    assert (tan_phu.first_join, tan_phu.last_leave, tan_phu.still_present) == (
        _at(0),
        _at(60),
        0,
    )
    assert tan_phu.site_name == 'Xã Tân Phú, huyện "Đồng" Nai'
    assert (ben_thanh.last_leave, ben_thanh.still_present) == (None, 1)
    assert no_site.first_join == _at(10)

    assert (report.people_count, report.sites_count, report.still_present) == (4, 2, 2)
    assert (report.first_join, report.last_leave) == (_at(0), None)
    assert report.room_title == "Giao ban tuần"

    await _in(database, lambda s: close_open_stays(s, _at(65), ROOM))
    closed = await _report(database, now=_at(70))
    assert (closed.still_present, closed.last_leave) == (0, _at(65))
    assert closed.people[1].minutes == 63


async def test_report_of_empty_and_unknown_room(database: Database, room: dict[str, int]) -> None:
    report = await _report(database, now=_at(0))
    assert (report.people, report.sites, report.first_join, report.last_leave) == (
        [],
        [],
        None,
        None,
    )
    with pytest.raises(NotFound):
        await _in(database, lambda s: attendance_report(s, "no-such-room"))


async def test_csv(database: Database, room: dict[str, int]) -> None:
    await _meeting(database, room)
    await _in(database, lambda s: close_open_stays(s, _at(65), ROOM))
    report = await _report(database, now=_at(70))

    data = attendance_csv(report, "vi")
    assert data.startswith(BOM)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0] == [
        "Mã đơn vị",
        "Tên đơn vị",
        "Họ tên",
        "Vai trò",
        "Vào lúc",
        "Rời lúc",
        "Số phút tham dự",
        "Số lần kết nối lại",
    ]
    assert rows[1] == [
        "26734",
        'Xã Tân Phú, huyện "Đồng" Nai',
        "Nguyễn Thị Lan",
        "Thành viên",
        "2026-11-27 08:00:00",
        "2026-11-27 09:00:00",
        "55",
        "1",
    ]
    assert rows[2][2:6] == ["Chủ trì", "Chủ trì", "2026-11-27 08:02:00", "2026-11-27 09:05:00"]
    # Formula-looking cells are text in a spreadsheet.
    assert rows[3][2] == '\'=HYPERLINK("x")'
    assert rows[4][:4] == ["", "", "'-Khách, mời", "Khách"]
    assert len(rows) == 5

    english = attendance_csv(report, "en")
    assert english.startswith(BOM)
    header, first, *_ = csv.reader(io.StringIO(english.decode("utf-8-sig"), newline=""))
    assert header[:3] == ["Site code", "Site name", "Name"]
    assert first[3] == "Member"
    # Anything but "en" is Vietnamese.
    assert attendance_csv(report, "fr") == data
