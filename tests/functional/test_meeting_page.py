"""`GET /r/<room>`: who the meeting page lets through, and the clear page everyone else gets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import jwt

from server.app import DATABASE, SECRET_KEY
from server.invitations import mint_invitation
from server.room_records import end_room


async def fetch(node, path: str) -> tuple[int, str, str]:  # type: ignore[no-untyped-def]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.url}{path}", allow_redirects=False) as response,
    ):
        return response.status, response.headers.get("Location", ""), await response.text()


async def test_an_invitation_link_opens_the_meeting_page(node) -> None:  # type: ignore[no-untyped-def]
    token = await node.invite("hop-so-1")
    status, _, html = await fetch(node, f"/r/hop-so-1?token={token}")
    assert status == 200
    assert f'data-token="{token}"' in html
    assert "Phòng hop-so-1" in html  # the scheduled title, not the slug


async def test_signed_out_without_a_token_goes_to_the_login_page(node) -> None:  # type: ignore[no-untyped-def]
    await node.schedule("hop-so-2")
    status, location, _ = await fetch(node, "/r/hop-so-2")
    assert status == 302 and location == "/login?next=/r/hop-so-2"


async def test_bad_links_get_a_bilingual_page_not_a_trace(node) -> None:  # type: ignore[no-untyped-def]
    token = await node.invite("hop-so-3")
    status, _, html = await fetch(node, f"/r/hop-so-3?token={token[:-3]}abc")
    assert status == 403 and "Đường mời không hợp lệ" in html and "Invalid invitation link" in html

    other = await node.invite("hop-khac")
    status, _, html = await fetch(node, f"/r/hop-so-3?token={other}")
    assert status == 403 and "Đường mời không hợp lệ" in html

    claims = jwt.decode(token, options={"verify_signature": False})
    claims.update(iat=claims["iat"] - 7200, exp=claims["iat"] - 3600)
    expired = jwt.encode(claims, node.app[SECRET_KEY], algorithm="HS256")
    status, _, html = await fetch(node, f"/r/hop-so-3?token={expired}")
    assert status == 403 and "Đường mời đã hết hạn" in html and "has expired" in html
    assert "Traceback" not in html

    status, _, html = await fetch(node, "/r/khong-co?token=not.a.token")
    assert status == 403 and "Đường mời không hợp lệ" in html


async def test_unscheduled_and_ended_rooms(node) -> None:  # type: ignore[no-untyped-def]
    unscheduled = mint_invitation(
        node.app[SECRET_KEY],
        room="chua-co",
        role="member",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    status, _, html = await fetch(node, f"/r/chua-co?token={unscheduled}")
    assert status == 404 and "Không có phòng họp này" in html

    token = await node.invite("da-xong")
    async with node.app[DATABASE].session() as db, db.begin():
        await end_room(db, None, "da-xong")
    status, _, html = await fetch(node, f"/r/da-xong?token={token}")
    assert status == 410 and "Cuộc họp đã kết thúc" in html and "The meeting has ended" in html
