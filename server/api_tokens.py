"""API tokens: what a program sends as ``Authorization: Bearer gb_…`` to act as an account.

A token is ``gb_`` and 43 random URL-safe characters (256 bits); the store keeps only its
SHA-256 (`ApiToken.token_hash`), so a copy of the database lets no one in, and the token is
shown once, when it is made. A token acts with its account's role, stops working when it is
revoked or its account is disabled, and never expires on its own (revoke it instead).

Functions over an `AsyncSession`; they flush but never commit (the caller owns the transaction).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import unicodedata
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from server.errors import BadRequest, NotFound
from server.store.models import Account, ApiToken, Role, utcnow

log = logging.getLogger(__name__)

TOKEN_PREFIX = "gb_"
MAX_NAME_LENGTH = 100
# A real token is 46 characters; the bound keeps garbage from being hashed and looked up.
MAX_TOKEN_LENGTH = 128
# last_used_at is written at most this often: a busy script does not write a row per call.
LAST_USED_REFRESH = timedelta(minutes=1)


def hash_api_token(token: str) -> str:
    """The SHA-256 hex of `token`: what the store keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


def _name(name: str) -> str:
    text = unicodedata.normalize("NFC", str(name)).strip()
    if not text:
        raise BadRequest("a token needs a name (what uses it, e.g. “lịch họp tuần”)")
    if len(text) > MAX_NAME_LENGTH:
        raise BadRequest(f"a token name has at most {MAX_NAME_LENGTH} characters")
    return text


async def create_api_token(db: AsyncSession, account: Account, name: str) -> tuple[ApiToken, str]:
    """Make a token for `account` named `name` (1–100 characters, BadRequest else); returns the
    row and the token itself, which is never available again."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = ApiToken(
        # By id: `account` may come from another session (the signed-in request's).
        account_id=account.id,
        name=_name(name),
        token_hash=hash_api_token(token),
        created_at=utcnow(),
    )
    db.add(row)
    await db.flush()
    log.info("api token %d created for account %d", row.id, account.id)
    return row, token


async def list_api_tokens(db: AsyncSession, account: Account) -> list[ApiToken]:
    """`account`'s tokens, revoked ones too, newest first."""
    query = (
        select(ApiToken)
        .where(ApiToken.account_id == account.id)
        .order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return list((await db.execute(query)).scalars())


async def list_all_api_tokens(db: AsyncSession) -> list[ApiToken]:
    """Every token of the node with its account loaded, by account then newest first (for the
    operator's `giaoban tokens list`)."""
    query = (
        select(ApiToken)
        .join(Account, Account.id == ApiToken.account_id)
        .options(selectinload(ApiToken.account))
        .order_by(Account.username, ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return list((await db.execute(query)).scalars())


async def revoke_api_token(db: AsyncSession, account: Account | None, token_id: int) -> ApiToken:
    """Revoke token `token_id`: an account revokes its own, an admin any; `account` None is the
    node's operator (the command line). NotFound for another account's token, so ids cannot be
    probed. Revoking twice is no error."""
    row = await db.get(ApiToken, token_id)
    if row is None or (
        account is not None and account.role != Role.ADMIN and row.account_id != account.id
    ):
        raise NotFound(f"no API token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await db.flush()
        who = f"account {account.id}" if account is not None else "the operator"
        log.info("api token %d of account %d revoked by %s", row.id, row.account_id, who)
    return row


async def account_for_api_token(db: AsyncSession, token: str) -> Account | None:
    """The enabled account (`.site` loaded) that the unrevoked `token` acts for, else None.
    Records the use in `last_used_at`, at most once a minute."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        return None
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    query = (
        select(ApiToken)
        .where(ApiToken.token_hash == hash_api_token(token))
        .options(selectinload(ApiToken.account).selectinload(Account.site))
    )
    row = (await db.execute(query)).scalar_one_or_none()
    if row is None or row.revoked_at is not None or row.account.disabled:
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_REFRESH:
        row.last_used_at = now
        await db.flush()
    return row.account
