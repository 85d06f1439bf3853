"""Browser pages of the node: the start page, the meeting page and the static files.

The pages are server-rendered Jinja2 templates from ``web/templates`` (Vietnamese first, English
on request); the browser code is plain ES modules from ``web/static``. The Socket.IO browser
client is the pinned npm dependency of ``web/`` and is served from ``web/node_modules`` under
``/static/vendor/`` so that no page ever loads anything from another origin.

Language: ``?lang=vi|en`` picks the language and remembers it in the ``lang`` cookie; without
either, pages are in Vietnamese. Every user-facing string lives in ``web/i18n/<lang>.json``; the
templates get that table and so does the JavaScript (as a JSON block in the page).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from server.config import Config

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
TEMPLATES_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
I18N_DIR = WEB_DIR / "i18n"
SOCKETIO_DIST_DIR = WEB_DIR / "node_modules" / "socket.io-client" / "dist"
SOCKETIO_FILES = ("socket.io.esm.min.js", "socket.io.esm.min.js.map")
INSTALL_COMMAND = "cd web && npm ci"

LANGUAGES = ("vi", "en")
DEFAULT_LANG = "vi"
LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600

ROOM_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
NAME_MAX_CHARS = 64

# What a page may load: only this node. Media comes from getUserMedia/WebRTC (blob:/mediastream:).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob: mediastream:; connect-src 'self'; font-src 'self'; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'self'"
)

Strings = dict[str, dict[str, str]]
STRINGS_KEY = web.AppKey("giaoban_pages_strings", dict)
CONFIG_KEY = web.AppKey("giaoban_pages_config", Config)


def load_strings(i18n_dir: Path = I18N_DIR) -> Strings:
    """Read ``<lang>.json`` for every language; log keys one language has and another lacks."""
    strings: Strings = {}
    for lang in LANGUAGES:
        path = i18n_dir / f"{lang}.json"
        with path.open(encoding="utf-8") as fh:
            table = json.load(fh)
        if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in table.items()
        ):
            raise ValueError(f"{path}: expected a JSON object of strings")
        strings[lang] = table
    reference = set(strings[DEFAULT_LANG])
    for lang, table in strings.items():
        missing = reference - set(table)
        extra = set(table) - reference
        if missing or extra:
            log.warning("i18n %s.json: missing %s, extra %s", lang, sorted(missing), sorted(extra))
    return strings


def room_name_valid(room: str) -> bool:
    """A room name is 1–64 characters of ASCII letters, digits, ``-`` and ``_``."""
    return ROOM_RE.fullmatch(room) is not None


def request_lang(request: web.Request) -> tuple[str, bool]:
    """The page language and whether it was chosen by ``?lang=`` (and so must be remembered)."""
    asked = request.query.get("lang", "")
    if asked in LANGUAGES:
        return asked, True
    cookie = request.cookies.get(LANG_COOKIE, "")
    if cookie in LANGUAGES:
        return cookie, False
    return DEFAULT_LANG, False


def _translator(strings: Strings, lang: str) -> Callable[..., str]:
    table = strings[lang]
    fallback = strings[DEFAULT_LANG]

    def translate(key: str, **values: Any) -> str:
        text = table.get(key) or fallback.get(key)
        if text is None:
            log.warning("i18n: no string for %r", key)
            return key
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return text

    return translate


def _render(
    request: web.Request,
    template: str,
    page: str,
    status: int = 200,
    **context: Any,
) -> web.Response:
    """Render ``template`` in the request's language, with the headers every page carries."""
    from server.auth import csrf_token, current_account  # here: server.auth imports this module

    lang, chosen = request_lang(request)
    other = next(code for code in LANGUAGES if code != lang)
    strings: Strings = request.app[STRINGS_KEY]
    config: Config = request.app[CONFIG_KEY]
    context.update(
        page=page,
        lang=lang,
        other_lang=other,
        strings=strings[lang],
        other_strings=strings[other],
        _=_translator(strings, lang),
        lang_switch_url=str(request.rel_url.update_query(lang=other)),
        public_url=config.public_url,
        account=current_account(request),
        csrf_token=csrf_token(request),
    )
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    if chosen:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=LANG_COOKIE_MAX_AGE, path="/", samesite="Lax"
        )
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


async def index_page(request: web.Request) -> web.Response:
    """``GET /``: the start page (room name and display name)."""
    room = request.query.get("room", "")
    return _render(
        request,
        "index.html",
        "index",
        room=room if room_name_valid(room) else "",
        name=request.query.get("name", "").strip()[:NAME_MAX_CHARS],
    )


