"""The REST API of a running node: tokens, rooms, invitation links, errors, the OpenAPI document,
the token page and `giaoban tokens`."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from server.accounts import disable_account, get_account
from server.api import ENDPOINTS
from server.api_tokens import create_api_token, revoke_api_token
from server.app import DATABASE, SECRET_KEY
from server.config import Config
from server.invitations import verify_invitation
from server.room_records import get_room
from server.store.models import ApiToken, RoomRecord, Site, SiteLevel
from tests.conftest import Node
from tests.functional.test_room_pages import csrf, sign_in
from tests.functional.test_users_cli import _add_admin, giaoban
from tests.support.peer import Peer

API = "/api/v1"
NEW_TOKEN = re.compile(r'id="new-token" type="text" value="([^"]+)"')


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def token_for(node: Node, username: str, role: str = "host") -> str:
    """A new API token of account `username` (made when new)."""
    await node.account(username, role)
    async with node.app[DATABASE].session() as db, db.begin():
        account = await get_account(db, username)
        _, token = await create_api_token(db, account, f"thử {username}")
    return token


async def call(
    http: aiohttp.ClientSession,
    node: Node,
    method: str,
    path: str,
    token: str | None = None,
    *,
    body: Any = None,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One API call: (status, JSON answer, response). Every answer must be JSON."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        data = json.dumps(body)
        sent.setdefault("Content-Type", "application/json")
    async with http.request(
        method, node.url + path, data=data, headers=sent, allow_redirects=False
    ) as response:
        assert response.content_type == "application/json", (
            f"{method} {path}: {response.status} {response.content_type}: {await response.text()}"
        )
        answer = await response.json()
    if response.status >= 400:
        assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}, answer
        assert "Traceback" not in answer["error"]["message"]
    return response.status, answer, response


def code(answer: Any) -> str:
    return answer["error"]["code"]


async def room_count(node: Node) -> int:
    async with node.app[DATABASE].session() as db:
        return int(await db.scalar(select(func.count()).select_from(RoomRecord)) or 0)


async def add_site(node: Node, code_: str) -> None:
    async with node.app[DATABASE].session() as db, db.begin():
        db.add(Site(code=code_, name=f"Xã {code_}", level=SiteLevel.COMMUNE))


def a_room(**changes: Any) -> dict[str, Any]:
    start = datetime.now(UTC).astimezone() + timedelta(days=1)
    room: dict[str, Any] = {
        "title": "Giao ban tuần 36",
        "starts_at": start.isoformat(timespec="minutes"),
        "duration_minutes": 90,
        "mode": "conference",
        "lobby": False,
    }
    room.update(changes)
    return room


# --- credentials ------------------------------------------------------------------------------


async def test_credentials_are_required(node: Node, http: aiohttp.ClientSession) -> None:
    token = await token_for(node, "chu-tri")

    status, answer, response = await call(http, node, "GET", f"{API}/me")
    assert (status, code(answer)) == (401, "unauthenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # An unsafe call without credentials is 401 too (not the CSRF check's 403 page).
    status, answer, _ = await call(http, node, "POST", f"{API}/rooms", body=a_room())
    assert (status, code(answer)) == (401, "unauthenticated")

    for header in ("Bearer gb_wrong", "Bearer ", "Basic dXNlcjpwYXNz", token):
        status, answer, _ = await call(
            http, node, "GET", f"{API}/me", headers={"Authorization": header}
        )
        assert (status, code(answer)) == (401, "unauthenticated"), header

    status, me, _ = await call(http, node, "GET", f"{API}/me", token)
    assert status == 200
    assert (me["username"], me["role"], me["auth"], me["can_create_rooms"]) == (
        "chu-tri",
        "host",
        "token",
        True,
    )

    async with node.app[DATABASE].session() as db, db.begin():
        account = await get_account(db, "chu-tri")
        row, other = await create_api_token(db, account, "sẽ thu hồi")
        await revoke_api_token(db, account, row.id)
    status, answer, _ = await call(http, node, "GET", f"{API}/me", other)
    assert status == 401
    assert (await call(http, node, "GET", f"{API}/me", token))[0] == 200

    async with node.app[DATABASE].session() as db, db.begin():
        await disable_account(db, "chu-tri")
    assert (await call(http, node, "GET", f"{API}/me", token))[0] == 401
    assert await room_count(node) == 0


async def test_unknown_paths_and_methods_get_json(node: Node, http: aiohttp.ClientSession) -> None:
    token = await token_for(node, "chu-tri")
    status, answer, _ = await call(http, node, "GET", f"{API}/nothing-here", token)
    assert (status, code(answer)) == (404, "not_found")
    status, answer, response = await call(http, node, "DELETE", f"{API}/me", token)
    assert (status, code(answer)) == (405, "method_not_allowed")
    assert "GET" in response.headers.get("Allow", "")
    status, answer, _ = await call(http, node, "GET", f"{API}/rooms/no-such-room", token)
    assert (status, code(answer)) == (404, "not_found")


async def test_a_member_cannot_schedule(node: Node, http: aiohttp.ClientSession) -> None:
    token = await token_for(node, "thanh-vien", "member")
    status, answer, _ = await call(http, node, "POST", f"{API}/rooms", token, body=a_room())
    assert (status, code(answer)) == (403, "forbidden")
    assert await room_count(node) == 0


# --- the host's day ---------------------------------------------------------------------------


async def test_a_host_schedules_changes_invites_and_ends(
    node: Node, http: aiohttp.ClientSession
) -> None:
    host = await token_for(node, "chu-tri")
    member = await token_for(node, "thanh-vien", "member")
    stranger = await token_for(node, "nguoi-la", "member")
    await add_site(node, "26734")

    wanted = a_room(sites=["26734"], members=["thanh-vien"], slug="giao-ban-36")
    status, room, response = await call(http, node, "POST", f"{API}/rooms", host, body=wanted)
    assert status == 201, room
    assert response.headers["Location"] == f"{API}/rooms/giao-ban-36"
    assert room["slug"] == "giao-ban-36" and room["state"] == "upcoming"
    assert (room["sites"], room["members"], room["hosts"]) == (["26734"], ["thanh-vien"], [])
    assert room["your_role"] == "host" and room["created_by"] == "chu-tri"
    assert room["join_url"] == f"{node.url}/r/giao-ban-36"
    starts = datetime.fromisoformat(room["starts_at"])
    assert starts == datetime.fromisoformat(wanted["starts_at"])
    assert datetime.fromisoformat(room["ends_at"]) - starts == timedelta(minutes=90)

    # A random name when none is given; the same name again is a conflict.
    status, other, _ = await call(http, node, "POST", f"{API}/rooms", host, body=a_room())
    assert status == 201 and re.fullmatch(r"[a-z]{3}-[a-z]{4}-[a-z]{3}", other["slug"])
    status, answer, _ = await call(http, node, "POST", f"{API}/rooms", host, body=wanted)
    assert (status, code(answer)) == (409, "conflict")

    status, listing, _ = await call(http, node, "GET", f"{API}/rooms", host)
    assert status == 200
    assert {r["slug"] for r in listing["rooms"]} == {"giao-ban-36", other["slug"]}
    status, listing, _ = await call(http, node, "GET", f"{API}/rooms?state=ended", host)
    assert (status, listing) == (200, {"rooms": []})
    status, answer, _ = await call(http, node, "GET", f"{API}/rooms?state=soon", host)
    assert status == 400 and "state must be one of" in answer["error"]["message"]

    # The invited member sees the room as a member; a stranger does not see it at all.
    status, listing, _ = await call(http, node, "GET", f"{API}/rooms", member)
    assert [(r["slug"], r["your_role"]) for r in listing["rooms"]] == [("giao-ban-36", "member")]
    status, answer, _ = await call(http, node, "GET", f"{API}/rooms/giao-ban-36", stranger)
    assert (status, code(answer)) == (404, "not_found")
    status, answer, _ = await call(
        http, node, "PATCH", f"{API}/rooms/giao-ban-36", member, body={"title": "Đổi tên"}
    )
    assert (status, code(answer)) == (403, "forbidden")

    status, room, _ = await call(
        http,
        node,
        "PATCH",
        f"{API}/rooms/giao-ban-36",
        host,
        body={"title": "Giao ban tuần 37", "duration_minutes": 30, "hosts": ["thanh-vien"]},
    )
    assert status == 200, room
    assert (room["title"], room["duration_minutes"]) == ("Giao ban tuần 37", 30)
    assert (room["members"], room["hosts"], room["sites"]) == ([], ["thanh-vien"], ["26734"])

    # An invitation link the node accepts.
    status, invitation, _ = await call(
        http,
        node,
        "POST",
        f"{API}/rooms/giao-ban-36/invitations",
        host,
        body={"role": "member", "site": "26734", "name": "Hội trường xã", "expires_in_hours": 2},
    )
    assert status == 201, invitation
    verified = verify_invitation(node.app[SECRET_KEY], invitation["token"], room="giao-ban-36")
    assert (verified.role, verified.site, verified.name) == ("member", "26734", "Hội trường xã")
    assert invitation["url"].startswith(f"{node.url}/r/giao-ban-36?token=")
    assert (invitation["role"], invitation["site"]) == ("member", "26734")
    assert datetime.fromisoformat(invitation["expires_at"]) == verified.expires_at
    until = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    status, later, _ = await call(
        http,
        node,
        "POST",
        f"{API}/rooms/giao-ban-36/invitations",
        host,
        body={"role": "guest", "expires_at": until},
    )
    assert status == 201 and later["site"] is None
    status, answer, _ = await call(
        http,
        node,
        "POST",
        f"{API}/rooms/giao-ban-36/invitations",
        host,
        body={"expires_in_hours": 1, "expires_at": until},
    )
    assert status == 400 and "not both" in answer["error"]["message"]
    status, answer, _ = await call(
        http,
        node,
        "POST",
        f"{API}/rooms/giao-ban-36/invitations",
        stranger,
        body={"role": "host"},
    )
    assert status == 404

    # A participant who joined with the link is told the meeting ended.
    peer = Peer(node.url, "Hội trường xã")
    try:
        await peer.connect()
        await peer.join("giao-ban-36", invitation["token"])
        status, answer, _ = await call(http, node, "POST", f"{API}/rooms/giao-ban-36/end", member)
        assert status == 200  # thanh-vien is a host now
        assert answer["state"] == "ended" and answer["ended_at"] is not None
        await peer.wait_for(lambda: peer.last_event("meeting_ended") is not None, 5, "ended")
    finally:
        await peer.close()
    async with node.app[DATABASE].session() as db:
        assert (await get_room(db, "giao-ban-36")).ended_at is not None

    status, answer, _ = await call(
        http, node, "PATCH", f"{API}/rooms/giao-ban-36", host, body={"title": "Muộn"}
    )
    assert (status, code(answer)) == (410, "room_ended")
    status, answer, _ = await call(
        http, node, "POST", f"{API}/rooms/giao-ban-36/invitations", host, body={}
    )
    assert (status, code(answer)) == (410, "room_ended")
    status, listing, _ = await call(http, node, "GET", f"{API}/rooms?state=ended", host)
    assert [r["slug"] for r in listing["rooms"]] == ["giao-ban-36"]

    async with http.get(node.url + "/metrics") as response:
        text = await response.text()
    assert re.search(r'giaoban_api_requests_total\{method="POST",status="2xx"\} [1-9]', text)
    assert re.search(r'giaoban_api_requests_total\{method="GET",status="4xx"\} [1-9]', text)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type", "status", "says"),
    [
        ('{"title": "x",', "application/json", 400, "malformed JSON"),
        ("[]", "application/json", 400, "must be a JSON object"),
        ("", "application/json", 400, "malformed JSON"),
        (json.dumps(a_room(duration_minutes="90")), "application/json", 400, "duration_minutes"),
        (json.dumps(a_room(lobby="yes")), "application/json", 400, "lobby"),
        (json.dumps(a_room(titel="x")), "application/json", 400, "unknown field 'titel'"),
        (json.dumps(a_room(mode="lecture")), "application/json", 400, "mode"),
        (json.dumps(a_room(duration_minutes=1)), "application/json", 400, "duration_minutes"),
        (json.dumps(a_room(title="")), "application/json", 400, "title"),
        (json.dumps(a_room(title="t" * 201)), "application/json", 400, "title"),
        (json.dumps(a_room(slug="có dấu")), "application/json", 400, "slug"),
        (
            json.dumps(a_room(starts_at="2030-09-02T08:00")),
            "application/json",
            400,
            "starts_at",
        ),
        (json.dumps(a_room(sites=["không-có"])), "application/json", 400, "không-có"),
        (json.dumps(a_room(members=["ai-do"])), "application/json", 400, "ai-do"),
        (json.dumps(a_room()), "text/plain", 415, "application/json"),
        ("title=x", "application/x-www-form-urlencoded", 415, "application/json"),
        (
            json.dumps(a_room(title="x" * 70_000)),
            "application/json",
            413,
            "64 KiB",
        ),
    ],
)
async def test_bad_bodies_change_nothing(
    node: Node, http: aiohttp.ClientSession, data: str, content_type: str, status: int, says: str
) -> None:
    token = await token_for(node, "chu-tri")
    got, answer, _ = await call(
        http,
        node,
        "POST",
        f"{API}/rooms",
        token,
        data=data.encode(),
        headers={"Content-Type": content_type},
    )
    assert got == status, answer
    assert says in answer["error"]["message"], answer
    assert await room_count(node) == 0


async def test_bad_patches_change_nothing(node: Node, http: aiohttp.ClientSession) -> None:
    token = await token_for(node, "chu-tri")
    status, room, _ = await call(http, node, "POST", f"{API}/rooms", token, body=a_room())
    path = f"{API}/rooms/{room['slug']}"
    for patch, says in (
        ({}, "nothing to change"),
        ({"title": None}, "title must not be null"),
        ({"duration_minutes": "30"}, "duration_minutes"),
        ({"slug": "khac"}, "unknown field 'slug'"),
        ({"sites": ["không-có"]}, "không-có"),
    ):
        status, answer, _ = await call(http, node, "PATCH", path, token, body=patch)
        assert status == 400 and says in answer["error"]["message"], (patch, answer)
    status, after, _ = await call(http, node, "GET", path, token)
    assert {k: v for k, v in after.items() if k != "state"} == {
        k: v for k, v in room.items() if k != "state"
    }


# --- a browser session ------------------------------------------------------------------------


async def test_a_signed_in_browser_calls_the_api_with_its_csrf_token(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await node.account("chu-tri", "host")
    await sign_in(http, node, "chu-tri")
    status, me, _ = await call(http, node, "GET", f"{API}/me")
    assert (status, me["auth"]) == (200, "session")

    status, answer, _ = await call(http, node, "POST", f"{API}/rooms", body=a_room())
    assert (status, code(answer)) == (403, "forbidden")
    assert "X-CSRF-Token" in answer["error"]["message"]
    assert await room_count(node) == 0

    token = await csrf(http, node.url + "/rooms/new")
    status, room, _ = await call(
        http, node, "POST", f"{API}/rooms", body=a_room(), headers={"X-CSRF-Token": token}
    )
    assert status == 201, room


# --- the OpenAPI document ---------------------------------------------------------------------


def _refs(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["$ref"]] if isinstance(value.get("$ref"), str) else []
        return found + [ref for item in value.values() for ref in _refs(item)]
    if isinstance(value, list):
        return [ref for item in value for ref in _refs(item)]
    return []


async def test_the_openapi_document_lists_every_route(
    node: Node, http: aiohttp.ClientSession
) -> None:
    status, document, _ = await call(http, node, "GET", f"{API}/openapi.json")  # no sign-in
    assert status == 200
    assert document["openapi"] == "3.1.0"
    assert document["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "an API token, gb_…",
    }
    assert {"bearer": []} in document["security"]

    registered = {
        (route.method, route.resource.canonical)
        for route in node.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith(API)
        and route.method != "HEAD"
    }
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert registered == documented
    assert len(registered) == len(ENDPOINTS)

    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/") and ref.split("/")[-1] in schemas, ref
    create = document["paths"][f"{API}/rooms"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RoomCreate"
    }
    assert schemas["RoomCreate"]["additionalProperties"] is False
    assert "title" in schemas["RoomCreate"]["required"]
    assert {"201", "400", "401", "403", "409", "413", "415"} <= set(create["responses"])
    assert document["paths"][f"{API}/openapi.json"]["get"]["security"] == []


# --- the token page ---------------------------------------------------------------------------


async def test_the_token_page_makes_and_revokes_tokens(
    node: Node, http: aiohttp.ClientSession
) -> None:
    await node.account("chu-tri", "host")
    theirs = await token_for(node, "nguoi-khac", "member")
    await sign_in(http, node, "chu-tri")

    async with http.get(node.url + "/account/tokens") as response:
        page = await response.text()
    assert response.status == 200 and 'id="token-form"' in page and 'id="new-token"' not in page

    form = {"csrf_token": await csrf(http, node.url + "/account/tokens"), "name": "lịch họp tuần"}
    async with http.post(node.url + "/account/tokens", data=form) as response:
        page = await response.text()
    assert response.status == 201, page
    match = NEW_TOKEN.search(page)
    assert match is not None, page
    token = match.group(1)
    status, me, _ = await call(http, node, "GET", f"{API}/me", token)
    assert (status, me["username"], me["auth"]) == (200, "chu-tri", "token")

    async with http.get(node.url + "/account/tokens") as response:
        page = await response.text()
    assert token not in page and "lịch họp tuần" in page  # shown once only
    token_id = re.search(r'data-token-id="(\d+)"', page)
    assert token_id is not None

    form = {"csrf_token": await csrf(http, node.url + "/account/tokens"), "name": "   "}
    async with http.post(node.url + "/account/tokens", data=form) as response:
        assert response.status == 400
        assert 'id="token-error"' in await response.text()

    # Another account's token: 404, and it keeps working; one's own: revoked.
    async with node.app[DATABASE].session() as db:
        other_id = await db.scalar(select(ApiToken.id).where(ApiToken.name == "thử nguoi-khac"))
    for target, expected in ((other_id, 404), (token_id.group(1), 303)):
        form = {"csrf_token": await csrf(http, node.url + "/account/tokens")}
        async with http.post(
            node.url + f"/account/tokens/{target}/revoke", data=form, allow_redirects=False
        ) as response:
            await response.read()
        assert response.status == expected, target
    assert (await call(http, node, "GET", f"{API}/me", theirs))[0] == 200
    status, _, _ = await call(http, node, "GET", f"{API}/me", token)
    assert status == 401
    async with http.get(node.url + "/account/tokens") as response:
        page = await response.text()
    assert "token-revoked" in page


# --- the command line -------------------------------------------------------------------------


async def test_the_command_line_makes_a_token_that_works(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    await _add_admin(data_dir)

    made = giaoban(data_dir, "tokens", "add", "admin", "lịch họp tuần")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith("gb_")
    assert giaoban(data_dir, "tokens", "add", "nobody", "x").returncode == 2

    listed = giaoban(data_dir, "tokens", "list")
    assert listed.returncode == 0, listed.stderr
    assert "lịch họp tuần" in listed.stdout and token not in listed.stdout
    assert giaoban(data_dir, "tokens", "list", "admin").stdout == listed.stdout
    token_id = listed.stdout.splitlines()[1].split()[0]

    node = await Node.start(
        Config(host="127.0.0.1", port=0, data_dir=data_dir, ice_host_addresses=("127.0.0.1",))
    )
    try:
        async with aiohttp.ClientSession() as http:
            status, me, _ = await call(http, node, "GET", f"{API}/me", token)
            assert (status, me["username"], me["role"]) == (200, "admin", "admin")

            revoked = giaoban(data_dir, "tokens", "revoke", token_id)
            assert revoked.returncode == 0, revoked.stderr
            status, _, _ = await call(http, node, "GET", f"{API}/me", token)
            assert status == 401
    finally:
        await node.server.close()
    assert giaoban(data_dir, "tokens", "revoke", "999").returncode == 2


async def test_a_chunked_body_is_cut_off_at_64_kib(node: Node, http: aiohttp.ClientSession) -> None:
    token = await token_for(node, "chu-tri")

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the node counts what arrives.
        yield b'{"title": "'
        for _ in range(10):
            yield b"x" * 10_000
        yield b'"}'

    async with http.post(
        node.url + f"{API}/rooms",
        data=chunks(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as response:
        answer = await response.json()
    assert (response.status, code(answer)) == (413, "too_large")
    assert await room_count(node) == 0
