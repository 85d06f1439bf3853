"""server/chat.py against both databases: what a message may hold, storing, history; and the
rate limit (plain logic, no database)."""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from argon2 import PasswordHasher
from sqlalchemy.ext.asyncio import AsyncSession

from server import accounts
from server.chat import (
    MAX_CHAT_CHARS,
    MAX_CHAT_LINES,
    RateLimit,
    add_message,
    clean_text,
    recent_messages,
)
from server.errors import BadRequest, NotFound, TooMany
from server.room_records import create_room
from server.store.db import Database
from server.store.models import Account, ChatMessage

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
START = datetime(2025, 9, 1, 1, 0, tzinfo=UTC)

T = TypeVar("T")


async def _in(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with database.session() as session, session.begin():
        return await work(session)


async def _account(database: Database, username: str, role: str = "member") -> Account:
    return await _in(
        database,
        lambda s: accounts.create_account(s, username, "mật khẩu đủ dài", role=role, hasher=FAST),
    )


async def _room(database: Database, creator: Account, slug: str) -> None:
    await _in(
        database,
        lambda s: create_room(
            s,
            creator,
            title="Giao ban tuần",
            starts_at=START,
            duration_minutes=60,
            mode="discussion",
            lobby=False,
            slug=slug,
        ),
    )


async def _say(
    database: Database,
    slug: str,
    text: str,
    *,
    minute: int,
    name: str = "UBND xã A",
    account_id: int | None = None,
    role: str = "member",
    to_hosts: bool = False,
) -> ChatMessage:
    return await _in(
        database,
        lambda s: add_message(
            s,
            slug,
            sender_account_id=account_id,
            sender_name=name,
            sender_role=role,
            to_hosts=to_hosts,
            text=text,
            at=START + timedelta(minutes=minute),
        ),
    )


async def _history(database: Database, slug: str, **kw: Any) -> list[tuple[str, str, bool]]:
    found = await _in(database, lambda s: recent_messages(s, slug, **kw))
    return [(m.sender_name, m.text, m.to_hosts) for m in found]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("  Chào các đồng chí  ", "Chào các đồng chí"),
        (unicodedata.normalize("NFD", "Báo cáo số liệu"), "Báo cáo số liệu"),
        ("dòng 1\r\ndòng 2\rdòng 3", "dòng 1\ndòng 2\ndòng 3"),
        ('<script>alert("x")</script>', '<script>alert("x")</script>'),
        ("\t tab ở đầu bị cắt", "tab ở đầu bị cắt"),
        ("x" * MAX_CHAT_CHARS, "x" * MAX_CHAT_CHARS),
        ("\n".join(["a"] * MAX_CHAT_LINES), "\n".join(["a"] * MAX_CHAT_LINES)),
        ("👍🏽 đồng ý", "👍🏽 đồng ý"),
    ],
)
def test_clean_text_keeps(given: str, kept: str) -> None:
    assert clean_text(given) == kept


@pytest.mark.parametrize(
    ("given", "detail"),
    [
        (None, "must be a string"),
        (42, "must be a string"),
        (["a"], "must be a string"),
        ("", "empty"),
        (" \n\t ", "empty"),
        ("x" * (MAX_CHAT_CHARS + 1), "longer than"),
        ("\n".join(["a"] * (MAX_CHAT_LINES + 1)), "more than"),
        ("chuông\x07", "U+0007"),
        ("a\x00b", "U+0000"),
        ("a\tb", "U+0009"),
        ("a\x1b[31mb", "U+001B"),
        ("a\u202eb", "U+202E"),
        ("a\ud800b", "U+D800"),
    ],
)
def test_clean_text_refuses(given: object, detail: str) -> None:
    with pytest.raises(BadRequest, match=detail.replace("+", r"\+")):
        clean_text(given)


def test_a_decomposed_text_is_measured_after_normalising() -> None:
    # 1000 "ế" in NFD are 3000 code points; NFC makes them 1000 characters, which fit.
    assert len(clean_text(unicodedata.normalize("NFD", "ế" * MAX_CHAT_CHARS))) == 1000


async def test_add_and_read_back(database: Database) -> None:
    host = await _account(database, "chu.tri", role="host")
    await _room(database, host, "giao-ban")
    stored = await _say(database, "giao-ban", "  <b>Xin chào</b>  ", minute=1, account_id=host.id)
    assert stored.id is not None
    assert stored.text == "<b>Xin chào</b>"
    (read,) = await _in(database, lambda s: recent_messages(s, "giao-ban", include_private=False))
    assert (read.id, read.text, read.sender_account_id) == (stored.id, stored.text, host.id)
    assert (read.sender_name, read.sender_role, read.to_hosts) == ("UBND xã A", "member", False)
    assert read.sent_at == START + timedelta(minutes=1)
    assert read.sent_at.tzinfo is not None


