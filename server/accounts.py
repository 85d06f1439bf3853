"""Accounts: create, list, change password, disable, authenticate.

Functions over an `AsyncSession`; they flush but never commit: the caller owns the transaction
(`async with db.session() as s, s.begin(): ...`). Passwords are hashed with Argon2id
(argon2-cffi's RFC 9106 low-memory profile) and rehashed on sign-in when the parameters change.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
import unicodedata

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from server.errors import AlreadyExists, BadRequest, Forbidden, LoginFailed, NotFound
from server.store.models import Account, Role, Site

log = logging.getLogger(__name__)

USERNAME = re.compile(r"[a-z0-9._-]{3,64}")
MIN_PASSWORD_LENGTH = 10
# Argon2 takes any length; a bound keeps one request from hashing megabytes.
MAX_PASSWORD_LENGTH = 1024
MAX_DISPLAY_NAME_LENGTH = 200
HASHER = PasswordHasher()  # Argon2id, time_cost=3, memory_cost=64 MiB, parallelism=4


def normalize_username(username: str) -> str:
    """The stored form of a username (lower case); BadRequest when it is not one."""
    name = username.lower()
    if not USERNAME.fullmatch(name):
        raise BadRequest(
            f"username must be 3-64 characters of a-z, 0-9, '.', '_', '-' (got {username!r})"
        )
    return name


def parse_role(role: str) -> Role:
    try:
        return Role(role.strip().lower())
    except ValueError:
        choices = ", ".join(r.value for r in Role)
        raise BadRequest(f"role must be one of {choices} (got {role!r})") from None


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequest(f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequest(f"password must have at most {MAX_PASSWORD_LENGTH} characters")


def _display_name(name: str | None, username: str) -> str:
    # NFC: the same Vietnamese name typed on two systems is the same string.
    text = unicodedata.normalize("NFC", (name or "").strip()) or username
    if len(text) > MAX_DISPLAY_NAME_LENGTH:
        raise BadRequest(f"name must have at most {MAX_DISPLAY_NAME_LENGTH} characters")
    return text


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash(secrets.token_urlsafe(16))


async def find_account(session: AsyncSession, username: str) -> Account | None:
    try:
        name = normalize_username(username)
    except BadRequest:
        return None
    result = await session.execute(select(Account).where(Account.username == name))
    return result.scalar_one_or_none()


async def get_account(session: AsyncSession, username: str) -> Account:
    account = await find_account(session, username)
    if account is None:
        raise NotFound(f"no account {username!r}")
    return account


async def create_account(
    session: AsyncSession,
    username: str,
    password: str,
    *,
    role: str,
    display_name: str | None = None,
    site_code: str | None = None,
    hasher: PasswordHasher = HASHER,
) -> Account:
    """A new account; AlreadyExists (a Conflict) when the username is taken in any case."""
    name = normalize_username(username)
    account_role = parse_role(role)
    check_password(password)
    shown = _display_name(display_name, name)
    site = None
    if site_code is not None:
        site = (
            await session.execute(select(Site).where(Site.code == site_code))
        ).scalar_one_or_none()
        if site is None:
            raise NotFound(f"no site with code {site_code!r}")
    if await find_account(session, name) is not None:
        raise AlreadyExists(f"username {name!r} is taken")
    account = Account(
        username=name,
        display_name=shown,
        role=account_role,
        site=site,
        password_hash=hasher.hash(password),
    )
    session.add(account)
    try:
        await session.flush()  # another writer may have taken the name since the check
    except IntegrityError:
        raise AlreadyExists(f"username {name!r} is taken") from None
    log.info(
        "account %d created: role %s, site %s",
        account.id,
        account_role.value,
        site.id if site is not None else None,
    )
    return account


async def list_accounts(session: AsyncSession) -> list[Account]:
    """Every account, by username, with its site loaded."""
    result = await session.execute(
        select(Account).options(selectinload(Account.site)).order_by(Account.username)
    )
    return list(result.scalars())


async def set_password(
    session: AsyncSession, username: str, password: str, *, hasher: PasswordHasher = HASHER
) -> Account:
    check_password(password)
    account = await get_account(session, username)
    account.password_hash = hasher.hash(password)
    await session.flush()
    log.info("account %d: password changed", account.id)
    return account


async def disable_account(session: AsyncSession, username: str) -> Account:
    """Disabled accounts cannot sign in; disabling twice is not an error."""
    account = await get_account(session, username)
    if not account.disabled:
        account.disabled = True
        await session.flush()
        log.info("account %d disabled", account.id)
    return account


async def has_admin(session: AsyncSession) -> bool:
    """Whether an enabled admin account exists (a first start has none)."""
    result = await session.execute(
        select(Account.id).where(Account.role == Role.ADMIN, Account.disabled.is_(False)).limit(1)
    )
    return result.first() is not None


async def authenticate(
    session: AsyncSession, username: str, password: str, *, hasher: PasswordHasher = HASHER
) -> Account:
    """The account these credentials open; LoginFailed for a wrong or unknown name or password
    (both take one Argon2 verification), Forbidden for a disabled account."""
    account = await find_account(session, username)
    if account is None:
        try:
            await asyncio.to_thread(hasher.verify, _dummy_hash(hasher), password)
        except VerificationError:
            pass
        raise LoginFailed()
    try:
        # In a thread: Argon2 takes ~0.1 s and 64 MiB; the node's loop forwards media meanwhile.
        await asyncio.to_thread(hasher.verify, account.password_hash, password)
    except VerificationError:
        log.info("account %d: wrong password", account.id)
        raise LoginFailed() from None
    except InvalidHashError:
        log.error("account %d: stored password hash is not an Argon2 hash", account.id)
        raise LoginFailed() from None
    if account.disabled:
        log.info("account %d: sign-in refused, account disabled", account.id)
        raise Forbidden("account is disabled")
    if hasher.check_needs_rehash(account.password_hash):
        account.password_hash = await asyncio.to_thread(hasher.hash, password)
        await session.flush()
        log.info("account %d: password rehashed with current parameters", account.id)
    return account
