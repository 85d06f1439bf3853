"""The JSON REST API under ``/api/v1``: rooms, invitation links, the caller's account, and the
OpenAPI 3.1 document that describes them (``/api/v1/openapi.json``).

Who calls: a program with ``Authorization: Bearer <API token>`` (`server.api_tokens`), or a
signed-in browser with its session cookie (its unsafe requests then need the CSRF token in
``X-CSRF-Token``, see `server.auth`). The API acts with the caller's rights, enforced by
`server.room_records` exactly as for the pages; a room the caller has no role in answers 404,
as an unknown one does.

Every answer is JSON; an error is ``{"error": {"code", "message"}}`` with its HTTP status, and a
log line — never a stack trace. `ENDPOINTS` is the one route table: it registers the routes and
builds the OpenAPI document (`server.openapi`), so the two cannot drift apart; errors and
the JSON-only middleware live in `server.api_errors`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from server import api_models as m
from server.api_errors import (
    MAX_BODY,
    REASONS,
    BadApiToken,
    UnsupportedMediaType,
    api_middleware,
    json_response,
)
from server.api_tokens import account_for_api_token
from server.auth import current_account
from server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    RoomEnded,
    TooLarge,
    Unauthenticated,
)
from server.invitations import invitation_url, mint_invitation
from server.openapi import Endpoint, openapi_document
from server.room_records import (
    STATES,
    can_create_rooms,
    create_room,
    end_room,
    find_room,
    list_rooms,
    room_role,
    room_state,
    update_room,
)
from server.store.db import Database
from server.store.models import Account, InviteRole, Role, RoomRecord, Site

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
MAX_REPORTED_PROBLEMS = 5
ModelT = TypeVar("ModelT", bound=BaseModel)


# --- the caller, the body ---------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """The account a request acts for, and how it proved it ("token" or "session")."""

    account: Account
    via: str

    def __str__(self) -> str:
        return f"account {self.account.id} ({self.via})"


def _database(request: web.Request) -> Database:
    from server.app import DATABASE  # here: server.app imports this module

    return request.app[DATABASE]


async def caller(request: web.Request) -> Caller:
    """The API token's account, else the signed-in session's; Unauthenticated for neither.
    A request with an Authorization header is judged by it alone (no fallback to the cookie)."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise BadApiToken("the Authorization header must be 'Bearer <API token>'")
        async with _database(request).session() as db, db.begin():
            account = await account_for_api_token(db, token.strip())
        if account is None:
            raise BadApiToken()
        return Caller(account, "token")
    account = current_account(request)
    if account is None:
        raise Unauthenticated("send Authorization: Bearer <API token>")
    return Caller(account, "session")


async def _read_body(request: web.Request) -> bytes:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise TooLarge(f"the body may have at most {MAX_BODY // 1024} KiB")
    # Counted as it arrives: a chunked body has no Content-Length to check first.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(16 * 1024):
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge(f"the body may have at most {MAX_BODY // 1024} KiB")
        chunks.append(chunk)
    return b"".join(chunks)


def describe(error: ValidationError) -> str:
    """pydantic's errors as one line naming each field: ``duration_minutes: Input should be a
    valid integer; unknown field 'titel'``."""
    problems = []
    for item in error.errors(include_url=False)[:MAX_REPORTED_PROBLEMS]:
        where = ".".join(str(part) for part in item["loc"])
        if item["type"] == "json_invalid":
            problems.append(f"malformed JSON: {item['msg'].removeprefix('Invalid JSON: ')}")
        elif item["type"] == "extra_forbidden":
            problems.append(f"unknown field {where!r}")
        elif item["type"] == "model_type":
            problems.append("the body must be a JSON object")
        else:
            problems.append(f"{where or 'body'}: {item['msg']}")
    more = error.error_count() - MAX_REPORTED_PROBLEMS
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


async def body(request: web.Request, model: type[ModelT]) -> ModelT:
    """The request's JSON body as `model`: 415 unless it is JSON, 413 over 64 KiB, 400 naming
    each bad field."""
    kind = request.content_type
    if kind != "application/json" and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"send Content-Type: application/json (got {kind})")
    raw = await _read_body(request)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(describe(exc)) from None


# --- rooms as JSON ----------------------------------------------------------------------------


