"""The live dashboard of a running node: the tree's JSON follows real participants joining and
leaving, one room's sites go not joined → connected → left, and only admins and hosts see it."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from server.accounts import find_account
from server.app import DATABASE, SECRET_KEY
from server.invitations import mint_invitation
from server.room_records import create_room
from server.store.models import Site, SiteLevel
from tests.conftest import TEST_PASSWORD, Node
from tests.support.peer import Peer

CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def closing() -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in made:
        await peer.close()


async def sign_in(http: aiohttp.ClientSession, node: Node, username: str) -> None:
    async with http.get(node.url + "/login") as response:
        match = CSRF_INPUT.search(await response.text())
    assert match is not None
    form = {"csrf_token": match.group(1), "username": username, "password": TEST_PASSWORD}
    async with http.post(node.url + "/login", data=form, allow_redirects=False) as response:
        assert response.status == 303, await response.text()


async def add_sites(node: Node) -> None:
    """Province P1 with communes C1 and C2."""
    async with node.app[DATABASE].session() as db, db.begin():
        province = Site(code="P1", name="Tỉnh Một", level=SiteLevel.PROVINCE)
        db.add(province)
        await db.flush()
        for code, name in (("C1", "Xã Đông"), ("C2", "Xã Tây")):
            db.add(Site(code=code, name=name, level=SiteLevel.COMMUNE, parent_id=province.id))


async def schedule_for_sites(node: Node, slug: str, host: str, sites: list[str]) -> None:
    await node.account(host, "host")
    async with node.app[DATABASE].session() as db, db.begin():
        creator = await find_account(db, host)
        assert creator is not None
        await create_room(
            db,
            creator,
            title=f"Giao ban {slug}",
            starts_at=datetime.now(UTC),
            duration_minutes=60,
            mode="discussion",
            lobby=False,
            site_codes=sites,
            slug=slug,
        )


async def join_from(node: Node, closing: list[Peer], room: str, site: str) -> Peer:
    """A participant of `site` in `room`, through an invitation carrying the site."""
    token = mint_invitation(
        node.app[SECRET_KEY],
        room=room,
        role="member",
        site=site,
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    peer = Peer(node.url, f"UBND {site}")
    closing.append(peer)
    await peer.connect()
    await peer.join(room, token)
    return peer


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any, str]:
    async with http.get(url, allow_redirects=False) as response:
        return response.status, await response.json(), response.headers.get("Cache-Control", "")


async def eventually(
    http: aiohttp.ClientSession, url: str, check: Callable[[Any], bool], what: str
) -> Any:
    """The JSON at `url` once `check` holds; fails after 5 s with the last answer."""
    deadline = time.monotonic() + 5.0
    while True:
        status, data, _ = await get_json(http, url)
        if status == 200 and check(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: last answer {status} {data}")
        await asyncio.sleep(0.05)


def site(data: dict[str, Any], code: str) -> dict[str, Any]:
    return next(row for row in data["sites"] if row["code"] == code)


async def test_the_tree_follows_a_participant_joining_and_leaving(
    node: Node, http: aiohttp.ClientSession, closing: list[Peer]
) -> None:
    await add_sites(node)
    await node.account("quan-tri", "admin")
    await node.schedule("giao-ban-sang")
    await sign_in(http, node, "quan-tri")
    url = node.url + "/dashboard/data.json"

    status, data, cache = await get_json(http, url)
    assert status == 200
    assert cache == "no-store"
    assert data["recorders"] is None  # this node records its meetings itself
    assert data["totals"] == {
        "province": {"online": 0, "total": 1},
        "commune": {"online": 0, "total": 2},
    }
    assert site(data, "C1")["connected"] == 0
    assert site(data, "C1")["parent"] == "P1"
    assert data["rooms"] == []
    # This node itself, alive (the embedded default serves no site of its own).
    assert [(n["alive"], n["site"]) for n in data["nodes"]] == [(True, None)]

    peer = await join_from(node, closing, "giao-ban-sang", "C1")
    data = await eventually(http, url, lambda d: site(d, "C1")["connected"] == 1, "C1 connected")
    assert site(data, "C1")["online"] is True
    assert site(data, "C1")["rooms"] == ["giao-ban-sang"]
    assert site(data, "P1")["connected_below"] == 1
    assert data["totals"]["commune"] == {"online": 1, "total": 2}
    assert [(r["slug"], r["title"], r["participants"], r["sites"]) for r in data["rooms"]] == [
        ("giao-ban-sang", "Phòng giao-ban-sang", 1, ["C1"])
    ]

    await peer.leave()
    data = await eventually(http, url, lambda d: site(d, "C1")["connected"] == 0, "C1 left")
    assert data["totals"]["commune"] == {"online": 0, "total": 2}
    assert data["rooms"] == []


async def test_only_admins_and_hosts_see_the_dashboard(
    node: Node, http: aiohttp.ClientSession
) -> None:
    # Signed out: the page sends to the sign-in page, the JSON answers 401 in JSON.
    async with http.get(node.url + "/dashboard", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"].startswith("/login")
    status, body, _ = await get_json(http, node.url + "/dashboard/data.json")
    assert (status, body["error"]["code"]) == (401, "unauthenticated")

    await node.account("thanh-vien", "member")
    await sign_in(http, node, "thanh-vien")
    async with http.get(node.url + "/dashboard") as response:
        assert response.status == 403
    status, body, _ = await get_json(http, node.url + "/dashboard/data.json")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    async with http.get(node.url + "/rooms") as response:
        assert 'href="/dashboard"' not in await response.text()

    http.cookie_jar.clear()
    await node.account("chu-tri", "host")
    await sign_in(http, node, "chu-tri")
    async with http.get(node.url + "/dashboard") as response:
        assert response.status == 200
        page = await response.text()
    assert 'data-url="/dashboard/data.json"' in page
    assert 'src="/static/js/dashboard.js"' in page
    assert 'href="/dashboard"' in page  # the header link
    assert response.headers["Content-Security-Policy"].startswith("default-src 'self'")


async def test_a_rooms_sites_go_from_not_joined_to_connected_to_left(
    node: Node, http: aiohttp.ClientSession, closing: list[Peer]
) -> None:
    await add_sites(node)
    await schedule_for_sites(node, "hop-tinh", "chu-tri", ["P1"])
    await sign_in(http, node, "chu-tri")
    url = node.url + "/dashboard/rooms/hop-tinh/data.json"

    async with http.get(node.url + "/dashboard/rooms/hop-tinh") as response:
        assert response.status == 200
        assert 'data-url="/dashboard/rooms/hop-tinh/data.json"' in await response.text()
    async with http.get(node.url + "/rooms/hop-tinh") as response:
        assert 'href="/dashboard/rooms/hop-tinh"' in await response.text()

    status, data, cache = await get_json(http, url)
    assert (status, cache) == (200, "no-store")
    assert data["room"] == {"slug": "hop-tinh", "title": "Giao ban hop-tinh", "state": "upcoming"}
    # The invited province brings its communes.
    assert [(s["code"], s["state"]) for s in data["sites"]] == [
        ("P1", "not_joined"),
        ("C1", "not_joined"),
        ("C2", "not_joined"),
    ]

    peer = await join_from(node, closing, "hop-tinh", "C1")
    data = await eventually(
        http, url, lambda d: d["counts"]["connected"] == 1, "C1 connected in the room"
    )
    c1 = next(s for s in data["sites"] if s["code"] == "C1")
    assert (c1["state"], c1["connected"], c1["names"]) == ("connected", 1, ["UBND C1"])
    assert data["room"]["state"] == "live"

    await peer.leave()
    data = await eventually(http, url, lambda d: d["counts"]["left"] == 1, "C1 left the room")
    assert {s["code"]: s["state"] for s in data["sites"]} == {
        "P1": "not_joined",
        "C1": "left",
        "C2": "not_joined",
    }
    assert data["counts"] == {
        "connected": 0,
        "reconnecting": 0,
        "lobby": 0,
        "left": 1,
        "not_joined": 2,
    }

    status, body, _ = await get_json(http, node.url + "/dashboard/rooms/khong-co/data.json")
    assert (status, body["error"]["code"]) == (404, "not_found")


async def test_the_room_view_is_for_its_hosts_and_admins(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await add_sites(node)
    await schedule_for_sites(node, "hop-rieng", "chu-tri", ["C1"])
    await node.account("xa-dong", "member", site="C1")  # invited through its commune
    await node.account("chu-tri-khac", "host")  # a host, not of this room
    await node.account("quan-tri", "admin")
    url = node.url + "/dashboard/rooms/hop-rieng"
    expected = {"xa-dong": 403, "chu-tri-khac": 404, "quan-tri": 200}
    for username, status in expected.items():
        http.cookie_jar.clear()
        await sign_in(http, node, username)
        async with http.get(url) as response:
            assert response.status == status, username
        async with http.get(url + "/data.json") as response:
            assert response.status == status, username
