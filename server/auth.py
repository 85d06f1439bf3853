"""Signing in and out: login sessions, the session cookie, CSRF protection, role checks.

A signed-in browser holds a random token in the ``gb_session`` cookie; the store keeps only the
token's SHA-256 (`LoginSession.id`), so a copy of the database opens no session. Sessions slide:
each use pushes the expiry to ``SESSION_LIFETIME`` ahead, written at most once a minute.

Unsafe requests (POST, PUT, PATCH, DELETE) carry a CSRF token by double submit: the ``gb_csrf``
cookie and the same value in the form field ``csrf_token`` (or the ``X-CSRF-Token`` header).
Engine.IO long-polling and bearer-token API calls are exempt (see `csrf_middleware`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote, urlsplit

from aiohttp import web
from multidict import MultiDictProxy
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from server.accounts import MAX_PASSWORD_LENGTH, authenticate
from server.config import Config
from server.errors import Forbidden, LoginFailed
from server.login_throttle import LoginThrottle
from server.metrics import Metrics
from server.pages import _render
from server.store.db import Database
from server.store.models import Account, LoginSession, Role, utcnow

log = logging.getLogger(__name__)

SESSION_COOKIE = "gb_session"
CSRF_COOKIE = "gb_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_LIFETIME = timedelta(hours=12)
# Sliding expiry is written at most this often, so a page's requests do not each write a row.
SESSION_REFRESH = timedelta(minutes=1)


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Paths that never need the signed-in account: no database read for them.
SKIP_PREFIXES = ("/static/", "/socket.io/")
SKIP_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
MAX_TOKEN_LENGTH = 128
MAX_NEXT_LENGTH = 2000
MAX_USERNAME_INPUT = 100

# Request storage (RequestKey, not str keys: aiohttp warns on those). ACCOUNT is set by
# auth_middleware; read it with current_account().
ACCOUNT = web.RequestKey[Account | None]("account")
_CSRF_PENDING = web.RequestKey("csrf_pending", str)  # a CSRF token to set as the cookie
_SESSION_PENDING = web.RequestKey("session_pending", str)  # "refresh" or "clear" the cookie


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ sessions in the store


async def start_login_session(
    db: AsyncSession, account: Account, *, user_agent: str, address: str
) -> str:
    """Open a session for `account`; returns the cookie token (only its SHA-256 is stored).

    Also deletes every expired session row, so rows of browsers that never come back do not
    pile up. Flushes; the caller commits."""
    now = utcnow()
    await db.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    db.add(
        LoginSession(
            id=_token_id(token),
            account_id=account.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_LIFETIME,
            user_agent=user_agent[:200],
            address=address[:64],
        )
    )
    await db.flush()
    return token


async def _open_session(db: AsyncSession, token: str) -> tuple[Account | None, bool]:
    """The account of `token`'s session, and whether its expiry was pushed forward now."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None, False
    result = await db.execute(
        select(LoginSession)
        .where(LoginSession.id == _token_id(token))
        .options(selectinload(LoginSession.account).selectinload(Account.site))
    )
    row = result.scalar_one_or_none()
    if row is None:
        return None, False
    now = utcnow()
    if row.expires_at <= now:
        await db.delete(row)
        await db.flush()
        return None, False
    if row.account.disabled:
        return None, False
    refreshed = now - row.last_seen_at >= SESSION_REFRESH
    if refreshed:
        row.last_seen_at = now
        row.expires_at = now + SESSION_LIFETIME
        await db.flush()
    return row.account, refreshed


async def account_for_session_token(db: AsyncSession, token: str) -> Account | None:
    """The enabled account (`.site` loaded) of the unexpired session `token` opens, else None.

    Slides the expiry (at most once a minute) and deletes the row when it has expired."""
    account, _ = await _open_session(db, token)
    return account


async def end_login_session(db: AsyncSession, token: str) -> None:
    """Sign out the session `token` opens; an unknown token is not an error."""
    if token and len(token) <= MAX_TOKEN_LENGTH:
        await db.execute(delete(LoginSession).where(LoginSession.id == _token_id(token)))


async def end_account_sessions(db: AsyncSession, account_id: int) -> int:
    """Sign `account_id` out everywhere (a new password, a disabled account); returns how many
    sessions ended."""
    result = await db.execute(delete(LoginSession).where(LoginSession.account_id == account_id))
    ended = int(getattr(result, "rowcount", 0) or 0)
    if ended:
        log.info("account %d: %d login sessions ended", account_id, ended)
    return ended


# ------------------------------------------------------------------ the app's part


@dataclass
class AuthState:
    """What the middlewares and pages need, put on the app by `setup_auth`."""

    database: Database
    config: Config
    metrics: Metrics
    throttle: LoginThrottle


AUTH = web.AppKey("giaoban_auth", AuthState)


def _state(request: web.Request) -> AuthState:
    return request.app[AUTH]


