"""The attendance pages of a running node: the report for hosts, 403/404 for others, the CSV."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from server.accounts import get_account
from server.app import DATABASE
from server.attendance import record_entry, record_exit
from server.room_records import update_room
from tests.conftest import TEST_PASSWORD, Node

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
ROOM = "giao-ban-xa"
BOM = b"\xef\xbb\xbf"
# 08:00:05 Vietnam time on 27 November 2026.
START = datetime(2026, 11, 27, 1, 0, 5, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def sign_in(http: aiohttp.ClientSession, node: Node, username: str) -> None:
    async with http.get(node.url + "/login") as response:
        match = CSRF_INPUT.search(await response.text())
    assert match is not None
    form = {
        "csrf_token": match.group(1),
        "username": username,
        "password": TEST_PASSWORD,
        "next": "/",
    }
    async with http.post(node.url + "/login", data=form, allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def meeting(node: Node) -> None:
    """ROOM hosted by `chu-tri` with member `thanh-vien`; two people attended, one still in."""
    await node.account("thanh-vien", "member")
    await node.schedule(ROOM, host="chu-tri")
    async with node.app[DATABASE].session() as db, db.begin():
        host = await get_account(db, "chu-tri")
        await update_room(db, host, ROOM, member_usernames=["thanh-vien"])
        lan = await record_entry(
            db,
            ROOM,
            account_id=None,
            token_id="jti-1",
            name='Nguyễn Thị Lan, "Tổ 3"',
            site_code="26734",
            site_name="Xã Tân Phú",
            role="guest",
            at=START,
        )
        await record_exit(db, lan, START + timedelta(minutes=45))
        await record_entry(
            db,
            ROOM,
            account_id=host.id,
            token_id=None,
            name="Chủ trì",
            site_code=None,
            site_name=None,
            role="host",
            at=START + timedelta(minutes=1),
        )


async def test_host_sees_report_and_csv(node: Node, http: aiohttp.ClientSession) -> None:
    await meeting(node)
    await sign_in(http, node, "chu-tri")

    async with http.get(f"{node.url}/rooms/{ROOM}") as response:
        page = await response.text()
    assert f'href="/rooms/{ROOM}/attendance"' in page

    async with http.get(f"{node.url}/rooms/{ROOM}/attendance") as response:
        page = await response.text()
    assert response.status == 200
    assert "Điểm danh" in page
    assert 'id="attendance-people"' in page and 'id="attendance-sites"' in page
    assert "Nguyễn Thị Lan, &#34;Tổ 3&#34;" in page or "Nguyễn Thị Lan, &quot;Tổ 3&quot;" in page
    assert "Xã Tân Phú" in page
    assert "27/11/2026 08:00:05" in page and "27/11/2026 08:45:05" in page
    assert 'id="attendance-people-count">2<' in page
    assert f'href="/rooms/{ROOM}/attendance.csv?lang=en"' in page
    assert "Content-Security-Policy" in response.headers

    async with http.get(f"{node.url}/rooms/{ROOM}/attendance.csv") as response:
        data = await response.read()
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"] == f'attachment; filename="diem-danh-{ROOM}.csv"'
    assert data.startswith(BOM)
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert rows[0][:3] == ["Mã đơn vị", "Tên đơn vị", "Họ tên"]
    assert rows[1] == [
        "26734",
        "Xã Tân Phú",
        'Nguyễn Thị Lan, "Tổ 3"',
        "Khách",
        "2026-11-27 08:00:05",
        "2026-11-27 08:45:05",
        "45",
        "0",
    ]
    assert rows[2][2:6] == ["Chủ trì", "Chủ trì", "2026-11-27 08:01:05", ""]
    assert len(rows) == 3

    async with http.get(f"{node.url}/rooms/{ROOM}/attendance.csv?lang=en") as response:
        data = await response.read()
    assert data.startswith(BOM)
    header, first, _ = csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""))
    assert header == [
        "Site code",
        "Site name",
        "Name",
        "Role",
        "First join",
        "Last leave",
        "Minutes present",
        "Reconnects",
    ]
    assert first[3] == "Guest"

    async with http.get(f"{node.url}/rooms/{ROOM}/attendance?lang=en") as response:
        page = await response.text()
    assert "By participant" in page


async def test_member_refused_unknown_not_found(node: Node, http: aiohttp.ClientSession) -> None:
    await meeting(node)
    await node.account("nguoi-ngoai", "member")
    await sign_in(http, node, "thanh-vien")

    async with http.get(f"{node.url}/rooms/{ROOM}") as response:
        page = await response.text()
    assert response.status == 200
    assert 'id="attendance-link"' not in page
    for path in ("attendance", "attendance.csv"):
        async with http.get(f"{node.url}/rooms/{ROOM}/{path}") as response:
            body = await response.read()
        assert response.status == 403, path
        assert not body.startswith(BOM)
    async with http.get(f"{node.url}/rooms/no-such-room/attendance") as response:
        assert response.status == 404

    # Not invited: the room is not disclosed.
    http.cookie_jar.clear()
    await sign_in(http, node, "nguoi-ngoai")
    async with http.get(f"{node.url}/rooms/{ROOM}/attendance.csv") as response:
        assert response.status == 404


async def test_signed_out_goes_to_login(node: Node, http: aiohttp.ClientSession) -> None:
    await meeting(node)
    url = f"{node.url}/rooms/{ROOM}/attendance.csv?lang=en"
    async with http.get(url, allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"].startswith("/login?next=")