async def meeting_page(request: web.Request) -> web.Response:
    """``GET /r/{room}``: the pre-join check and the meeting, in one page.

    Opened by a signed-in account, or by anyone with an invitation link (``?token=``); the
    node checks both again at ``join``: this page only turns people away early and clearly."""
    from server.app import CLUSTER, DATABASE, SECRET_KEY  # the composition root imports this
    from server.auth import current_account
    from server.errors import InvalidToken
    from server.invitations import verify_invitation
    from server.room_records import find_room, room_state

    room = request.match_info["room"]
    if not room_name_valid(room):
        return _render(request, "error.html", "error", status=400, error="room_invalid", room=room)
    token = request.query.get("token", "").strip() or None
    account = current_account(request)
    invitation = None
    if token is not None:
        try:
            invitation = verify_invitation(request.app[SECRET_KEY], token, room=room)
        except InvalidToken as exc:
            log.info("meeting page room=%s: invitation refused: %s", room, exc.detail)
            expired = "expired" in exc.detail
            error = "token_expired" if expired else "token_invalid"
            return _render(request, "error.html", "error", status=403, error=error)
    elif account is None:
        raise web.HTTPFound(f"/login?next=/r/{room}")
    async with request.app[DATABASE].session() as db:
        record = await find_room(db, room)
    if record is None:
        return _render(request, "error.html", "error", status=404, error="room_not_found")
    if room_state(record, datetime.now(UTC)) == "ended":
        return _render(request, "error.html", "error", status=410, error="room_over")
    # The meeting's media runs on its home node: a page opened on another node goes there.
    home = await request.app[CLUSTER].home_url(room)
    if home is not None:
        raise web.HTTPTemporaryRedirect(f"{home}{request.path_qs}")
    name = request.query.get("name", "").strip()[:NAME_MAX_CHARS]
    if not name:
        name = (
            account.display_name
            if account is not None
            else (invitation.name if invitation is not None and invitation.name else "")
        )[:NAME_MAX_CHARS]
    return _render(
        request,
        "meeting.html",
        "meeting",
        room=room,
        title=record.title,
        token=token,
        name=name,
    )


async def socketio_client(request: web.Request) -> web.StreamResponse:
    """The Socket.IO browser client (ES module build) from the pinned npm dependency."""
    filename = request.match_info["filename"]
    path = SOCKETIO_DIST_DIR / filename
    if filename not in SOCKETIO_FILES:
        raise web.HTTPNotFound()
    if not path.is_file():
        if filename.endswith(".map") and (SOCKETIO_DIST_DIR / SOCKETIO_FILES[0]).is_file():
            raise web.HTTPNotFound()
        log.error("Socket.IO browser client missing at %s: run `%s`", path, INSTALL_COMMAND)
        return web.Response(
            status=500,
            text=(
                f"The Socket.IO browser client is not installed ({path} is missing).\n"
                f"Run `{INSTALL_COMMAND}` in the repository (`./giaoban.sh serve` installs it).\n"
                f"Chưa cài thư viện Socket.IO cho trình duyệt: chạy `{INSTALL_COMMAND}` "
                "(lệnh `./giaoban.sh serve` tự cài).\n"
            ),
            content_type="text/plain",
        )
    content_type = "text/javascript" if filename.endswith(".js") else "application/json"
    return web.FileResponse(
        path, headers={"Content-Type": content_type, "Cache-Control": "no-cache"}
    )


async def _static_cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Static files are revalidated (ETag / Last-Modified) so an upgraded node is picked up."""
    if request.path.startswith("/static/") and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-cache"


def setup_pages(app: web.Application, config: Config) -> None:
    """Register the page routes, the static files and the Jinja2 environment on ``app``."""
    app[STRINGS_KEY] = load_strings()
    app[CONFIG_KEY] = config
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    if not (SOCKETIO_DIST_DIR / SOCKETIO_FILES[0]).is_file():
        log.warning(
            "Socket.IO browser client missing (%s): run `%s`", SOCKETIO_DIST_DIR, INSTALL_COMMAND
        )
    app.router.add_get("/", index_page, name="index")
    app.router.add_get("/r/{room}", meeting_page, name="meeting")
    # Registered before the static directory so that these two paths resolve here.
    app.router.add_get(
        "/static/vendor/{filename:socket\\.io\\.esm\\.min\\.js(?:\\.map)?}",
        socketio_client,
        name="socketio_client",
    )
    app.router.add_static("/static/", STATIC_DIR, name="static")
    app.on_response_prepare.append(_static_cache_headers)