def _base_url(request: web.Request) -> str:
    from server.app import CONFIG  # here: server.app imports this module

    return request.app[CONFIG].public_url or f"{request.scheme}://{request.host}"


def _listed_role(room: RoomRecord, account: Account) -> str:
    # The rooms listed are those the account has a role in: read it from the loaded invites
    # instead of one query per room (`room_role` says the same).
    if account.role == Role.ADMIN or room.created_by_id == account.id:
        return "host"
    for invite in room.invites:
        if invite.account_id == account.id and invite.role == InviteRole.HOST:
            return "host"
    return "member"


def room_json(room: RoomRecord, role: str, base_url: str, now: datetime) -> dict[str, Any]:
    """`room` as the API shows it (`api_models.Room`), times in UTC ISO 8601."""
    accounts = [(i.account.username, i.role) for i in room.invites if i.account is not None]
    shown = m.Room(
        slug=room.slug,
        title=room.title,
        state=room_state(room, now),  # type: ignore[arg-type]
        starts_at=room.starts_at,
        ends_at=room.starts_at + timedelta(minutes=room.duration_minutes),
        duration_minutes=room.duration_minutes,
        mode=room.mode.value,  # type: ignore[arg-type]
        lobby=room.lobby,
        created_by=room.created_by.username,
        your_role=role,  # type: ignore[arg-type]
        sites=sorted(i.site.code for i in room.invites if i.site is not None),
        members=sorted(name for name, r in accounts if r == InviteRole.MEMBER),
        hosts=sorted(name for name, r in accounts if r == InviteRole.HOST),
        started_at=room.started_at,
        ended_at=room.ended_at,
        join_url=f"{base_url.rstrip('/')}/r/{room.slug}",
    )
    return shown.model_dump(mode="json")


async def _visible_room(
    request: web.Request, db: AsyncSession, account: Account
) -> tuple[RoomRecord, str]:
    """The room of the URL and the account's role in it; NotFound when it is unknown or the
    account has no role in it (the same answer: existence is not disclosed)."""
    slug = request.match_info["slug"]
    room = await find_room(db, slug)
    role = await room_role(db, room, account) if room is not None else None
    if room is None or role is None:
        raise NotFound(f"no room {slug!r}")
    return room, role


def _names_as_bad_request(exc: NotFound) -> BadRequest:
    # An unknown site or username in a body is a bad body, not a missing endpoint: 400.
    return BadRequest(exc.detail)


# --- handlers ---------------------------------------------------------------------------------


async def get_rooms(request: web.Request) -> web.Response:
    """``GET /api/v1/rooms[?state=upcoming|live|ended]``."""
    who = await caller(request)
    wanted = request.query.get("state")
    if wanted is not None and wanted not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)} (got {wanted!r})")
    now = datetime.now(UTC)
    async with _database(request).session() as db:
        grouped = await list_rooms(db, who.account, now)
    base = _base_url(request)
    rooms = [
        room_json(room, _listed_role(room, who.account), base, now)
        for state in ("live", "upcoming", "ended")
        if wanted in (None, state)
        for room in grouped[state]
    ]
    return json_response({"rooms": rooms})


async def post_rooms(request: web.Request) -> web.Response:
    """``POST /api/v1/rooms``: schedule a room (hosts and admins); 201 with ``Location``."""
    who = await caller(request)
    if not can_create_rooms(who.account):
        raise Forbidden("only hosts and admins may schedule rooms")
    wanted = await body(request, m.RoomCreate)
    async with _database(request).session() as db, db.begin():
        try:
            room = await create_room(
                db,
                who.account,
                title=wanted.title,
                starts_at=wanted.starts_at,
                duration_minutes=wanted.duration_minutes,
                mode=wanted.mode,
                lobby=wanted.lobby,
                site_codes=wanted.sites,
                member_usernames=wanted.members,
                host_usernames=wanted.hosts,
                slug=wanted.slug,
            )
        except NotFound as exc:
            raise _names_as_bad_request(exc) from None
        shown = room_json(room, "host", _base_url(request), datetime.now(UTC))
    log.info("api: room created room=%s by %s", room.slug, who)
    return json_response(shown, 201, {"Location": f"{PREFIX}/rooms/{room.slug}"})


