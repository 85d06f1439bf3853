"""The REST API's edge to HTTP: its few extra errors, the HTTP status of each node error, and
the middleware that makes every ``/api/`` answer JSON (`{"error": {"code", "message"}}` for an
error, with a log line and never a stack trace) and counts it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.auth import SESSION_COOKIE
from server.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    GiaoBanError,
    NoRecorder,
    NotFound,
    RoomEnded,
    TooLarge,
    Unauthenticated,
)

log = logging.getLogger(__name__)

# Room bodies are a few KiB even with hundreds of invitees; more is a mistake or an attack.
MAX_BODY = 64 * 1024
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


# --- errors -----------------------------------------------------------------------------------


class UnsupportedMediaType(GiaoBanError):
    code = "unsupported_media_type"
    message_vi = "Dữ liệu gửi lên phải là JSON"
    message_en = "The body must be JSON"


class MethodNotAllowed(GiaoBanError):
    code = "method_not_allowed"
    message_vi = "Phương thức không được hỗ trợ"
    message_en = "Method not allowed"


class BadApiToken(Unauthenticated):
    """An Authorization header that opens nothing: malformed, unknown or revoked token, or a
    disabled account (one answer for all, so tokens cannot be probed)."""

    message_vi = "Mã API không hợp lệ hoặc đã bị thu hồi"
    message_en = "The API token is invalid or revoked"


# Most specific first: AlreadyExists is a Conflict, BadApiToken an Unauthenticated.
STATUSES: tuple[tuple[type[GiaoBanError], int], ...] = (
    (BadRequest, 400),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (MethodNotAllowed, 405),
    (Conflict, 409),
    (RoomEnded, 410),
    (TooLarge, 413),
    (UnsupportedMediaType, 415),
    (NoRecorder, 503),
)
REASONS = {
    400: "Bad request: malformed JSON, a wrong type, an unknown field, a bad value",
    401: "No or bad credentials",
    403: "The caller may not do this",
    404: "No such room (or the caller has no role in it)",
    409: "The room name is taken",
    410: "The room has ended",
    413: f"The body is larger than {MAX_BODY // 1024} KiB",
    415: "The body is not application/json",
    503: "No recording worker is running (nodes with GIAOBAN_RECORDER=workers)",
}


def status_of(error: GiaoBanError) -> int:
    """The HTTP status of a node error (500 for one the API does not expect)."""
    for kind, status in STATUSES:
        if isinstance(error, kind):
            return status
    return 500


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """`data` as a JSON answer (UTF-8, not ASCII-escaped), never cached."""
    return web.json_response(
        data,
        status=status,
        headers={**JSON_HEADERS, **(headers or {})},
        dumps=lambda value: json.dumps(value, ensure_ascii=False),
    )


def _error_response(request: web.Request, error: GiaoBanError, status: int) -> web.Response:
    if status >= 500:
        log.error("api %s %s -> %d %s", request.method, request.path, status, error.code)
    else:
        log.info("api %s %s -> %d %s: %s", request.method, request.path, status, error.code, error)
    headers = {"WWW-Authenticate": 'Bearer realm="giaoban"'} if status == 401 else {}
    return json_response(error.to_wire(), status, headers)


def _from_http(request: web.Request, status: int) -> GiaoBanError:
    """A node error for an HTTP refusal made outside the API's handlers (router, CSRF)."""
    if status == 404:
        return NotFound(f"no API endpoint {request.path}")
    if status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if status == 403:
        # Only the CSRF check answers 403 outside the handlers: a session without its token.
        return Forbidden(
            "a signed-in browser must send the X-CSRF-Token header (programs use "
            "Authorization: Bearer with an API token)"
        )
    if status == 413:
        return TooLarge(f"the body may have at most {MAX_BODY // 1024} KiB")
    if status == 401:
        return Unauthenticated()
    if status < 500:
        return BadRequest(f"HTTP {status}")
    return GiaoBanError()


def _has_credentials(request: web.Request) -> bool:
    return "Authorization" in request.headers or SESSION_COOKIE in request.cookies


@web.middleware
async def api_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """For ``/api/`` paths: every answer JSON, every error `{"error": …}` with its status and a
    log line, a count per method and status class. Installed outermost, so that it also turns
    the router's 404/405 and the CSRF refusal into JSON."""
    if not request.path.startswith("/api/"):
        return await handler(request)
    response: web.StreamResponse
    try:
        if request.method in UNSAFE_METHODS and not _has_credentials(request):
            # Before the CSRF check, which would refuse with a 403 page: say what is missing.
            raise Unauthenticated("send Authorization: Bearer <API token>")
        response = await handler(request)
        if response.status >= 400 and response.content_type != "application/json":
            response = _error_response(
                request, _from_http(request, response.status), response.status
            )
    except GiaoBanError as exc:
        response = _error_response(request, exc, status_of(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _error_response(request, _from_http(request, exc.status), exc.status)
        if exc.status == 405 and "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except asyncio.CancelledError:
        raise
    except Exception:
        # The trace goes to the log only; the client learns nothing of the node's insides.
        log.exception("api %s %s failed", request.method, request.path)
        response = _error_response(request, GiaoBanError(), 500)
    _metrics(request).api_request(request.method, response.status)
    return response


def _metrics(request: web.Request) -> Any:
    from server.app import METRICS  # here: server.app imports this module

    return request.app[METRICS]
