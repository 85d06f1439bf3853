"""server/room_records.py against both databases: scheduling, visibility, roles, end, removals."""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server import accounts, room_records
from server.errors import AlreadyExists, BadRequest, Forbidden, NotFound, RoomEnded
from server.room_records import (
    add_removal,
    create_room,
    end_room,
    get_room,
    is_removed,
    list_rooms,
    mark_started,
    room_role,
    room_state,
    update_room,
)
from server.store.db import Database
from server.store.models import Account, InviteRole, RoomMode, RoomRecord, Site, SiteLevel

PASSWORD = "mật khẩu đủ dài"
# Cheap parameters keep the suite fast (see test_accounts.py).
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
NOW = datetime(2025, 9, 1, 1, 0, tzinfo=UTC)
SOON = NOW + timedelta(days=1)

T = TypeVar("T")


async def _in(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with database.session() as session, session.begin():
        return await work(session)


async def _account(
    database: Database, username: str, role: str = "member", site: str | None = None
) -> Account:
    return await _in(
        database,
        lambda s: accounts.create_account(
            s, username, PASSWORD, role=role, site_code=site, hasher=FAST
        ),
    )


async def _site(database: Database, code: str, level: SiteLevel, parent: str | None = None) -> None:
    async def add(session: AsyncSession) -> None:
        parent_site = None
        if parent is not None:
            parent_site = await session.scalar(select(Site.id).where(Site.code == parent))
        session.add(Site(code=code, name=f"Đơn vị {code}", level=level, parent_id=parent_site))

    await _in(database, add)


async def _create(database: Database, creator: Account, **kw: Any) -> RoomRecord:
    kw.setdefault("title", "Giao ban tuần")
    kw.setdefault("starts_at", SOON)
    kw.setdefault("duration_minutes", 60)
    kw.setdefault("mode", "discussion")
    kw.setdefault("lobby", True)
    return await _in(database, lambda s: create_room(s, creator, **kw))


@pytest.fixture
async def tree(database: Database) -> Database:
    """Province 79 with district 760 and commune 26734 under it; province 01 apart."""
    await _site(database, "79", SiteLevel.PROVINCE)
    await _site(database, "760", SiteLevel.DISTRICT, parent="79")
    await _site(database, "26734", SiteLevel.COMMUNE, parent="760")
    await _site(database, "01", SiteLevel.PROVINCE)
    return database


async def test_create_and_get(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    await _site(database, "79", SiteLevel.PROVINCE)
    host = await _account(database, "chu.tri", role="host")
    member = await _account(database, "thanh.vien")
    cohost = await _account(database, "pho.chu.tri")
    decomposed = unicodedata.normalize("NFD", "  Giao ban Sở Y tế  ")
    with caplog.at_level(logging.INFO, logger="server.room_records"):
        room = await _create(
            database,
            host,
            title=decomposed,
            mode="Conference",
            lobby=False,
            site_codes=["79", "79"],
            member_usernames=["Thanh.Vien", "pho.chu.tri"],
            host_usernames=["pho.chu.tri"],
        )
    assert re.fullmatch(r"[a-z]{3}-[a-z]{4}-[a-z]{3}", room.slug)
    assert f"room created room={room.slug} by account {host.id}" in caplog.text
    loaded = await _in(database, lambda s: get_room(s, room.slug))
    assert loaded.title == "Giao ban Sở Y tế"
    assert loaded.title == unicodedata.normalize("NFC", loaded.title)
    assert loaded.mode is RoomMode.CONFERENCE
    assert loaded.lobby is False
    assert loaded.starts_at == SOON
    assert loaded.duration_minutes == 60
    assert loaded.created_by.username == "chu.tri"
    invites = sorted(
        (i.site.code if i.site else i.account.username if i.account else "", i.role)
        for i in loaded.invites
    )
    # Named both member and host: one invitation, as host.
    assert invites == [
        ("79", InviteRole.MEMBER),
        ("pho.chu.tri", InviteRole.HOST),
        ("thanh.vien", InviteRole.MEMBER),
    ]
    assert room_state(loaded, NOW) == "upcoming"
    assert {member.id, cohost.id} == {i.account_id for i in loaded.invites if i.account_id}


@pytest.mark.parametrize(
    ("changes", "error", "detail"),
    [
        ({"title": "   "}, BadRequest, "title must not be empty"),
        ({"title": "x" * 201}, BadRequest, "at most 200"),
        ({"duration_minutes": 4}, BadRequest, "5-1440"),
        ({"duration_minutes": 1441}, BadRequest, "5-1440"),
        ({"duration_minutes": True}, BadRequest, "whole number"),
        ({"starts_at": datetime(2025, 9, 2, 8, 0)}, BadRequest, "time zone"),
        ({"mode": "lecture"}, BadRequest, "mode must be one of"),
        ({"slug": "có dấu"}, BadRequest, "room name must be"),
        ({"slug": "x" * 65}, BadRequest, "room name must be"),
        ({"site_codes": ["99999"]}, NotFound, "'99999'"),
        ({"member_usernames": ["nobody"]}, NotFound, "'nobody'"),
        ({"host_usernames": ["Not A Name"]}, NotFound, "'Not A Name'"),
    ],
)
async def test_create_rejects(
    database: Database, changes: dict[str, Any], error: type[Exception], detail: str
) -> None:
    host = await _account(database, "chu.tri", role="host")
    with pytest.raises(error, match=re.escape(detail)):
        await _create(database, host, **changes)
    assert await _in(database, lambda s: list_rooms(s, host, NOW)) == {
        "upcoming": [],
        "live": [],
        "ended": [],
    }


async def test_only_hosts_and_admins_create(database: Database) -> None:
    admin = await _account(database, "quan.tri", role="admin")
    member = await _account(database, "thanh.vien")
    archivist = await _account(database, "luu.tru", role="archivist")
    assert (await _create(database, admin)).created_by_id == admin.id
    for account in (member, archivist):
        with pytest.raises(Forbidden):
            await _create(database, account)


async def test_explicit_slug_and_collision(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = await _account(database, "chu.tri", role="host")
    room = await _create(database, host, slug="Giao_Ban-79")
    assert room.slug == "Giao_Ban-79"
    with pytest.raises(AlreadyExists, match="'Giao_Ban-79' is taken"):
        await _create(database, host, slug="Giao_Ban-79")
    # A random name that is taken is drawn again.
    names = iter(["giao-ban_-79", "Giao_Ban-79", "abc-defg-hij"])
    monkeypatch.setattr(room_records, "random_slug", lambda: next(names))
    await _create(database, host, slug="giao-ban_-79")
    assert (await _create(database, host)).slug == "abc-defg-hij"
    # Every draw taken: a named error, not a loop.
    monkeypatch.setattr(room_records, "random_slug", lambda: "abc-defg-hij")
    with pytest.raises(AlreadyExists, match="no free room name"):
        await _create(database, host)


async def test_list_visibility_follows_invitations_and_site_tree(tree: Database) -> None:
    database = tree
    host = await _account(database, "chu.tri", role="host")
    admin = await _account(database, "quan.tri", role="admin")
    commune = await _account(database, "can.bo.xa", site="26734")
    district = await _account(database, "huyen", site="760")
    other = await _account(database, "tinh.khac", site="01")
    invited = await _account(database, "khach", site="01")
    nobody = await _account(database, "khong.ai")

    province_room = await _create(database, host, title="Tỉnh", site_codes=["79"])
    district_room = await _create(
        database, host, title="Huyện", site_codes=["760"], starts_at=SOON + timedelta(hours=1)
    )
    commune_room = await _create(
        database,
        host,
        title="Xã",
        site_codes=["26734"],
        member_usernames=["khach"],
        starts_at=SOON - timedelta(hours=1),
    )

    async def titles(account: Account) -> dict[str, list[str]]:
        listed = await _in(database, lambda s: list_rooms(s, account, NOW))
        return {state: [r.title for r in rooms] for state, rooms in listed.items()}

    everything = {"upcoming": ["Xã", "Tỉnh", "Huyện"], "live": [], "ended": []}
    assert await titles(host) == everything
    assert await titles(admin) == everything
    # Inviting a province invites the offices under it; a site below does not invite above.
    assert await titles(commune) == everything
    assert await titles(district) == {"upcoming": ["Tỉnh", "Huyện"], "live": [], "ended": []}
    assert await titles(other) == {"upcoming": [], "live": [], "ended": []}
    assert await titles(invited) == {"upcoming": ["Xã"], "live": [], "ended": []}
    assert await titles(nobody) == {"upcoming": [], "live": [], "ended": []}

    await _in(database, lambda s: mark_started(s, district_room.slug))
    await _in(database, lambda s: end_room(s, host, province_room.slug))
    await _in(database, lambda s: end_room(s, None, commune_room.slug))
    assert await titles(commune) == {"upcoming": [], "live": ["Huyện"], "ended": ["Xã", "Tỉnh"]}
    assert await titles(invited) == {"upcoming": [], "live": [], "ended": ["Xã"]}


async def test_ended_list_is_limited(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    host = await _account(database, "chu.tri", role="host")
    monkeypatch.setattr(room_records, "ENDED_LIST_LIMIT", 3)
    for n in range(5):
        room = await _create(database, host, title=f"Phòng {n}")
        await _in(database, lambda s, slug=room.slug: end_room(s, host, slug))
    listed = await _in(database, lambda s: list_rooms(s, host, NOW))
    assert [r.title for r in listed["ended"]] == ["Phòng 4", "Phòng 3", "Phòng 2"]


async def test_roles(tree: Database) -> None:
    database = tree
    host = await _account(database, "chu.tri", role="host")
    admin = await _account(database, "quan.tri", role="admin")
    cohost = await _account(database, "pho.chu.tri")
    commune = await _account(database, "can.bo.xa", site="26734")
    direct = await _account(database, "truc.tiep", site="01")
    outsider = await _account(database, "ngoai", role="host", site="01")
    room = await _create(
        database,
        host,
        site_codes=["79"],
        member_usernames=["truc.tiep"],
        host_usernames=["pho.chu.tri"],
    )

    async def role(account: Account) -> str | None:
        return await _in(database, lambda s: room_role(s, room, account))

    assert await role(host) == "host"
    assert await role(admin) == "host"
    assert await role(cohost) == "host"
    assert await role(commune) == "member"
    assert await role(direct) == "member"
    assert await role(outsider) is None
    await _in(database, lambda s: accounts.disable_account(s, "can.bo.xa"))
    commune.disabled = True
    assert await role(commune) is None


async def test_update(database: Database, caplog: pytest.LogCaptureFixture) -> None:
    await _site(database, "79", SiteLevel.PROVINCE)
    await _site(database, "01", SiteLevel.PROVINCE)
    host = await _account(database, "chu.tri", role="host")
    cohost = await _account(database, "pho.chu.tri")
    member = await _account(database, "thanh.vien")
    await _account(database, "moi")
    room = await _create(
        database, host, site_codes=["79"], member_usernames=["thanh.vien"], host_usernames=[]
    )
    with pytest.raises(Forbidden):
        await _in(database, lambda s: update_room(s, member, room.slug, title="Đổi"))
    with pytest.raises(BadRequest, match="cannot change ended_at"):
        await _in(database, lambda s: update_room(s, host, room.slug, ended_at=NOW))
    with pytest.raises(NotFound):
        await _in(database, lambda s: update_room(s, host, "khong-co", title="Đổi"))
    with caplog.at_level(logging.INFO, logger="server.room_records"):
        await _in(
            database,
            lambda s: update_room(
                s,
                host,
                room.slug,
                title="Giao ban tháng",
                duration_minutes=90,
                mode="training",
                lobby=False,
                host_usernames=["pho.chu.tri"],
            ),
        )
    assert f"room updated room={room.slug} by account {host.id}" in caplog.text
    # The invited co-host may change it too; site list replaced, member list kept.
    later = SOON + timedelta(days=2)
    updated = await _in(
        database,
        lambda s: update_room(s, cohost, room.slug, starts_at=later, site_codes=["01"]),
    )
    assert (updated.title, updated.duration_minutes, updated.mode, updated.lobby) == (
        "Giao ban tháng",
        90,
        RoomMode.TRAINING,
        False,
    )
    loaded = await _in(database, lambda s: get_room(s, room.slug))
    assert loaded.starts_at == later
    assert sorted(
        (i.site.code if i.site else i.account.username if i.account else "", i.role)
        for i in loaded.invites
    ) == [
        ("01", InviteRole.MEMBER),
        ("pho.chu.tri", InviteRole.HOST),
        ("thanh.vien", InviteRole.MEMBER),
    ]
    with pytest.raises(BadRequest):
        await _in(database, lambda s: update_room(s, host, room.slug, duration_minutes=0))
    with pytest.raises(NotFound):
        await _in(database, lambda s: update_room(s, host, room.slug, member_usernames=["ai"]))
    await _in(database, lambda s: end_room(s, host, room.slug))
    with pytest.raises(RoomEnded):
        await _in(database, lambda s: update_room(s, host, room.slug, title="Muộn"))


async def test_end_and_start(database: Database) -> None:
    host = await _account(database, "chu.tri", role="host")
    member = await _account(database, "thanh.vien")
    room = await _create(database, host, member_usernames=["thanh.vien"])
    with pytest.raises(NotFound):
        await _in(database, lambda s: mark_started(s, "khong-co"))
    await _in(database, lambda s: mark_started(s, room.slug))
    started = (await _in(database, lambda s: get_room(s, room.slug))).started_at
    assert started is not None
    await _in(database, lambda s: mark_started(s, room.slug))
    live = await _in(database, lambda s: get_room(s, room.slug))
    assert live.started_at == started
    assert room_state(live, NOW) == "live"

    with pytest.raises(Forbidden):
        await _in(database, lambda s: end_room(s, member, room.slug))
    ended = await _in(database, lambda s: end_room(s, host, room.slug))
    assert ended.ended_at is not None
    assert room_state(ended, NOW) == "ended"
    again = await _in(database, lambda s: end_room(s, None, room.slug))
    assert again.ended_at == ended.ended_at
    with pytest.raises(RoomEnded):
        await _in(database, lambda s: mark_started(s, room.slug))
    with pytest.raises(NotFound):
        await _in(database, lambda s: end_room(s, host, "khong-co"))


async def test_removals(database: Database) -> None:
    host = await _account(database, "chu.tri", role="host")
    member = await _account(database, "thanh.vien")
    room = await _create(database, host, member_usernames=["thanh.vien"])
    other = await _create(database, host)

    async def removed(target: RoomRecord, account_id: int | None, token_id: str | None) -> bool:
        return await _in(
            database, lambda s: is_removed(s, target, account_id=account_id, token_id=token_id)
        )

    assert not await removed(room, member.id, None)
    await _in(
        database,
        lambda s: add_removal(
            s, room, account_id=member.id, token_id=None, display_name="Thành viên"
        ),
    )
    await _in(
        database,
        lambda s: add_removal(s, room, account_id=None, token_id="jti-1", display_name="Khách"),
    )
    assert await removed(room, member.id, None)
    assert await removed(room, None, "jti-1")
    assert await removed(room, host.id, "jti-1")
    assert not await removed(room, host.id, "jti-2")
    assert not await removed(room, None, None)
    assert not await removed(other, member.id, "jti-1")
    with pytest.raises(BadRequest):
        await _in(
            database,
            lambda s: add_removal(s, room, account_id=None, token_id=None, display_name="x"),
        )
