"""server/api_tokens.py against both databases: make, find, list, revoke, last use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import pytest
from argon2 import PasswordHasher
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server import accounts
from server.api_tokens import (
    account_for_api_token,
    create_api_token,
    hash_api_token,
    list_all_api_tokens,
    list_api_tokens,
    revoke_api_token,
)
from server.errors import BadRequest, NotFound
from server.store.db import Database
from server.store.models import Account, ApiToken, utcnow

PASSWORD = "mật khẩu đủ dài"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)

T = TypeVar("T")


async def _in(database: Database, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    async with database.session() as session, session.begin():
        return await work(session)


async def _account(database: Database, username: str, role: str = "host") -> Account:
    return await _in(
        database,
        lambda s: accounts.create_account(s, username, PASSWORD, role=role, hasher=FAST),
    )


async def _token_row(database: Database, token_id: int) -> ApiToken:
    async with database.session() as session:
        row = await session.get(ApiToken, token_id)
        assert row is not None
        return row


async def test_a_token_is_shown_once_and_stored_as_a_hash(database: Database) -> None:
    owner = await _account(database, "lan.nguyen")
    row, token = await _in(database, lambda s: create_api_token(s, owner, "  lịch họp tuần  "))
    assert token.startswith("gb_") and len(token) >= 40
    stored = await _token_row(database, row.id)
    assert stored.name == "lịch họp tuần"
    assert stored.token_hash == hash_api_token(token) != token
    assert token not in stored.token_hash
    assert (stored.last_used_at, stored.revoked_at) == (None, None)

    found = await _in(database, lambda s: account_for_api_token(s, token))
    assert found is not None and found.id == owner.id
    assert (await _token_row(database, row.id)).last_used_at is not None

    # Two tokens of one account are different tokens.
    _, other = await _in(database, lambda s: create_api_token(s, owner, "khác"))
    assert other != token


@pytest.mark.parametrize("name", ["", "   ", "x" * 101])
async def test_a_token_needs_a_name_of_1_to_100_characters(database: Database, name: str) -> None:
    owner = await _account(database, "lan.nguyen")
    with pytest.raises(BadRequest):
        await _in(database, lambda s: create_api_token(s, owner, name))
    async with database.session() as session:
        assert (await session.execute(select(ApiToken))).first() is None


@pytest.mark.parametrize(
    "token", ["", "gb_", "gb_not-a-token", "not-prefixed", "gb_" + "a" * 200, "\x00"]
)
async def test_unknown_tokens_open_nothing(database: Database, token: str) -> None:
    owner = await _account(database, "lan.nguyen")
    await _in(database, lambda s: create_api_token(s, owner, "thật"))
    assert await _in(database, lambda s: account_for_api_token(s, token)) is None


async def test_revoked_tokens_and_disabled_accounts_open_nothing(database: Database) -> None:
    owner = await _account(database, "lan.nguyen")
    kept, kept_token = await _in(database, lambda s: create_api_token(s, owner, "giữ"))
    gone, gone_token = await _in(database, lambda s: create_api_token(s, owner, "thu hồi"))

    revoked = await _in(database, lambda s: revoke_api_token(s, owner, gone.id))
    assert revoked.revoked_at is not None
    again = await _in(database, lambda s: revoke_api_token(s, owner, gone.id))  # no error
    assert again.revoked_at == revoked.revoked_at
    assert await _in(database, lambda s: account_for_api_token(s, gone_token)) is None
    assert await _in(database, lambda s: account_for_api_token(s, kept_token)) is not None

    await _in(database, lambda s: accounts.disable_account(s, "lan.nguyen"))
    assert await _in(database, lambda s: account_for_api_token(s, kept_token)) is None
    assert kept.id != gone.id


async def test_only_the_owner_or_an_admin_revokes(database: Database) -> None:
    owner = await _account(database, "lan.nguyen")
    other = await _account(database, "an.tran", "member")
    admin = await _account(database, "quan-tri", "admin")
    row, token = await _in(database, lambda s: create_api_token(s, owner, "lịch"))

    with pytest.raises(NotFound):  # not Forbidden: another account's ids are not disclosed
        await _in(database, lambda s: revoke_api_token(s, other, row.id))
    with pytest.raises(NotFound):
        await _in(database, lambda s: revoke_api_token(s, owner, row.id + 1000))
    assert await _in(database, lambda s: account_for_api_token(s, token)) is not None

    await _in(database, lambda s: revoke_api_token(s, admin, row.id))
    assert await _in(database, lambda s: account_for_api_token(s, token)) is None

    second, _ = await _in(database, lambda s: create_api_token(s, owner, "lịch 2"))
    await _in(database, lambda s: revoke_api_token(s, None, second.id))  # the operator
    assert (await _token_row(database, second.id)).revoked_at is not None


async def test_lists_are_per_account_newest_first(database: Database) -> None:
    owner = await _account(database, "lan.nguyen")
    other = await _account(database, "an.tran", "member")
    first, _ = await _in(database, lambda s: create_api_token(s, owner, "một"))
    second, _ = await _in(database, lambda s: create_api_token(s, owner, "hai"))
    theirs, _ = await _in(database, lambda s: create_api_token(s, other, "của An"))
    await _in(database, lambda s: revoke_api_token(s, owner, first.id))

    mine = await _in(database, lambda s: list_api_tokens(s, owner))
    assert [t.id for t in mine] == [second.id, first.id]
    assert mine[1].revoked_at is not None
    assert [t.id for t in await _in(database, lambda s: list_api_tokens(s, other))] == [theirs.id]

    every = await _in(database, list_all_api_tokens)
    assert [(t.account.username, t.id) for t in every] == [
        ("an.tran", theirs.id),
        ("lan.nguyen", second.id),
        ("lan.nguyen", first.id),
    ]


async def test_last_use_is_written_at_most_once_a_minute(database: Database) -> None:
    owner = await _account(database, "lan.nguyen")
    row, token = await _in(database, lambda s: create_api_token(s, owner, "lịch"))
    await _in(database, lambda s: account_for_api_token(s, token))
    first = (await _token_row(database, row.id)).last_used_at
    assert first is not None
    await _in(database, lambda s: account_for_api_token(s, token))
    assert (await _token_row(database, row.id)).last_used_at == first

    earlier = utcnow() - timedelta(minutes=5)

    async def age(session: AsyncSession) -> None:
        await session.execute(
            update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=earlier)
        )

    await _in(database, age)
    await _in(database, lambda s: account_for_api_token(s, token))
    assert (await _token_row(database, row.id)).last_used_at > earlier  # type: ignore[operator]
