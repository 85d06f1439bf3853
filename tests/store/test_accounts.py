"""server/accounts.py against both databases: create, list, passwords, disable, sign-in."""

from __future__ import annotations

import logging
import unicodedata

import pytest
from argon2 import PasswordHasher, Type

from server import accounts
from server.errors import AlreadyExists, BadRequest, Conflict, Forbidden, LoginFailed, NotFound
from server.store.db import Database
from server.store.models import Account, Role, Site, SiteLevel

PASSWORD = "mật khẩu đủ dài"  # 15 characters
# Cheap parameters keep the suite fast; the real ones are checked in test_default_hasher.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


class CountingHasher(PasswordHasher):
    """Counts verifications: an unknown user must cost one too."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=1024, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:
        self.verified += 1
        return super().verify(hash, password)


async def _add(database: Database, username: str, **kw: object) -> Account:
    kw.setdefault("role", "member")
    async with database.session() as session, session.begin():
        return await accounts.create_account(
            session,
            username,
            str(kw.pop("password", PASSWORD)),
            hasher=FAST,
            **kw,  # type: ignore[arg-type]
        )


async def _authenticate(
    database: Database, username: str, password: str, hasher: PasswordHasher = FAST
) -> Account:
    async with database.session() as session, session.begin():
        return await accounts.authenticate(session, username, password, hasher=hasher)


async def _add_site(database: Database, code: str, name: str) -> None:
    async with database.session() as session, session.begin():
        session.add(Site(code=code, name=name, level=SiteLevel.COMMUNE))


def test_default_hasher_is_argon2id() -> None:
    assert accounts.HASHER.type is Type.ID
    assert accounts.HASHER.hash(PASSWORD).startswith("$argon2id$")


async def test_create_and_list(database: Database) -> None:
    await _add_site(database, "26734", "Phường Bến Nghé")
    created = await _add(database, "Lan.Nguyen", role="host", display_name="Nguyễn Thị Lan")
    await _add(database, "an-tran", role="admin", site_code="26734")
    assert created.username == "lan.nguyen"
    assert created.id is not None
    async with database.session() as session:
        listed = await accounts.list_accounts(session)
    assert [(a.username, a.role, a.display_name, a.disabled) for a in listed] == [
        ("an-tran", Role.ADMIN, "an-tran", False),
        ("lan.nguyen", Role.HOST, "Nguyễn Thị Lan", False),
    ]
    assert listed[0].site is not None and listed[0].site.code == "26734"
    assert listed[1].site is None
    assert listed[0].password_hash.startswith("$argon2id$")
    assert listed[0].created_at.tzinfo is not None
    assert listed[0].updated_at >= listed[0].created_at


async def test_vietnamese_text_round_trips(database: Database) -> None:
    name = "Nguyễn Thị Hằng — Ủy ban nhân dân xã Đắk Lắk"
    decomposed = unicodedata.normalize("NFD", name)
    await _add_site(database, "99", "Xã Đắk Ơ, tỉnh Đồng Nai")
    await _add(database, "hang", display_name=decomposed, site_code="99")
    async with database.session() as session:  # a new session: read back from the database
        (account,) = await accounts.list_accounts(session)
    assert account.display_name == name  # stored NFC
    assert account.site is not None and account.site.name == "Xã Đắk Ơ, tỉnh Đồng Nai"


async def test_duplicate_usernames_conflict_in_any_case(database: Database) -> None:
    await _add(database, "lan")
    for again in ("lan", "LAN", "Lan"):
        with pytest.raises(AlreadyExists) as caught:
            await _add(database, again)
        assert isinstance(caught.value, Conflict)
        assert caught.value.code == "conflict"
    async with database.session() as session:
        assert len(await accounts.list_accounts(session)) == 1


@pytest.mark.parametrize(
    ("username", "kw", "match"),
    [
        ("lan", {"role": "boss"}, "role must be one of"),
        ("lan", {"role": ""}, "role must be one of"),
        ("lan", {"password": "123456789"}, "at least 10 characters"),
        ("lan", {"password": ""}, "at least 10 characters"),
        ("lan", {"password": "x" * 1025}, "at most 1024"),
        ("ab", {}, "username must be"),
        ("có.dấu", {}, "username must be"),
        ("with space", {}, "username must be"),
        ("x" * 65, {}, "username must be"),
    ],
)
async def test_bad_input_is_refused(
    database: Database, username: str, kw: dict[str, object], match: str
) -> None:
    with pytest.raises(BadRequest, match=match):
        await _add(database, username, **kw)
    async with database.session() as session:
        assert await accounts.list_accounts(session) == []


async def test_unknown_site_is_not_found(database: Database) -> None:
    with pytest.raises(NotFound, match="no site with code 'nope'"):
        await _add(database, "lan", site_code="nope")


async def test_ten_characters_are_enough(database: Database) -> None:
    await _add(database, "lan", password="0123456789")
    assert (await _authenticate(database, "lan", "0123456789")).username == "lan"


async def test_authenticate(database: Database) -> None:
    created = await _add(database, "lan")
    assert (await _authenticate(database, "LAN", PASSWORD)).id == created.id
    for username, password in [("lan", PASSWORD + "x"), ("lan", ""), ("nobody", PASSWORD)]:
        with pytest.raises(LoginFailed):
            await _authenticate(database, username, password)


async def test_unknown_user_costs_one_verification(database: Database) -> None:
    await _add(database, "lan")
    hasher = CountingHasher()
    for username in ("nobody", "not valid!"):
        with pytest.raises(LoginFailed):
            await _authenticate(database, username, PASSWORD, hasher)
    assert hasher.verified == 2


async def test_disabled_accounts_cannot_authenticate(database: Database) -> None:
    await _add(database, "lan")
    async with database.session() as session, session.begin():
        disabled = await accounts.disable_account(session, "Lan")
    assert disabled.disabled
    with pytest.raises(Forbidden, match="disabled"):
        await _authenticate(database, "lan", PASSWORD)
    with pytest.raises(LoginFailed):
        await _authenticate(database, "lan", "wrong password")
    async with database.session() as session, session.begin():
        with pytest.raises(NotFound):
            await accounts.disable_account(session, "nobody")


async def test_set_password(database: Database) -> None:
    await _add(database, "lan")
    new = "một mật khẩu mới"
    async with database.session() as session, session.begin():
        with pytest.raises(BadRequest):
            await accounts.set_password(session, "lan", "short", hasher=FAST)
        await accounts.set_password(session, "lan", new, hasher=FAST)
    with pytest.raises(LoginFailed):
        await _authenticate(database, "lan", PASSWORD)
    assert (await _authenticate(database, "lan", new)).username == "lan"
    async with database.session() as session, session.begin():
        with pytest.raises(NotFound):
            await accounts.set_password(session, "nobody", new, hasher=FAST)


async def test_old_parameters_are_rehashed_on_sign_in(database: Database) -> None:
    await _add(database, "lan")  # hashed with FAST
    current = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    await _authenticate(database, "lan", PASSWORD, current)
    async with database.session() as session:
        (account,) = await accounts.list_accounts(session)
    assert "m=2048,t=2,p=1" in account.password_hash
    assert (await _authenticate(database, "lan", PASSWORD, current)).username == "lan"


async def test_has_admin(database: Database) -> None:
    async with database.session() as session:
        assert not await accounts.has_admin(session)
    await _add(database, "root", role="admin")
    async with database.session() as session:
        assert await accounts.has_admin(session)
    async with database.session() as session, session.begin():
        await accounts.disable_account(session, "root")
    async with database.session() as session:
        assert not await accounts.has_admin(session)


async def test_state_changes_are_logged_without_secrets(
    database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.accounts")
    created = await _add(database, "lan")
    async with database.session() as session, session.begin():
        await accounts.set_password(session, "lan", "một mật khẩu mới", hasher=FAST)
        await accounts.disable_account(session, "lan")
    lines = [r.getMessage() for r in caplog.records if r.name == "server.accounts"]
    assert lines == [
        f"account {created.id} created: role member, site None",
        f"account {created.id}: password changed",
        f"account {created.id} disabled",
    ]
    assert "mật khẩu" not in caplog.text
    assert "$argon2" not in caplog.text
