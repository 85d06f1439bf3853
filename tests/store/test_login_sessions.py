"""Login sessions of server/auth.py against both databases: open, slide, expire, end."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from argon2 import PasswordHasher
from sqlalchemy import func, select, update

from server import accounts
from server.auth import (
    SESSION_LIFETIME,
    account_for_session_token,
    end_account_sessions,
    end_login_session,
    start_login_session,
)
from server.store.db import Database
from server.store.models import Account, LoginSession, Site, SiteLevel, utcnow

PASSWORD = "mật khẩu đủ dài"
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


async def _account(database: Database, username: str, site_code: str | None = None) -> Account:
    async with database.session() as s, s.begin():
        return await accounts.create_account(
            s, username, PASSWORD, role="host", site_code=site_code, hasher=FAST
        )


async def _start(database: Database, account: Account) -> str:
    async with database.session() as s, s.begin():
        return await start_login_session(s, account, user_agent="pytest", address="127.0.0.1")


async def _open(database: Database, token: str) -> Account | None:
    async with database.session() as s, s.begin():
        return await account_for_session_token(s, token)


async def _row(database: Database, token: str) -> LoginSession | None:
    async with database.session() as s:
        return await s.get(LoginSession, hashlib.sha256(token.encode()).hexdigest())


async def _count(database: Database) -> int:
    async with database.session() as s:
        return int((await s.execute(select(func.count()).select_from(LoginSession))).scalar_one())


async def test_token_opens_its_account_with_site(database: Database) -> None:
    async with database.session() as s, s.begin():
        s.add(Site(code="89", name="An Giang", level=SiteLevel.PROVINCE))
    account = await _account(database, "lan.nguyen", site_code="89")
    other = await _account(database, "an.tran")
    token = await _start(database, account)
    await _start(database, other)

    opened = await _open(database, token)
    assert opened is not None and opened.id == account.id
    # Loaded before the session closed: no lazy load (the relationship raises on one).
    assert opened.site is not None and opened.site.code == "89"
    assert await _open(database, token + "x") is None
    assert await _open(database, "") is None
    assert await _open(database, "a" * 10_000) is None


async def test_only_the_tokens_sha256_is_stored(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    token = await _start(database, account)
    assert len(token) >= 40  # 32 random bytes, base64url
    async with database.session() as s:
        ids = list((await s.execute(select(LoginSession.id))).scalars())
    assert ids == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in ids
    row = await _row(database, token)
    assert row is not None
    assert row.account_id == account.id
    assert row.user_agent == "pytest" and row.address == "127.0.0.1"
    assert timedelta(0) < row.expires_at - utcnow() <= SESSION_LIFETIME


async def test_expired_session_is_refused_and_deleted(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    token = await _start(database, account)
    async with database.session() as s, s.begin():
        await s.execute(update(LoginSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert await _open(database, token) is None
    assert await _row(database, token) is None


async def test_new_sign_in_sweeps_expired_rows(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    old = await _start(database, account)
    async with database.session() as s, s.begin():
        await s.execute(update(LoginSession).values(expires_at=utcnow() - timedelta(hours=1)))
    await _start(database, account)
    assert await _row(database, old) is None
    assert await _count(database) == 1


async def test_expiry_slides_at_most_once_a_minute(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    token = await _start(database, account)
    first = await _row(database, token)
    assert first is not None
    # Within the minute: nothing is written.
    assert await _open(database, token) is not None
    again = await _row(database, token)
    assert again is not None
    assert (again.last_seen_at, again.expires_at) == (first.last_seen_at, first.expires_at)

    # Two hours later (moved back in the store): the use pushes the expiry forward.
    earlier = utcnow() - timedelta(hours=2)
    async with database.session() as s, s.begin():
        await s.execute(
            update(LoginSession).values(last_seen_at=earlier, expires_at=earlier + SESSION_LIFETIME)
        )
    assert await _open(database, token) is not None
    slid = await _row(database, token)
    assert slid is not None
    assert slid.last_seen_at > earlier + timedelta(hours=1)
    assert slid.expires_at - utcnow() > SESSION_LIFETIME - timedelta(minutes=1)


async def test_disabled_account_has_no_session(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    token = await _start(database, account)
    async with database.session() as s, s.begin():
        await accounts.disable_account(s, "lan.nguyen")
    assert await _open(database, token) is None


async def test_end_login_session(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    token = await _start(database, account)
    kept = await _start(database, account)
    async with database.session() as s, s.begin():
        await end_login_session(s, token)
        await end_login_session(s, "never-issued")  # not an error
    assert await _open(database, token) is None
    assert await _open(database, kept) is not None


async def test_end_account_sessions_signs_out_everywhere(database: Database) -> None:
    account = await _account(database, "lan.nguyen")
    other = await _account(database, "an.tran")
    tokens = [await _start(database, account) for _ in range(3)]
    other_token = await _start(database, other)
    async with database.session() as s, s.begin():
        await accounts.set_password(s, "lan.nguyen", "mật khẩu mới đủ dài", hasher=FAST)
        ended = await end_account_sessions(s, account.id)
    assert ended == 3
    for token in tokens:
        assert await _open(database, token) is None
    opened = await _open(database, other_token)
    assert opened is not None and opened.id == other.id
    async with database.session() as s, s.begin():
        assert await end_account_sessions(s, account.id) == 0
