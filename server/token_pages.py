"""The API token page, ``/account/tokens``: a signed-in account lists its tokens, makes one
(shown once, on the answer to the form) and revokes one. Forms carry the CSRF token."""

from __future__ import annotations

import logging

from aiohttp import web

from server.api_tokens import MAX_NAME_LENGTH, create_api_token, list_api_tokens, revoke_api_token
from server.auth import require_account
from server.errors import BadRequest, NotFound
from server.pages import _render
from server.room_pages import shown_time
from server.store.db import Database
from server.store.models import Account

log = logging.getLogger(__name__)

PAGE = "/account/tokens"


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


async def _page(
    request: web.Request,
    account: Account,
    *,
    new_token: str = "",
    new_name: str = "",
    problem: str = "",
    status: int = 200,
) -> web.Response:
    async with _database(request).session() as db:
        tokens = await list_api_tokens(db, account)
    return _render(
        request,
        "account_tokens.html",
        "account-tokens",
        status=status,
        tokens=tokens,
        new_token=new_token,
        new_name=new_name,
        problem=problem,
        max_name=MAX_NAME_LENGTH,
        shown_time=shown_time,
    )


async def tokens_page(request: web.Request) -> web.Response:
    """``GET /account/tokens``: the account's tokens and the form to make one."""
    return await _page(request, require_account(request))


async def token_create(request: web.Request) -> web.Response:
    """``POST /account/tokens``: make a token and show it, once, on this answer."""
    account = require_account(request)
    form = await request.post()
    name = form.get("name")
    text = name[: MAX_NAME_LENGTH * 2] if isinstance(name, str) else ""
    try:
        async with _database(request).session() as db, db.begin():
            row, token = await create_api_token(db, account, text)
    except BadRequest:
        return await _page(request, account, problem="api.error_name", status=400)
    log.info("api token %d made on the page by account %d", row.id, account.id)
    return await _page(request, account, new_token=token, new_name=row.name, status=201)


async def token_revoke(request: web.Request) -> web.StreamResponse:
    """``POST /account/tokens/{id}/revoke``: revoke one of the account's tokens."""
    account = require_account(request)
    try:
        token_id = int(request.match_info["id"])
        async with _database(request).session() as db, db.begin():
            await revoke_api_token(db, account, token_id)
    except (ValueError, NotFound):
        return await _page(request, account, problem="api.error_not_found", status=404)
    raise web.HTTPSeeOther(PAGE)


def setup_token_pages(app: web.Application) -> None:
    """Register ``/account/tokens`` on ``app`` (after `setup_pages` and `setup_auth`)."""
    app.router.add_get(PAGE, tokens_page, name="account_tokens")
    app.router.add_post(PAGE, token_create)
    app.router.add_post(PAGE + "/{id:[0-9]{1,18}}/revoke", token_revoke)