def _secure(request: web.Request) -> bool:
    return request.secure or _state(request).config.scheme == "https"


def current_account(request: web.Request) -> Account | None:
    """The signed-in account of this request (None when signed out or on a skipped path)."""
    return request.get(ACCOUNT)


def _refusal(
    request: web.Request, status: type[web.HTTPException], error: str
) -> web.HTTPException:
    # The error page as an exception, so that require_account can be a one-line guard.
    page = _render(request, "error.html", "error", status=status.status_code, error=error)
    headers = {k: v for k, v in page.headers.items() if k.lower() != "content-length"}
    refusal = status(headers=headers, text=page.text)
    refusal.cookies.update(page.cookies)
    return refusal


def require_account(request: web.Request, *roles: Role) -> Account:
    """The signed-in account, holding one of `roles` when any are given.

    Signed out: a redirect to ``/login?next=<path>`` for GET/HEAD, a 401 page otherwise;
    another role: a 403 page."""
    account = current_account(request)
    if account is None:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPFound("/login?next=" + quote(request.path_qs, safe=""))
        raise _refusal(request, web.HTTPUnauthorized, "auth_required")
    if roles and account.role not in roles:
        log.info("account %d (%s) refused %s", account.id, account.role.value, request.path)
        raise _refusal(request, web.HTTPForbidden, "auth_forbidden")
    return account


def csrf_token(request: web.Request) -> str:
    """The browser's CSRF token for forms; mints one (set as the cookie on the response) when
    the browser has none."""
    pending = request.get(_CSRF_PENDING)
    if pending is not None:
        return pending
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if 16 <= len(cookie) <= MAX_TOKEN_LENGTH:
        return cookie
    return _rotate_csrf(request)


def _rotate_csrf(request: web.Request) -> str:
    token = secrets.token_urlsafe(32)
    request[_CSRF_PENDING] = token
    return token


def _set_session_cookie(request: web.Request, response: web.StreamResponse, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="Lax",  # Lax: a link from an e-mail to a meeting opens it signed in
        secure=_secure(request),
    )


def _apply_pending_cookies(request: web.Request, response: web.StreamResponse) -> None:
    """Set the cookies a request arranged for, unless its handler already set or cleared them."""
    if response.prepared:
        return  # streamed (a file, a websocket): its headers are gone
    csrf = request.get(_CSRF_PENDING)
    if csrf is not None and CSRF_COOKIE not in response.cookies:
        response.set_cookie(
            CSRF_COOKIE,
            csrf,
            path="/",
            httponly=True,
            samesite="Strict",
            secure=_secure(request),
        )
    session = request.get(_SESSION_PENDING)
    if session is not None and SESSION_COOKIE not in response.cookies:
        if session == "clear":
            response.del_cookie(SESSION_COOKIE, path="/")
        else:
            # The cookie slides with the stored expiry.
            _set_session_cookie(request, response, request.cookies.get(SESSION_COOKIE, ""))


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Load the account of the session cookie once per request into ``request[ACCOUNT]``, and
    set the cookies the request arranged for (a new CSRF token, a slid session)."""
    if request.path.startswith(SKIP_PREFIXES) or request.path in SKIP_PATHS:
        return await handler(request)
    request[ACCOUNT] = None
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with _state(request).database.session() as db, db.begin():
            account, refreshed = await _open_session(db, token)
        request[ACCOUNT] = account
        if account is None:
            request[_SESSION_PENDING] = "clear"  # a stale cookie goes away
        elif refreshed:
            request[_SESSION_PENDING] = "refresh"
    # Here rather than in on_response_prepare: aiohttp writes the cookies into the headers
    # before that signal runs.
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _apply_pending_cookies(request, exc)
        raise
    _apply_pending_cookies(request, response)
    return response


def _own_origins(request: web.Request) -> set[str]:
    origins = {f"{request.scheme}://{request.host}".lower()}
    # Behind a TLS-terminating proxy the node sees http: its public URL names the real origin.
    public = urlsplit(_state(request).config.public_url or "")
    if public.scheme and public.netloc:
        origins.add(f"{public.scheme}://{public.netloc}".lower())
    return origins


def _csrf_exempt(request: web.Request) -> bool:
    # Engine.IO long-polling POSTs its packets to /socket.io/ (no form, no token): Socket.IO
    # checks its own handshake. Bearer-token API calls carry no ambient credential to abuse.
    if request.path.startswith("/socket.io/"):
        return True
    authorization = request.headers.get("Authorization", "")
    return request.path.startswith("/api/") and authorization.lower().startswith("bearer ")


async def _csrf_problem(request: web.Request) -> str | None:
    """Why this unsafe request must be refused (a metric label), or None."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.lower() not in _own_origins(request):
        return "origin"
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie:
        return "no_cookie"
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        # Read (and cached) here; the handler's own request.post() gets the same form.
        value = (await request.post()).get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent:
        return "no_token"
    if not hmac.compare_digest(sent.encode(), cookie.encode()):
        return "mismatch"
    return None


