"""Invitation links: a signed token (JWT, HS256, the node's secret key) that lets its bearer into
one room with one role until it expires, without an account.

The token is the whole permission: anyone holding the link gets in, so links are short-lived
(at most 90 days) and a host can shut one out (`room_records.add_removal` with its `token_id`).
Tokens are never logged. `verify_invitation` raises only `InvalidToken`, with a detail that says
what is wrong (expired, bad signature, malformed, for another room, unknown role, …).
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import jwt

from server.errors import BadRequest, InvalidToken
from server.room_records import SLUG

ALGORITHM = "HS256"
AUDIENCE = "giaoban:invitation"
# A recorder pass lets a recording worker into one room as its hidden recorder: a different
# audience, so an invitation can never be taken for one nor the other way round.
RECORDER_AUDIENCE = "giaoban:recorder"
RECORDER_PASS_LIFETIME = timedelta(minutes=10)
ISSUER = "giaoban"
ROLES = ("host", "member", "guest")
MAX_LIFETIME = timedelta(days=90)
# Nodes' clocks differ a little: a token minted on one may reach another a moment "early".
LEEWAY = timedelta(seconds=30)
# A JWT of our claims is a few hundred bytes; the bound keeps garbage from being parsed.
MAX_TOKEN_LENGTH = 4096
MAX_NAME_LENGTH = 200
MAX_SITE_LENGTH = 32
REQUIRED_CLAIMS = ("exp", "iat", "jti", "room", "role", "aud")


@dataclass(frozen=True)
class Invitation:
    """What a verified invitation token grants: `role` in `room` until `expires_at`.

    `site` is the site the bearer speaks for (a commune's meeting hall), `name` the display name
    the host chose for them, `token_id` the token's `jti` (what a removal records)."""

    room: str
    role: str
    site: str | None
    token_id: str
    expires_at: datetime
    name: str | None


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise BadRequest(f"invitation role must be one of {', '.join(ROLES)} (got {role!r})")
    return role


def mint_invitation(
    key: bytes,
    *,
    room: str,
    role: str,
    site: str | None = None,
    expires_at: datetime,
    name: str | None = None,
) -> str:
    """A signed invitation token for `room` with `role`; BadRequest for a bad room name or role,
    or an expiry that is not aware, not in the future or more than 90 days ahead."""
    if not isinstance(room, str) or not SLUG.fullmatch(room):
        raise BadRequest(f"not a room name: {room!r}")
    _check_role(role)
    if not isinstance(expires_at, datetime) or expires_at.utcoffset() is None:
        raise BadRequest("invitation expiry must be a datetime with a time zone")
    now = datetime.now(UTC)
    if expires_at <= now:
        raise BadRequest("invitation expiry must be in the future")
    if expires_at - now > MAX_LIFETIME:
        raise BadRequest(f"an invitation may last at most {MAX_LIFETIME.days} days")
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "room": room,
        "role": role,
        "jti": secrets.token_urlsafe(16),
        "iat": int(now.timestamp()),
        "exp": int(expires_at.timestamp()),
    }
    # Optional claims are left out when empty: shorter links.
    if site:
        if len(site) > MAX_SITE_LENGTH:
            raise BadRequest(f"site code must have at most {MAX_SITE_LENGTH} characters")
        claims["site"] = site
    if name:
        shown = unicodedata.normalize("NFC", name).strip()
        if len(shown) > MAX_NAME_LENGTH:
            raise BadRequest(f"name must have at most {MAX_NAME_LENGTH} characters")
        if shown:
            claims["name"] = shown
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def _decode(key: bytes, token: str, audience: str = AUDIENCE) -> dict[str, Any]:
    try:
        return jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            leeway=LEEWAY,
            options={"require": list(REQUIRED_CLAIMS)},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the invitation has expired") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("bad signature: not signed by this node") from None
    except jwt.MissingRequiredClaimError as exc:
        raise InvalidToken(f"the token has no {exc.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("not an invitation token (wrong audience)") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("not issued by a Giao Ban node (wrong issuer)") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("the token is issued in the future") from None
    except jwt.InvalidAlgorithmError:
        raise InvalidToken(f"the token is not signed with {ALGORITHM}") from None
    except jwt.DecodeError:
        raise InvalidToken("malformed token") from None
    except jwt.PyJWTError as exc:
        # The other claim checks (iat or jti of the wrong type, …): named by PyJWT's message.
        raise InvalidToken(f"invalid token: {exc}") from None
    except (ValueError, TypeError, OverflowError):
        # Defence in depth: PyJWT turns bad input into DecodeError, but an edge must see only
        # InvalidToken whatever a library version does with odd bytes.
        raise InvalidToken("malformed token") from None


def verify_invitation(key: bytes, token: str, *, room: str | None = None) -> Invitation:
    """The invitation `token` carries; InvalidToken when it is expired, not signed with `key`,
    malformed, missing a claim, of an unknown role, or (when `room` is given) for another room."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    claims = _decode(key, token)
    claimed_room = claims["room"]
    if not isinstance(claimed_room, str) or not SLUG.fullmatch(claimed_room):
        raise InvalidToken("malformed token: bad room claim")
    if room is not None and claimed_room != room:
        raise InvalidToken("the invitation is for another room")
    role = claims["role"]
    if role not in ROLES:
        raise InvalidToken(f"unknown role {role!r}")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise InvalidToken("malformed token: bad jti claim")
    site = claims.get("site")
    name = claims.get("name")
    if not isinstance(site, str | None) or not isinstance(name, str | None):
        raise InvalidToken("malformed token: bad site or name claim")
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise InvalidToken("malformed token: bad exp claim")
    try:
        expires_at = datetime.fromtimestamp(exp, UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidToken("malformed token: bad exp claim") from None
    return Invitation(
        room=claimed_room,
        role=role,
        site=site or None,
        token_id=jti,
        expires_at=expires_at,
        name=name or None,
    )


@dataclass(frozen=True)
class RecorderPass:
    """What a verified recorder pass grants: recording `recording_id` of `room`."""

    room: str
    recording_id: int
    token_id: str


def mint_recorder_pass(key: bytes, *, room: str, recording_id: int) -> str:
    """A short-lived pass for a recording worker to join `room` as the recorder of
    `recording_id` (minted by the worker, which holds the nodes' shared secret key)."""
    if not isinstance(room, str) or not SLUG.fullmatch(room):
        raise BadRequest(f"not a room name: {room!r}")
    now = datetime.now(UTC)
    claims = {
        "iss": ISSUER,
        "aud": RECORDER_AUDIENCE,
        "room": room,
        "role": "recorder",
        "recording": int(recording_id),
        "jti": secrets.token_urlsafe(16),
        "iat": int(now.timestamp()),
        "exp": int((now + RECORDER_PASS_LIFETIME).timestamp()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify_recorder_pass(key: bytes, token: str, *, room: str) -> RecorderPass:
    """The recorder pass `token` carries for `room`; InvalidToken otherwise."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    claims = _decode(key, token, RECORDER_AUDIENCE)
    recording_id = claims.get("recording")
    if claims["room"] != room:
        raise InvalidToken("the recorder pass is for another room")
    if isinstance(recording_id, bool) or not isinstance(recording_id, int) or recording_id < 1:
        raise InvalidToken("malformed token: bad recording claim")
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti:
        raise InvalidToken("malformed token: bad jti claim")
    return RecorderPass(room=room, recording_id=recording_id, token_id=jti)


def invitation_url(base_url: str, room: str, token: str) -> str:
    """The link to send: `{base_url}/r/{room}?token={token}`."""
    return f"{base_url.rstrip('/')}/r/{quote(room, safe='')}?token={quote(token, safe='')}"
