"""Who gets into a room: sessions and invitation tokens, the lobby, the lock, host-only actions.

Real node, real store (SQLite under the test's data directory), real Socket.IO clients."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import jwt
import pytest
from sqlalchemy import select

from server.app import DATABASE, ROOMS, SECRET_KEY
from server.auth import SESSION_COOKIE, start_login_session
from server.invitations import mint_invitation, verify_invitation
from server.room_records import add_removal, create_room, end_room, get_room
from server.store.models import Account, Site, SiteLevel
from tests.support.peer import Peer


def code_of(ack) -> str:  # type: ignore[no-untyped-def]
    assert isinstance(ack, dict) and "error" in ack, f"expected an error ack, got {ack!r}"
    return ack["error"]["code"]


async def make_peer(node, name: str, *, cookie: str | None = None) -> Peer:  # type: ignore[no-untyped-def]
    headers = {"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else None
    peer = Peer(node.url, name, headers=headers)
    await peer.connect()
    return peer


async def signed_in(node, username: str, role: str = "member", site: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """A sign-in session cookie value for account `username` (made when new)."""
    await node.account(username, role, site=site)
    async with node.app[DATABASE].session() as db, db.begin():
        account = await db.scalar(select(Account).where(Account.username == username))
        return await start_login_session(db, account, user_agent="test", address="127.0.0.1")


@pytest.fixture
async def closing():  # type: ignore[no-untyped-def]
    made: list[Peer] = []
    yield made
    for peer in made:
        await peer.close()


async def test_credentials_are_required_and_checked(node, closing) -> None:  # type: ignore[no-untyped-def]
    await node.schedule("kin")
    await node.schedule("other-room")
    peer = await make_peer(node, "khách")
    closing.append(peer)
    ask = {"room": "kin", "name": "khách"}

    assert code_of(await peer.request("join", ask)) == "unauthenticated"
    forged = mint_invitation(
        b"k" * 48, room="kin", role="host", expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    assert code_of(await peer.request("join", {**ask, "token": forged})) == "invalid_token"
    # Expired an hour ago, otherwise well made and signed by this node.
    claims = jwt.decode(await node.invite("kin"), options={"verify_signature": False})
    claims.update(iat=claims["iat"] - 7200, exp=claims["iat"] - 3600)
    expired = jwt.encode(claims, node.app[SECRET_KEY], algorithm="HS256")
    assert code_of(await peer.request("join", {**ask, "token": expired})) == "invalid_token"
    elsewhere = await node.invite("other-room")
    assert code_of(await peer.request("join", {**ask, "token": elsewhere})) == "invalid_token"
    tampered = (await node.invite("kin")).rsplit(".", 1)[0] + ".AAAA"
    assert code_of(await peer.request("join", {**ask, "token": tampered})) == "invalid_token"
    # A well-signed token for a room nobody scheduled.
    unscheduled = mint_invitation(
        node.app[SECRET_KEY],
        room="nowhere",
        role="member",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    ack = await peer.request("join", {"room": "nowhere", "name": "x", "token": unscheduled})
    assert code_of(ack) == "not_found"
    assert "nowhere" not in _live_rooms(node)

    ok = await peer.request("join", {**ask, "token": await node.invite("kin")})
    assert ok["ok"]["role"] == "member" and ok["ok"]["title"] == "Phòng kin"
    metrics = await _metrics(node)
    assert 'giaoban_signaling_errors_total{code="invalid_token",event="join"} 4.0' in metrics


async def test_an_ended_meeting_cannot_be_joined(node, closing) -> None:  # type: ignore[no-untyped-def]
    token = await node.invite("over")
    async with node.app[DATABASE].session() as db, db.begin():
        await end_room(db, None, "over")
    peer = await make_peer(node, "muộn")
    closing.append(peer)
    ack = await peer.request("join", {"room": "over", "name": "muộn", "token": token})
    assert code_of(ack) == "room_ended"


async def test_lobby_admit_and_deny(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await make_peer(node, "Chủ trì")
    member = await make_peer(node, "UBND xã A")
    stranger = await make_peer(node, "Người lạ")
    closing.extend([host, member, stranger])

    waiting = await member.join("sanh", await node.invite("sanh", lobby=True))
    assert waiting["lobby"] is True and waiting["title"] == "Phòng sanh"
    assert member.participant_id is None
    entered = await host.join("sanh", await node.invite("sanh", "host"))
    assert entered["role"] == "host"
    assert [w["name"] for w in entered["waiting"]] == ["UBND xã A"]

    await stranger.join("sanh", await node.invite("sanh", "guest"))
    await host.wait_for(
        lambda: len((host.last_event("lobby_updated") or {}).get("waiting", [])) == 2,
        5,
        "two people in the lobby",
    )
    first, second = host.last_event("lobby_updated")["waiting"]
    assert (first["name"], second["name"]) == ("UBND xã A", "Người lạ")
    assert first["since"] <= second["since"]

    admitted = await host._ok("admit", {"entry_id": first["id"]})
    result = await member.wait_admitted()
    assert result["participant_id"] == admitted["participant_id"] == member.participant_id
    assert [p["name"] for p in result["participants"]] == ["Chủ trì"]
    await host.wait_for(
        lambda: any(
            e == "participant_joined" and p["id"] == member.participant_id for e, p in host.events
        ),
        5,
        "the host sees the member join",
    )
    await member.subscribe()  # an admitted member is a full participant

    await host._ok("deny", {"entry_id": second["id"]})
    await stranger.wait_for(lambda: stranger.last_event("denied") is not None, 5, "denied")
    assert stranger.participant_id is None
    assert code_of(await stranger.request("subscribe", {})) == "not_joined"
    await host.wait_for(
        lambda: host.last_event("lobby_updated")["waiting"] == [], 5, "an empty lobby"
    )
    # The entry is gone: admitting it again is refused, nothing else happens.
    assert code_of(await host.request("admit", {"entry_id": second["id"]})) == "not_found"

    metrics = await _metrics(node)
    assert "giaoban_lobby_waits_total 2.0" in metrics
    assert 'giaoban_host_actions_total{action="admit"} 1.0' in metrics
    assert 'giaoban_host_actions_total{action="deny"} 1.0' in metrics


async def test_a_guest_link_always_waits_and_leaving_the_lobby_tells_the_hosts(
    node, closing
) -> None:  # type: ignore[no-untyped-def]
    host = await make_peer(node, "Chủ trì")
    guest = await make_peer(node, "Khách mời")
    closing.extend([host, guest])
    await host.join("mo", await node.invite("mo", "host", lobby=False))
    waiting = await guest.join("mo", await node.invite("mo", "guest"))
    assert waiting["lobby"] is True and waiting["role"] == "guest"
    await host.wait_for(
        lambda: len((host.last_event("lobby_updated") or {}).get("waiting", [])) == 1,
        5,
        "the guest waiting",
    )
    await guest.close()
    await host.wait_for(
        lambda: host.last_event("lobby_updated")["waiting"] == [], 5, "the lobby emptied"
    )


async def test_host_actions_are_refused_to_members_and_to_the_lobby(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await make_peer(node, "Chủ trì")
    member = await make_peer(node, "Thành viên")
    waiting = await make_peer(node, "Đang chờ")
    closing.extend([host, member, waiting])
    await host.join("quyen", await node.invite("quyen", "host", lobby=True))
    await member.join("quyen", await node.invite("quyen"))
    await admit_next(host)
    await member.wait_admitted()
    await waiting.join("quyen", await node.invite("quyen"))
    await host.wait_for(
        lambda: len((host.last_event("lobby_updated") or {}).get("waiting", [])) == 1,
        5,
        "one waiting",
    )
    entry_id = host.last_event("lobby_updated")["waiting"][0]["id"]

    for actor in (member, waiting):
        assert code_of(await actor.request("admit", {"entry_id": entry_id})) == "forbidden"
        assert code_of(await actor.request("deny", {"entry_id": entry_id})) == "forbidden"
        assert code_of(await actor.request("lock", {"locked": True})) == "forbidden"
    live = _live_rooms(node)["quyen"]
    assert not live.locked and list(live.lobby) == [entry_id]
    assert waiting.last_event("admitted") is None and waiting.last_event("denied") is None


async def test_a_locked_room_admits_no_one_new_but_lets_people_back(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await make_peer(node, "Chủ trì")
    member = await make_peer(node, "Xã B")
    closing.extend([host, member])
    await host.join("khoa", await node.invite("khoa", "host"))
    member_token = await node.invite("khoa")
    first = await member.join("khoa", member_token)
    locked = await host._ok("lock", {"locked": True})
    assert locked["locked"] is True
    await member.wait_for(
        lambda: (member.last_event("room_updated") or {}).get("locked") is True, 5, "lock seen"
    )

    # The member's link drops; with the ticket from its first entry it comes back in.
    await member.close()
    again = await make_peer(node, "Xã B")
    newcomer = await make_peer(node, "Xã C")
    second_host = await make_peer(node, "Phó chủ trì")
    closing.extend([again, newcomer, second_host])
    ack = await again.request(
        "join", {"room": "khoa", "name": "Xã B", "token": member_token, "ticket": "forged"}
    )
    assert code_of(ack) == "room_locked"
    back = await again.request(
        "join", {"room": "khoa", "name": "Xã B", "token": member_token, "ticket": first["ticket"]}
    )
    assert "ok" in back and back["ok"]["locked"] is True
    ack = await newcomer.request(
        "join", {"room": "khoa", "name": "Xã C", "token": await node.invite("khoa")}
    )
    assert code_of(ack) == "room_locked"
    # Someone else's ticket does not open the door for another token.
    ack = await newcomer.request(
        "join",
        {
            "room": "khoa",
            "name": "Xã C",
            "token": await node.invite("khoa"),
            "ticket": first["ticket"],
        },
    )
    assert code_of(ack) == "room_locked"
    assert (await second_host.join("khoa", await node.invite("khoa", "host")))["role"] == "host"

    await host._ok("lock", {"locked": False})
    assert (await newcomer.join("khoa", await node.invite("khoa")))["role"] == "member"


async def test_signed_in_accounts_by_invitation_site_and_removal(node, closing) -> None:  # type: ignore[no-untyped-def]
    async with node.app[DATABASE].session() as db, db.begin():
        province = Site(code="01", name="Tỉnh Thử", level=SiteLevel.PROVINCE)
        commune = Site(code="01-001", name="Xã Một", level=SiteLevel.COMMUNE, parent=province)
        db.add_all([province, commune])
    await node.account("chu-tri-tinh", "host")
    async with node.app[DATABASE].session() as db, db.begin():
        creator = await db.scalar(select(Account).where(Account.username == "chu-tri-tinh"))
        await create_room(
            db,
            creator,
            title="Giao ban tỉnh",
            starts_at=datetime.now(UTC),
            duration_minutes=60,
            mode="conference",
            lobby=False,
            site_codes=["01"],
            slug="giao-ban",
        )
    host = await make_peer(node, "Chủ trì", cookie=await signed_in(node, "chu-tri-tinh"))
    commune_official = await make_peer(
        node, "Cán bộ xã", cookie=await signed_in(node, "can-bo-xa", site="01-001")
    )
    outsider = await make_peer(node, "Người ngoài", cookie=await signed_in(node, "ngoai"))
    expired_session = await make_peer(node, "Cũ", cookie="not-a-session")
    closing.extend([host, commune_official, outsider, expired_session])

    assert (await host.join("giao-ban"))["role"] == "host"
    # Invited through the province: an office under it enters directly, with its site shown.
    entered = await commune_official.join("giao-ban")
    assert entered["role"] == "member" and entered["mode"] == "conference"
    await host.wait_for(
        lambda: any(
            e == "participant_joined" and p.get("site") == "Xã Một" for e, p in host.events
        ),
        5,
        "the host sees the commune's site",
    )
    # A signed-in account the room did not invite knocks in the lobby.
    assert (await outsider.join("giao-ban"))["lobby"] is True
    ack = await expired_session.request("join", {"room": "giao-ban", "name": "Cũ"})
    assert code_of(ack) == "unauthenticated"

    # A removed account (and a removed invitation token) cannot come back.
    token = await node.invite("giao-ban")
    async with node.app[DATABASE].session() as db, db.begin():
        room = await get_room(db, "giao-ban")
        official = await db.scalar(select(Account).where(Account.username == "can-bo-xa"))
        await add_removal(db, room, account_id=official.id, token_id=None, display_name="Cán bộ xã")
        jti = verify_invitation(node.app[SECRET_KEY], token).token_id
        await add_removal(db, room, account_id=None, token_id=jti, display_name="Khách")
    await commune_official.leave()
    ack = await commune_official.request("join", {"room": "giao-ban", "name": "Cán bộ xã"})
    assert code_of(ack) == "forbidden"
    removed_guest = await make_peer(node, "Khách")
    closing.append(removed_guest)
    ack = await removed_guest.request("join", {"room": "giao-ban", "name": "K", "token": token})
    assert code_of(ack) == "forbidden"


async def test_the_first_entry_marks_the_meeting_started(node, closing) -> None:  # type: ignore[no-untyped-def]
    peer = await make_peer(node, "Người đầu tiên")
    closing.append(peer)
    token = await node.invite("bat-dau")
    async with node.app[DATABASE].session() as db:
        assert (await get_room(db, "bat-dau")).started_at is None
    await peer.join("bat-dau", token)
    async with node.app[DATABASE].session() as db:
        assert (await get_room(db, "bat-dau")).started_at is not None


# -- helpers ------------------------------------------------------------------------------------


def _live_rooms(node):  # type: ignore[no-untyped-def]
    return node.app[ROOMS].by_name


async def admit_next(host: Peer) -> None:
    """The host admits the one person waiting in its lobby."""
    await host.wait_for(
        lambda: len((host.last_event("lobby_updated") or {}).get("waiting", [])) == 1,
        5,
        "someone waiting",
    )
    entry_id = host.last_event("lobby_updated")["waiting"][0]["id"]
    await host._ok("admit", {"entry_id": entry_id})


async def _metrics(node) -> str:  # type: ignore[no-untyped-def]
    async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as response:
        return await response.text()


async def test_a_host_ends_the_meeting_for_everyone(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await make_peer(node, "Chủ trì")
    member = await make_peer(node, "Xã E")
    waiting = await make_peer(node, "Khách")
    closing.extend([host, member, waiting])
    await host.join("ket-thuc", await node.invite("ket-thuc", "host"))
    member_token = await node.invite("ket-thuc")
    await member.join("ket-thuc", member_token)
    await waiting.join("ket-thuc", await node.invite("ket-thuc", "guest"))

    assert code_of(await member.request("end", {})) == "forbidden"
    assert "ket-thuc" in _live_rooms(node)
    await host._ok("end", {})
    for peer in (host, member, waiting):
        await peer.wait_for(
            lambda p=peer: p.last_event("meeting_ended") is not None, 5, "meeting_ended"
        )
    await host.wait_for(lambda: "ket-thuc" not in _live_rooms(node), 5, "the live room closed")
    async with node.app[DATABASE].session() as db:
        assert (await get_room(db, "ket-thuc")).ended_at is not None
    ack = await member.request("join", {"room": "ket-thuc", "name": "Xã E", "token": member_token})
    assert code_of(ack) == "room_ended"
    assert 'giaoban_host_actions_total{action="end"} 1.0' in await _metrics(node)


async def test_a_removed_participant_cannot_come_back(node, closing) -> None:  # type: ignore[no-untyped-def]
    host = await make_peer(node, "Chủ trì")
    member = await make_peer(node, "Xã F")
    other_host = await make_peer(node, "Phó chủ trì")
    closing.extend([host, member, other_host])
    await host.join("moi-ra", await node.invite("moi-ra", "host"))
    await other_host.join("moi-ra", await node.invite("moi-ra", "host"))
    token = await node.invite("moi-ra")
    await member.join("moi-ra", token)
    victim = member.participant_id

    assert code_of(await member.request("remove", {"participant_id": host.participant_id})) == (
        "forbidden"
    )
    assert code_of(await host.request("remove", {"participant_id": "p-000000000000"})) == (
        "not_found"
    )
    assert code_of(await host.request("remove", {"participant_id": "../x"})) == "bad_request"
    # Two hosts remove the same person at once: one succeeds, the other finds them gone.
    acks = await asyncio.gather(
        host.request("remove", {"participant_id": victim}),
        other_host.request("remove", {"participant_id": victim}),
    )
    assert sorted("ok" if "ok" in a else a["error"]["code"] for a in acks) == ["not_found", "ok"]
    await member.wait_for(lambda: member.last_event("removed") is not None, 5, "removed")
    await host.wait_for(
        lambda: any(
            e == "participant_left" and p["participant_id"] == victim for e, p in host.events
        ),
        5,
        "the member gone for the host",
    )
    assert victim not in _live_rooms(node)["moi-ra"].participants
    ack = await member.request("join", {"room": "moi-ra", "name": "Xã F", "token": token})
    assert code_of(ack) == "forbidden"
    assert 'giaoban_host_actions_total{action="remove"} 1.0' in await _metrics(node)