async def test_unknown_room_and_bad_text(database: Database) -> None:
    host = await _account(database, "chu.tri", role="host")
    await _room(database, host, "giao-ban")
    with pytest.raises(NotFound):
        await _say(database, "khong-co", "xin chào", minute=1)
    with pytest.raises(BadRequest):
        await _say(database, "giao-ban", "\x00", minute=1)
    assert await _history(database, "giao-ban", include_private=True) == []
    assert await _history(database, "khong-co", include_private=True) == []


async def test_who_sees_private_messages(database: Database) -> None:
    host = await _account(database, "chu.tri", role="host")
    member = await _account(database, "xa.a")
    other = await _account(database, "xa.b")
    await _room(database, host, "giao-ban")
    await _room(database, host, "phong-khac")
    await _say(database, "giao-ban", "chào cả phòng", minute=1, name="Chủ trì", role="host")
    await _say(database, "giao-ban", "riêng của A", minute=2, account_id=member.id, to_hosts=True)
    await _say(
        database, "giao-ban", "riêng của B", minute=3, name="B", account_id=other.id, to_hosts=True
    )
    await _say(database, "giao-ban", "riêng, qua đường mời", minute=4, name="C", to_hosts=True)
    await _say(database, "giao-ban", "A nói với cả phòng", minute=5, account_id=member.id)
    await _say(database, "phong-khac", "phòng khác", minute=6)

    assert await _history(database, "giao-ban", include_private=True) == [
        ("Chủ trì", "chào cả phòng", False),
        ("UBND xã A", "riêng của A", True),
        ("B", "riêng của B", True),
        ("C", "riêng, qua đường mời", True),
        ("UBND xã A", "A nói với cả phòng", False),
    ]
    assert await _history(
        database, "giao-ban", include_private=False, sender_account_id=member.id
    ) == [
        ("Chủ trì", "chào cả phòng", False),
        ("UBND xã A", "riêng của A", True),
        ("UBND xã A", "A nói với cả phòng", False),
    ]
    # Without an account (an invitation link): room messages only.
    assert await _history(database, "giao-ban", include_private=False) == [
        ("Chủ trì", "chào cả phòng", False),
        ("UBND xã A", "A nói với cả phòng", False),
    ]


async def test_history_is_the_newest_oldest_first(database: Database) -> None:
    host = await _account(database, "chu.tri", role="host")
    await _room(database, host, "giao-ban")
    for n in range(7):
        await _say(database, "giao-ban", f"tin {n}", minute=n)
    # Two in the same instant keep the order they were stored in.
    await _say(database, "giao-ban", "cùng lúc 1", minute=10)
    await _say(database, "giao-ban", "cùng lúc 2", minute=10)
    texts = [t for _, t, _ in await _history(database, "giao-ban", include_private=True, limit=4)]
    assert texts == ["tin 5", "tin 6", "cùng lúc 1", "cùng lúc 2"]


def test_rate_limit_is_a_sliding_window() -> None:
    now = [100.0]
    limit = RateLimit(3, 10.0, clock=lambda: now[0])
    for at in (100.0, 101.0, 102.0):
        now[0] = at
        limit.hit("p-1")
    with pytest.raises(TooMany, match=r"at most 3 in 10 s; wait 8\.0 s"):
        limit.hit("p-1")
    limit.hit("p-2")  # another participant has its own allowance
    now[0] = 109.9
    with pytest.raises(TooMany):
        limit.hit("p-1")  # refused hits do not count: the first still frees at 110
    now[0] = 110.0
    limit.hit("p-1")  # the hit at 100 left the window; those at 101 and 102 are still in it
    with pytest.raises(TooMany):
        limit.hit("p-1")
    now[0] = 112.0
    limit.hit("p-1")


def test_rate_limit_forgets_idle_keys() -> None:
    now = [0.0]
    limit = RateLimit(1, 5.0, max_keys=4, clock=lambda: now[0])
    for n in range(4):
        limit.hit(f"p-{n}")
    now[0] = 6.0
    limit.hit("p-new")
    assert len(limit) == 1
    limit.forget("p-new")
    assert len(limit) == 0