@web.middleware
async def csrf_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse unsafe requests without the CSRF token or from another origin (a 403 page)."""
    if request.method not in UNSAFE_METHODS or _csrf_exempt(request):
        return await handler(request)
    problem = await _csrf_problem(request)
    if problem is not None:
        log.warning(
            "CSRF check refused %s %s from %s: %s",
            request.method,
            request.path,
            request.remote,
            problem,
        )
        _state(request).metrics.csrf_refusals.labels(reason=problem).inc()
        return _render(request, "error.html", "error", status=403, error="auth_csrf")
    return await handler(request)


# ------------------------------------------------------------------ pages


def safe_next(target: str) -> str:
    """`target` when it is a path on this node (one leading ``/``), else ``/``: no open
    redirect to ``//evil.example`` or ``/\\evil.example`` (browsers read ``\\`` as ``/``)."""
    if (
        not target.startswith("/")
        or target.startswith(("//", "/\\"))
        or len(target) > MAX_NEXT_LENGTH
        or any(c in target for c in "\\\r\n\t")
    ):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def _field(form: MultiDictProxy[str | bytes | web.FileField], name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def _login_form(
    request: web.Request, *, status: int = 200, error: str = "", username: str = "", next_: str
) -> web.Response:
    return _render(
        request,
        "login.html",
        "login",
        status=status,
        error=error,
        username=username,
        next=next_,
    )


async def login_page(request: web.Request) -> web.StreamResponse:
    """``GET /login``: the sign-in form (a signed-in visitor goes on to ``next``)."""
    target = safe_next(request.query.get("next", "/"))
    if current_account(request) is not None:
        raise web.HTTPFound(target)
    return _login_form(request, next_=target)


async def login_submit(request: web.Request) -> web.StreamResponse:
    """``POST /login``: check the password, open a session, go to ``next``."""
    state = _state(request)
    form = await request.post()
    username = _field(form, "username").strip()[:MAX_USERNAME_INPUT]
    password = _field(form, "password")
    target = safe_next(_field(form, "next") or "/")
    address = request.remote or ""
    keys = (f"user:{username.lower()}", f"addr:{address}")

    wait = await state.throttle.retry_after(*keys)
    if wait > 0:
        state.metrics.logins.labels(result="throttled").inc()
        log.warning("sign-in refused from %s: too many failed attempts", address)
        response = _login_form(
            request, status=429, error="throttled", username=username, next_=target
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    try:
        if len(password) > MAX_PASSWORD_LENGTH:
            raise LoginFailed()  # never hash megabytes; no stored password is this long
        async with state.database.session() as db, db.begin():
            account = await authenticate(db, username, password)
            old = request.cookies.get(SESSION_COOKIE)
            if old:
                await end_login_session(db, old)  # a new sign-in replaces the old session
            token = await start_login_session(
                db, account, user_agent=request.headers.get("User-Agent", ""), address=address
            )
    except LoginFailed:
        await state.throttle.failed(*keys)
        state.metrics.logins.labels(result="failed").inc()
        log.info("sign-in failed from %s", address)
        return _login_form(
            request, status=401, error="login_failed", username=username, next_=target
        )
    except Forbidden:
        state.metrics.logins.labels(result="disabled").inc()
        return _login_form(request, status=403, error="disabled", username=username, next_=target)

    await state.throttle.succeeded(keys[0])
    state.metrics.logins.labels(result="ok").inc()
    log.info("account %d signed in from %s", account.id, address)
    response = web.Response(status=303, headers={"Location": target, "Cache-Control": "no-store"})
    _set_session_cookie(request, response, token)
    _rotate_csrf(request)  # a token seen before sign-in is not reused after it
    return response


async def logout(request: web.Request) -> web.StreamResponse:
    """``POST /logout``: end the session, clear the cookie, back to the sign-in page."""
    state = _state(request)
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        async with state.database.session() as db, db.begin():
            await end_login_session(db, token)
    account = current_account(request)
    if account is not None:
        state.metrics.logouts.inc()
        log.info("account %d signed out", account.id)
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def setup_auth(app: web.Application) -> None:
    """Install the session and CSRF middlewares and the sign-in routes (after setup_pages)."""
    from server.app import CONFIG, DATABASE, METRICS  # here: server.app imports this module

    app[AUTH] = AuthState(
        database=app[DATABASE],
        config=app[CONFIG],
        metrics=app[METRICS],
        throttle=LoginThrottle(app[CONFIG].redis_url, app[CONFIG].redis_prefix),
    )
    # Outermost first: the account is known when the CSRF refusal page is rendered.
    app.middlewares.append(auth_middleware)
    app.middlewares.append(csrf_middleware)
    app.router.add_get("/login", login_page, name="login")
    app.router.add_post("/login", login_submit)
    app.router.add_post("/logout", logout, name="logout")