async def get_room(request: web.Request) -> web.Response:
    """``GET /api/v1/rooms/{slug}``."""
    who = await caller(request)
    async with _database(request).session() as db:
        room, role = await _visible_room(request, db, who.account)
    return json_response(room_json(room, role, _base_url(request), datetime.now(UTC)))


PATCH_FIELDS = {"sites": "site_codes", "members": "member_usernames", "hosts": "host_usernames"}


async def patch_room(request: web.Request) -> web.Response:
    """``PATCH /api/v1/rooms/{slug}``: change the schedule or the invitations (hosts)."""
    who = await caller(request)
    async with _database(request).session() as db:
        await _visible_room(request, db, who.account)  # 404 before any word on the body
    wanted = await body(request, m.RoomPatch)
    changes = {
        PATCH_FIELDS.get(name, name): value
        for name, value in wanted.model_dump(exclude_unset=True).items()
    }
    async with _database(request).session() as db, db.begin():
        room, role = await _visible_room(request, db, who.account)
        try:
            room = await update_room(db, who.account, room.slug, **changes)
        except NotFound as exc:
            raise _names_as_bad_request(exc) from None
        room, role = await _visible_room(request, db, who.account)  # invites reloaded
        shown = room_json(room, role, _base_url(request), datetime.now(UTC))
    log.info("api: room updated room=%s by %s: %s", room.slug, who, ", ".join(sorted(changes)))
    return json_response(shown)


async def post_room_end(request: web.Request) -> web.Response:
    """``POST /api/v1/rooms/{slug}/end``: end the meeting for everyone (hosts); no body."""
    who = await caller(request)
    async with _database(request).session() as db, db.begin():
        room, role = await _visible_room(request, db, who.account)
        room = await end_room(db, who.account, room.slug)
        shown = room_json(room, role, _base_url(request), datetime.now(UTC))
    from server.app import SIGNALING  # here: server.app imports this module

    # Ended in the store first: nobody gets back in while the live room closes.
    await request.app[SIGNALING].end_meeting(room.slug, str(who))
    log.info("api: room ended room=%s by %s", room.slug, who)
    return json_response(shown)


async def post_room_recording(request: web.Request) -> web.Response:
    """``POST /api/v1/rooms/{slug}/recording``: start or stop recording the live meeting (its
    hosts). The meeting must be live on this node (409 otherwise)."""
    from server.app import RECORDING, ROOMS, SIGNALING  # here: server.app imports this module

    who = await caller(request)
    async with _database(request).session() as db:
        room, role = await _visible_room(request, db, who.account)
    if role != "host":
        raise Forbidden("only the room's hosts may start or stop its recording")
    wanted = await body(request, m.RecordingChange)
    live = request.app[ROOMS].by_name.get(room.slug)
    if live is None or not live.people:
        raise Conflict(f"the meeting of room {room.slug!r} is not live on this node")
    control = request.app[RECORDING]
    if wanted.action == "start":
        recording_id = await control.start(live, who.account.id, str(who))
    else:
        recording_id = await control.stop(live, str(who))
    await request.app[SIGNALING].to_room(live.name, "room_updated", live.describe())
    log.info("api: recording %s room=%s by %s", wanted.action, room.slug, who)
    status = m.RecordingStatus(recording=live.recording_id is not None, recording_id=recording_id)
    return json_response(status.model_dump())


async def post_invitation(request: web.Request) -> web.Response:
    """``POST /api/v1/rooms/{slug}/invitations``: mint an invitation link (hosts); 201."""
    from server.app import SECRET_KEY  # here: server.app imports this module

    who = await caller(request)
    async with _database(request).session() as db:
        room, role = await _visible_room(request, db, who.account)
    if role != "host":
        raise Forbidden("only the room's hosts may mint invitation links")
    if room.ended_at is not None:
        raise RoomEnded(f"room {room.slug!r} has ended")
    wanted = await body(request, m.InvitationCreate)
    async with _database(request).session() as db:
        if wanted.site is not None:
            known = await db.scalar(select(Site.id).where(Site.code == wanted.site))
            if known is None:
                raise BadRequest(f"no site with code {wanted.site!r}")
    hours = wanted.expires_in_hours or m.DEFAULT_INVITE_HOURS
    expires_at = wanted.expires_at or datetime.now(UTC) + timedelta(hours=hours)
    token = mint_invitation(
        request.app[SECRET_KEY],
        room=room.slug,
        role=wanted.role,
        site=wanted.site,
        expires_at=expires_at,
        name=wanted.name,
    )
    # Never the token itself: whoever reads the log could join with it.
    log.info(
        "api: invitation minted room=%s role=%s site=%s until %s by %s",
        room.slug,
        wanted.role,
        wanted.site or "-",
        expires_at.astimezone(UTC).isoformat(timespec="seconds"),
        who,
    )
    shown = m.Invitation(
        token=token,
        url=invitation_url(_base_url(request), room.slug, token),
        # What the token carries: whole seconds.
        expires_at=expires_at.astimezone(UTC).replace(microsecond=0),
        role=wanted.role,
        site=wanted.site,
    )
    return json_response(shown.model_dump(mode="json"), 201)


