"""The room pages of a running node: list, schedule, detail, invitation links, end, roles."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from urllib.parse import unquote

import aiohttp
import pytest

from server.accounts import get_account
from server.app import DATABASE, SECRET_KEY
from server.invitations import verify_invitation
from server.room_pages import VIETNAM
from server.room_records import get_room, update_room
from server.store.models import RoomMode, Site, SiteLevel
from tests.conftest import TEST_PASSWORD, Node

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')
INVITE_LINK = re.compile(r'id="invite-link" type="text" value="([^"]+)"')


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def csrf(http: aiohttp.ClientSession, url: str) -> str:
    """The page's csrf_token field (fetching it also sets the CSRF cookie)."""
    async with http.get(url) as response:
        assert response.status == 200, url
        match = CSRF_INPUT.search(await response.text())
    assert match is not None, f"no csrf_token field in {url}"
    return match.group(1)


async def sign_in(http: aiohttp.ClientSession, node: Node, username: str) -> None:
    token = await csrf(http, node.url + "/login")
    form = {"csrf_token": token, "username": username, "password": TEST_PASSWORD, "next": "/"}
    async with http.post(node.url + "/login", data=form, allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def post(
    http: aiohttp.ClientSession, node: Node, page: str, path: str, **fields: str
) -> aiohttp.ClientResponse:
    """POST a form the way the browser does: with the csrf_token of the page it is on."""
    form = {"csrf_token": await csrf(http, node.url + page), **fields}
    response = await http.post(node.url + path, data=form, allow_redirects=False)
    await response.read()
    return response


async def add_site(node: Node, code: str) -> None:
    async with node.app[DATABASE].session() as db, db.begin():
        db.add(Site(code=code, name=f"Xã {code}", level=SiteLevel.COMMUNE))


async def test_host_schedules_invites_and_ends(node: Node, http: aiohttp.ClientSession) -> None:
    await node.account("chu-tri", "host")
    await node.account("thanh-vien", "member")
    await add_site(node, "26734")
    await sign_in(http, node, "chu-tri")

    # The form in Vietnam time: 08:00 on 2 September is 01:00 UTC.
    response = await post(
        http,
        node,
        "/rooms/new",
        "/rooms/new",
        title="Giao ban tuần 36",
        starts_at="2030-09-02T08:00",
        duration="90",
        mode="conference",
        lobby="1",
        sites="26734",
        members="thanh-vien",
        hosts="",
    )
    assert response.status == 303
    location = response.headers["Location"]
    slug = location.removeprefix("/rooms/")
    assert re.fullmatch(r"[a-z]{3}-[a-z]{4}-[a-z]{3}", slug), location
    async with node.app[DATABASE].session() as db:
        room = await get_room(db, slug)
    assert room.title == "Giao ban tuần 36"
    assert room.starts_at == datetime(2030, 9, 2, 1, 0, tzinfo=UTC)
    assert (room.duration_minutes, room.mode, room.lobby) == (90, RoomMode.CONFERENCE, True)

    async with http.get(node.url + "/rooms") as listing:
        page = await listing.text()
    assert listing.status == 200
    assert "Giao ban tuần 36" in page
    assert f'href="/r/{slug}"' in page
    assert "02/09/2030 08:00" in page

    async with http.get(node.url + location) as detail:
        page = await detail.text()
    assert detail.status == 200
    assert "Xã 26734" in page and "thanh-vien" in page
    assert 'id="invite-form"' in page and 'id="end-form"' in page

    response = await post(
        http,
        node,
        location,
        f"{location}/invitations",
        role="guest",
        site="26734",
        name="Hội trường xã",
        hours="48",
    )
    assert response.status == 200
    page = await response.text()
    match = INVITE_LINK.search(page)
    assert match is not None, page
    link = html.unescape(match.group(1))
    # Without GIAOBAN_PUBLIC_URL the link names the address the host used.
    assert link.startswith(f"{node.url}/r/{slug}?token=")
    invitation = verify_invitation(node.app[SECRET_KEY], link.split("token=", 1)[1], room=slug)
    assert (invitation.role, invitation.site, invitation.name) == (
        "guest",
        "26734",
        "Hội trường xã",
    )

    # Bad invitation input: the form again, with the errors in both languages.
    response = await post(
        http, node, location, f"{location}/invitations", role="admin", site="999", hours="0"
    )
    assert response.status == 400
    page = await response.text()
    assert "Không có đơn vị với mã: 999." in page and "No unit with code: 999." in page
    assert 'id="invite-link"' not in page

    response = await post(http, node, location, f"{location}/end")
    assert response.status == 303
    assert response.headers["Location"] == location
    async with node.app[DATABASE].session() as db:
        assert (await get_room(db, slug)).ended_at is not None
    async with http.get(node.url + "/rooms") as listing:
        page = await listing.text()
    ended = page.split('id="rooms-ended"', 1)[1]
    assert "Giao ban tuần 36" in ended
    async with http.get(node.url + location) as detail:
        page = await detail.text()
    assert 'data-state="ended"' in page and 'id="end-form"' not in page


async def test_form_errors_are_shown(node: Node, http: aiohttp.ClientSession) -> None:
    await node.account("chu-tri", "host")
    await sign_in(http, node, "chu-tri")
    response = await post(
        http,
        node,
        "/rooms/new",
        "/rooms/new",
        title="  ",
        starts_at="ngày mai",
        duration="3",
        mode="lecture",
        sites="99999",
        members="khong-ai",
    )
    assert response.status == 400
    page = await response.text()
    for vi, en in [
        ("Vui lòng nhập tên cuộc họp.", "Please enter the meeting title."),
        ("Thời gian bắt đầu không hợp lệ.", "The start time is not valid."),
        ("Thời lượng phải từ 5 đến 1440 phút.", "The duration must be 5 to 1440 minutes."),
        ("Không có đơn vị với mã: 99999.", "No unit with code: 99999."),
        ("Không có tài khoản: khong-ai.", "No such account: khong-ai."),
    ]:
        assert vi in page and en in page
    # What was typed stays in the form.
    assert 'value="ngày mai"' in page and 'value="khong-ai"' in page
    assert CSRF_INPUT.search(page)


async def test_member_cannot_schedule_or_end(node: Node, http: aiohttp.ClientSession) -> None:
    await node.account("thanh-vien", "member")
    await node.account("nguoi-ngoai", "member")
    await node.schedule("giao-ban-tinh", host="chu-tri")
    # Invited as a member (by the host, through the store).
    async with node.app[DATABASE].session() as db, db.begin():
        host = await get_account(db, "chu-tri")
        await update_room(db, host, "giao-ban-tinh", member_usernames=["thanh-vien"])

    await sign_in(http, node, "thanh-vien")
    async with http.get(node.url + "/rooms/new", allow_redirects=False) as response:
        assert response.status == 403
    async with http.get(node.url + "/rooms") as response:
        page = await response.text()
    assert "Phòng giao-ban-tinh" in page
    assert 'id="new-room"' not in page
    async with http.get(node.url + "/rooms/giao-ban-tinh") as response:
        page = await response.text()
    assert response.status == 200
    assert 'id="invite-form"' not in page and 'id="end-form"' not in page
    response = await post(http, node, "/rooms/giao-ban-tinh", "/rooms/giao-ban-tinh/end")
    assert response.status == 403
    response = await post(
        http,
        node,
        "/rooms/giao-ban-tinh",
        "/rooms/giao-ban-tinh/invitations",
        role="host",
        hours="1",
    )
    assert response.status == 403
    response = await post(http, node, "/rooms", "/rooms/new", title="x", starts_at="", duration="")
    assert response.status == 403
    async with node.app[DATABASE].session() as db:
        assert (await get_room(db, "giao-ban-tinh")).ended_at is None


async def test_uninvited_and_signed_out(node: Node, http: aiohttp.ClientSession) -> None:
    await node.schedule("phong-kin", host="chu-tri")
    await node.account("nguoi-ngoai", "member")
    async with http.get(node.url + "/rooms", allow_redirects=False) as response:
        assert response.status == 302
        location = response.headers["Location"]
        assert location.startswith("/login?next=") and unquote(location) == "/login?next=/rooms"
    await sign_in(http, node, "nguoi-ngoai")
    # Not invited: the same answer as for a room that does not exist.
    for path in ("/rooms/phong-kin", "/rooms/khong-co"):
        async with http.get(node.url + path) as response:
            assert response.status == 404, path
    async with http.get(node.url + "/rooms") as response:
        assert "phong-kin" not in await response.text()


def test_vietnam_time_is_utc_plus_7() -> None:
    assert datetime(2030, 1, 1, tzinfo=UTC).astimezone(VIETNAM).utcoffset().total_seconds() == (
        7 * 3600
    )
