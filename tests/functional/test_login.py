"""Signing in and out of a running node: the pages, the cookies, CSRF, throttling, roles."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer
from argon2 import PasswordHasher
from sqlalchemy import func, select, update
from yarl import URL

from server import accounts
from server.app import DATABASE, SHUTDOWN_TIMEOUT, make_app
from server.auth import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    SESSION_LIFETIME,
    account_for_session_token,
    end_account_sessions,
    require_account,
)
from server.config import Config
from server.store.models import LoginSession, Role, utcnow
from tests.conftest import Node, node_config, running_node

PASSWORD = "mật khẩu đủ dài"
NAME = "Nguyễn Thị Lan"
# Cheap hashes keep the suite fast (the first good sign-in rehashes with the real parameters).
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


async def add_account(
    app: web.Application, username: str, role: str = "member", name: str = NAME
) -> int:
    async with app[DATABASE].session() as s, s.begin():
        account = await accounts.create_account(
            s, username, PASSWORD, role=role, display_name=name, hasher=FAST
        )
        return account.id


def client() -> aiohttp.ClientSession:
    # unsafe=True: the default jar keeps no cookies for an IP address such as 127.0.0.1.
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


def set_cookie(response: aiohttp.ClientResponse, name: str) -> str | None:
    """The raw Set-Cookie header that sets `name`, if any."""
    for header in response.headers.getall("Set-Cookie", []):
        if header.startswith(f"{name}="):
            return header
    return None


def cookie(http: aiohttp.ClientSession, name: str) -> str | None:
    for morsel in http.cookie_jar:
        if morsel.key == name:
            return morsel.value
    return None


async def form_token(http: aiohttp.ClientSession, base: str, path: str = "/login") -> str:
    async with http.get(base + path) as response:
        assert response.status == 200
        match = CSRF_INPUT.search(await response.text())
    assert match is not None, "no csrf_token field in the page"
    return match.group(1)


async def sign_in(
    http: aiohttp.ClientSession,
    base: str,
    username: str,
    password: str = PASSWORD,
    next_: str = "/",
) -> aiohttp.ClientResponse:
    token = await form_token(http, base)
    data = {"username": username, "password": password, "next": next_, "csrf_token": token}
    async with http.post(base + "/login", data=data, allow_redirects=False) as response:
        await response.read()
        return response


async def page(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str]:
    async with http.get(url, allow_redirects=False, **kw) as response:
        return response.status, await response.text()


async def metric(base: str, line_start: str, default: float | None = None) -> float:
    async with aiohttp.ClientSession() as http, http.get(base + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:  # a labelled counter shows a label once it has counted
        return default
    raise AssertionError(f"no metric {line_start}")


async def session_rows(node: Node) -> int:
    async with node.app[DATABASE].session() as s:
        return int((await s.execute(select(func.count()).select_from(LoginSession))).scalar_one())


async def test_login_page_in_both_languages(node: Node) -> None:
    async with client() as http:
        async with http.get(node.url + "/login") as response:
            assert response.status == 200
            body = await response.text()
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
            csrf_header = set_cookie(response, CSRF_COOKIE)
        assert '<html lang="vi">' in body
        assert "Tên đăng nhập" in body and "Mật khẩu" in body
        assert 'type="password"' in body
        # The form's token is the cookie's (double submit), and the cookie is locked down.
        match = CSRF_INPUT.search(body)
        assert match is not None and match.group(1) == cookie(http, CSRF_COOKIE)
        assert csrf_header is not None
        assert "HttpOnly" in csrf_header and "SameSite=Strict" in csrf_header
        assert "Path=/" in csrf_header and "Secure" not in csrf_header  # plain http here

        status, body = await page(http, node.url + "/login?lang=en")
        assert status == 200
        assert '<html lang="en">' in body
        assert "Username" in body and "Password" in body and "Sign in" in body
        # The same browser keeps its CSRF token across pages.
        assert CSRF_INPUT.search(body).group(1) == cookie(http, CSRF_COOKIE)  # type: ignore[union-attr]


async def test_wrong_password_is_refused_without_a_cookie(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        response = await sign_in(http, node.url, "lan.nguyen", "mật khẩu sai rồi")
        assert response.status == 401
        assert set_cookie(response, SESSION_COOKIE) is None
        assert cookie(http, SESSION_COOKIE) is None
        # The form again: the message, the username kept, the password not.
        token = await form_token(http, node.url)
        data = {"username": "Lan.Nguyen", "password": "mật khẩu sai rồi", "csrf_token": token}
        async with http.post(node.url + "/login", data=data) as again:
            body = await again.text()
            assert again.status == 401
        assert "Sai tên đăng nhập hoặc mật khẩu" in body
        assert "Wrong username or password" in body  # the other language, below
        assert 'value="Lan.Nguyen"' in body
        assert "mật khẩu sai rồi" not in body
        status, home = await page(http, node.url + "/")
        assert status == 200 and "account-name" not in home
    assert await session_rows(node) == 0
    assert await metric(node.url, 'giaoban_logins_total{result="failed"}') == 2


async def test_good_login_sets_locked_down_cookies(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        before = await form_token(http, node.url)
        response = await sign_in(http, node.url, "lan.nguyen", next_="/r/giao-ban?name=x")
        assert response.status == 303
        assert response.headers["Location"] == "/r/giao-ban?name=x"
        header = set_cookie(response, SESSION_COOKIE)
        assert header is not None
        for attribute in ("HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=43200"):
            assert attribute in header, header
        assert "Secure" not in header  # config.scheme is http
        # A new CSRF token after signing in.
        csrf_header = set_cookie(response, CSRF_COOKIE)
        assert csrf_header is not None and "SameSite=Strict" in csrf_header
        assert cookie(http, CSRF_COOKIE) not in (None, before)

        status, home = await page(http, node.url + "/")
        assert status == 200
        shown = 'title="Đang đăng nhập với tài khoản lan.nguyen">'
        assert f'class="account-name" href="/account/tokens" {shown}{NAME}' in home
        assert 'action="/logout"' in home and "Đăng xuất" in home
        assert f'value="{cookie(http, CSRF_COOKIE)}"' in home
        # Signed in, the sign-in page sends the browser on.
        status, _ = await page(http, node.url + "/login?next=/r/abc")
        assert status == 302
    assert await session_rows(node) == 1
    assert await metric(node.url, 'giaoban_logins_total{result="ok"}') == 1


async def test_session_cookie_slides_with_use(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        assert (await sign_in(http, node.url, "lan.nguyen")).status == 303
        async with http.get(node.url + "/") as response:
            assert set_cookie(response, SESSION_COOKIE) is None  # used within the minute
        earlier = utcnow() - timedelta(hours=2)
        async with node.app[DATABASE].session() as s, s.begin():
            await s.execute(
                update(LoginSession).values(
                    last_seen_at=earlier, expires_at=earlier + SESSION_LIFETIME
                )
            )
        async with http.get(node.url + "/") as response:
            assert "account-name" in await response.text()
            header = set_cookie(response, SESSION_COOKIE)
        assert header is not None and "Max-Age=43200" in header and "HttpOnly" in header
        assert f"{SESSION_COOKIE}={cookie(http, SESSION_COOKIE)};" in header
    async with node.app[DATABASE].session() as s:
        row = (await s.execute(select(LoginSession))).scalar_one()
    assert row.expires_at - utcnow() > SESSION_LIFETIME - timedelta(minutes=1)


@pytest.mark.parametrize(
    "target",
    ["//evil.example", "//evil.example/x", "/\\evil.example", "https://evil.example/", "evil"],
)
async def test_open_redirect_refused(node: Node, target: str) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        response = await sign_in(http, node.url, "lan.nguyen", next_=target)
        assert response.status == 303
        assert response.headers["Location"] == "/"


async def test_csrf_refusals_change_nothing(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        assert (await sign_in(http, node.url, "lan.nguyen")).status == 303
        good = cookie(http, CSRF_COOKIE)
        assert good is not None
        for data, headers in (
            ({}, {}),
            ({"csrf_token": "not-the-token-but-long-enough"}, {}),
            ({"csrf_token": good}, {"Origin": "http://evil.example"}),
        ):
            async with http.post(
                node.url + "/logout", data=data, headers=headers, allow_redirects=False
            ) as response:
                body = await response.text()
                assert response.status == 403, (data, headers)
            assert "Biểu mẫu đã hết hạn" in body
            status, home = await page(http, node.url + "/")
            assert status == 200 and "account-name" in home, "a refused sign-out signed out"
        assert await session_rows(node) == 1

    # A sign-in form posted from elsewhere (no CSRF cookie at all) opens no session.
    async with client() as stranger:
        data = {"username": "lan.nguyen", "password": PASSWORD}
        async with stranger.post(node.url + "/login", data=data) as response:
            assert response.status == 403
            assert set_cookie(response, SESSION_COOKIE) is None
    assert await session_rows(node) == 1
    assert await metric(node.url, 'giaoban_csrf_refusals_total{reason="mismatch"}') == 1
    assert await metric(node.url, 'giaoban_csrf_refusals_total{reason="origin"}') == 1
    assert await metric(node.url, 'giaoban_csrf_refusals_total{reason="no_token"}') == 1
    assert await metric(node.url, 'giaoban_csrf_refusals_total{reason="no_cookie"}') == 1


async def test_same_origin_header_and_csrf_header_are_accepted(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        assert (await sign_in(http, node.url, "lan.nguyen")).status == 303
        headers = {"Origin": node.url, "X-CSRF-Token": cookie(http, CSRF_COOKIE) or ""}
        async with http.post(
            node.url + "/logout", headers=headers, allow_redirects=False
        ) as response:
            assert response.status == 303
    assert await session_rows(node) == 0


async def test_logout_ends_the_session(node: Node) -> None:
    account_id = await add_account(node.app, "lan.nguyen")
    async with client() as http:
        assert (await sign_in(http, node.url, "lan.nguyen")).status == 303
        old = cookie(http, SESSION_COOKIE)
        assert old is not None
        token = await form_token(http, node.url, "/")
        async with http.post(
            node.url + "/logout", data={"csrf_token": token}, allow_redirects=False
        ) as response:
            assert response.status == 303
            assert response.headers["Location"] == "/login"
            cleared = set_cookie(response, SESSION_COOKIE)
        assert cleared is not None and "Max-Age=0" in cleared
        assert not cookie(http, SESSION_COOKIE)
        status, home = await page(http, node.url + "/")
        assert status == 200 and "account-name" not in home and 'href="/login"' in home

    # The old cookie value, replayed, opens nothing, and the browser is told to drop it.
    async with (
        aiohttp.ClientSession() as replay,
        replay.get(node.url + "/", headers={"Cookie": f"{SESSION_COOKIE}={old}"}) as response,
    ):
        assert response.status == 200 and "account-name" not in await response.text()
        stale = set_cookie(response, SESSION_COOKIE)
        assert stale is not None and "Max-Age=0" in stale
    async with node.app[DATABASE].session() as s:
        assert await account_for_session_token(s, old) is None
    assert await session_rows(node) == 0
    assert await metric(node.url, "giaoban_logouts_total") == 1
    assert account_id > 0


async def test_guessing_is_throttled_by_username(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        for _ in range(5):
            response = await sign_in(http, node.url, "lan.nguyen", "đoán mật khẩu sai")
            assert response.status == 401
        # Even the right password is refused now.
        token = await form_token(http, node.url)
        data = {"username": "lan.nguyen", "password": PASSWORD, "csrf_token": token}
        async with http.post(node.url + "/login", data=data, allow_redirects=False) as response:
            body = await response.text()
            assert response.status == 429
            assert 0 < int(response.headers["Retry-After"]) <= 15 * 60 + 1
            assert set_cookie(response, SESSION_COOKIE) is None
        assert "Đăng nhập sai quá nhiều lần" in body
    assert await session_rows(node) == 0
    assert await metric(node.url, 'giaoban_logins_total{result="throttled"}') == 1


async def test_guessing_is_throttled_by_address(node: Node) -> None:
    await add_account(node.app, "lan.nguyen")
    async with client() as http:
        for n in range(5):
            response = await sign_in(http, node.url, f"khong.co.{n}", "đoán mật khẩu sai")
            assert response.status == 401
        # Another username from the same address is refused too.
        assert (await sign_in(http, node.url, "lan.nguyen")).status == 429


async def test_guessing_on_one_node_is_refused_on_the_others(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    # Two nodes of one cluster (one Redis): five wrong passwords on one count on both.
    nodes = []
    for name in ("tinh", "xa"):
        config = node_config(tmp_path / name, redis_url=redis_url, redis_prefix=redis_prefix)
        nodes.append(running_node(config))
    province, commune = [await anext(started) for started in nodes]
    try:
        async with client() as http:
            for _ in range(5):
                response = await sign_in(http, province.url, "lan.nguyen", "đoán mật khẩu sai")
                assert response.status == 401
        async with client() as http:
            assert (await sign_in(http, commune.url, "lan.nguyen", "mật khẩu khác")).status == 429
    finally:
        for started in nodes:
            await started.aclose()


async def test_disabled_account_is_told(node: Node) -> None:
    await add_account(node.app, "an.tran")
    async with node.app[DATABASE].session() as s, s.begin():
        await accounts.disable_account(s, "an.tran")
    async with client() as http:
        token = await form_token(http, node.url, "/login?lang=en")
        data = {"username": "an.tran", "password": PASSWORD, "csrf_token": token}
        async with http.post(node.url + "/login", data=data) as response:
            body = await response.text()
            assert response.status == 403
        assert "This account is disabled" in body
    assert await metric(node.url, 'giaoban_logins_total{result="disabled"}') == 1


async def test_new_password_signs_out_everywhere(node: Node) -> None:
    account_id = await add_account(node.app, "lan.nguyen")
    async with client() as first, client() as second:
        assert (await sign_in(first, node.url, "lan.nguyen")).status == 303
        assert (await sign_in(second, node.url, "lan.nguyen")).status == 303
        # What `giaoban users passwd` does.
        async with node.app[DATABASE].session() as s, s.begin():
            await accounts.set_password(s, "lan.nguyen", "mật khẩu mới hẳn", hasher=FAST)
            assert await end_account_sessions(s, account_id) == 2
        for http in (first, second):
            status, home = await page(http, node.url + "/")
            assert status == 200 and "account-name" not in home
        assert (await sign_in(first, node.url, "lan.nguyen")).status == 401
        assert (await sign_in(first, node.url, "lan.nguyen", "mật khẩu mới hẳn")).status == 303


async def test_engineio_polling_is_not_blocked_by_csrf(node: Node) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    try:
        # Long-polling POSTs its packets: without the exemption the connect itself would fail.
        await sio.connect(
            node.url, namespaces=["/meeting"], transports=["polling"], wait_timeout=10
        )
        assert sio.transport() == "polling"
        ack = await sio.call(
            "join", {"room": "giao-ban", "name": "Xã An Phú"}, namespace="/meeting", timeout=10
        )
    finally:
        await sio.disconnect()
    assert isinstance(ack, dict) and ("ok" in ack or "error" in ack), ack
    assert await metric(node.url, 'giaoban_csrf_refusals_total{reason="no_cookie"}', 0.0) == 0


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[str]:
    """A node with two extra routes behind require_account; yields its URL."""
    config = Config(host="127.0.0.1", port=0, data_dir=tmp_path, ice_host_addresses=("127.0.0.1",))
    app = make_app(config)

    async def admin_only(request: web.Request) -> web.Response:
        account = require_account(request, Role.ADMIN)
        return web.Response(text=f"admin {account.username}")

    async def members(request: web.Request) -> web.Response:
        account = require_account(request)
        return web.Response(text=f"member {account.username}")

    app.router.add_get("/admin-only", admin_only)
    app.router.add_post("/members", members)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server(shutdown_timeout=SHUTDOWN_TIMEOUT)
    try:
        await add_account(app, "boss", role="admin", name="Boss")
        await add_account(app, "lan.nguyen")
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def test_require_account_redirects_and_refuses(guarded: str) -> None:
    async with client() as http:
        async with http.get(guarded + "/admin-only?x=1", allow_redirects=False) as response:
            assert response.status == 302
            location = URL(response.headers["Location"])
            assert location.path == "/login" and location.query["next"] == "/admin-only?x=1"
        token = await form_token(http, guarded)
        async with http.post(
            guarded + "/members", data={"csrf_token": token}, allow_redirects=False
        ) as response:
            assert response.status == 401
            assert "Cần đăng nhập" in await response.text()

        assert (await sign_in(http, guarded, "lan.nguyen")).status == 303
        async with http.get(guarded + "/admin-only") as response:
            body = await response.text()
            assert response.status == 403
            assert response.headers["Content-Type"].startswith("text/html")
        assert "Không có quyền truy cập" in body and "Access denied" in body
        token = await form_token(http, guarded)
        async with http.post(guarded + "/members", data={"csrf_token": token}) as response:
            assert response.status == 200
            assert await response.text() == "member lan.nguyen"

    async with client() as http:
        assert (await sign_in(http, guarded, "boss")).status == 303
        status, body = await page(http, guarded + "/admin-only")
        assert (status, body) == (200, "admin boss")