async def get_me(request: web.Request) -> web.Response:
    """``GET /api/v1/me``: the account the request acts for."""
    who = await caller(request)
    account = who.account
    shown = m.Me(
        id=account.id,
        username=account.username,
        display_name=account.display_name,
        role=account.role.value,  # type: ignore[arg-type]
        site=account.site.code if account.site is not None else None,
        can_create_rooms=can_create_rooms(account),
        auth=who.via,  # type: ignore[arg-type]
    )
    return json_response(shown.model_dump(mode="json"))


async def get_openapi(request: web.Request) -> web.Response:
    """``GET /api/v1/openapi.json``: this API's OpenAPI 3.1 document (no sign-in needed)."""
    return json_response(request.app[OPENAPI])


# --- the route table and the OpenAPI document -------------------------------------------------


BODY_ERRORS = (400, 401, 413, 415)
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        f"{PREFIX}/rooms",
        get_rooms,
        "The caller's rooms (admins: every room), each with its state",
        response=m.RoomList,
        errors=(400, 401),
        query=(
            {
                "name": "state",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": list(STATES)},
                "description": "only rooms in this state",
            },
        ),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/rooms",
        post_rooms,
        "Schedule a room (hosts and admins)",
        body=m.RoomCreate,
        response=m.Room,
        status=201,
        errors=(*BODY_ERRORS, 403, 409),
    ),
    Endpoint(
        "GET", f"{PREFIX}/rooms/{{slug}}", get_room, "One room", response=m.Room, errors=(401, 404)
    ),
    Endpoint(
        "PATCH",
        f"{PREFIX}/rooms/{{slug}}",
        patch_room,
        "Change a room's schedule or invitations (its hosts)",
        body=m.RoomPatch,
        response=m.Room,
        errors=(*BODY_ERRORS, 403, 404, 410),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/rooms/{{slug}}/end",
        post_room_end,
        "End the meeting for everyone (its hosts); ending twice is no error",
        response=m.Room,
        errors=(401, 403, 404),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/rooms/{{slug}}/recording",
        post_room_recording,
        "Start or stop recording the room's live meeting (its hosts)",
        body=m.RecordingChange,
        response=m.RecordingStatus,
        errors=(*BODY_ERRORS, 403, 404, 409, 503),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/rooms/{{slug}}/invitations",
        post_invitation,
        "Mint an invitation link (its hosts)",
        body=m.InvitationCreate,
        response=m.Invitation,
        status=201,
        errors=(*BODY_ERRORS, 403, 404, 410),
    ),
    Endpoint("GET", f"{PREFIX}/me", get_me, "The account the request acts for", response=m.Me),
    Endpoint(
        "GET",
        f"{PREFIX}/openapi.json",
        get_openapi,
        "This document",
        errors=(),
        public=True,
    ),
)


OPENAPI = web.AppKey("giaoban_openapi", dict)


def setup_api(app: web.Application) -> None:
    """Register the API routes, its middleware and the API token pages on ``app`` (after
    `setup_auth`)."""
    from server.token_pages import setup_token_pages

    app[OPENAPI] = openapi_document(ENDPOINTS, REASONS)
    # Outermost: the router's 404/405 and the CSRF refusal on /api/ come back as JSON too.
    app.middlewares.insert(0, api_middleware)
    for endpoint in ENDPOINTS:
        app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
    setup_token_pages(app)
