"""server/invitations.py: minting, verifying and every way a token can be wrong."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from server.errors import BadRequest, InvalidToken
from server.invitations import (
    AUDIENCE,
    ISSUER,
    Invitation,
    invitation_url,
    mint_invitation,
    verify_invitation,
)

# As long as the keys load_secret_key makes (token_urlsafe(48): 64 characters).
KEY = b"k" * 64
OTHER_KEY = b"o" * 64


def _in(**delta: float) -> datetime:
    return datetime.now(UTC) + timedelta(**delta)


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "room": "abc-defg-hij",
        "role": "member",
        "jti": "token-1",
        "iat": now,
        "exp": now + 3600,
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _encode(claims: dict[str, Any], key: bytes = KEY, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def test_round_trip() -> None:
    expires = _in(hours=24).replace(microsecond=0)
    token = mint_invitation(
        KEY, room="abc-defg-hij", role="guest", site="26734", expires_at=expires, name="Xã Tân Định"
    )
    invitation = verify_invitation(KEY, token, room="abc-defg-hij")
    assert invitation == Invitation(
        room="abc-defg-hij",
        role="guest",
        site="26734",
        token_id=invitation.token_id,
        expires_at=expires,
        name="Xã Tân Định",
    )
    assert len(invitation.token_id) >= 16
    # Without a room to check against, the token says which room it opens.
    assert verify_invitation(KEY, token).room == "abc-defg-hij"
    plain = verify_invitation(
        KEY, mint_invitation(KEY, room="Phong_1", role="host", expires_at=_in(minutes=5))
    )
    assert (plain.role, plain.site, plain.name) == ("host", None, None)
    # Every token is its own: a removal of one leaves the others working.
    again = mint_invitation(KEY, room="Phong_1", role="host", expires_at=_in(minutes=5))
    assert verify_invitation(KEY, again).token_id != plain.token_id


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"role": "admin"}, "role must be one of"),
        ({"room": "có dấu"}, "not a room name"),
        ({"expires_at": datetime(2099, 1, 1)}, "time zone"),
        ({"expires_at": _in(seconds=-1)}, "in the future"),
        ({"expires_at": _in(days=91)}, "at most 90 days"),  # margin: made at collection
        ({"site": "x" * 33}, "site code"),
        ({"name": "x" * 201}, "name must have"),
    ],
)
def test_mint_rejects(kwargs: dict[str, Any], detail: str) -> None:
    args: dict[str, Any] = {"room": "abc-defg-hij", "role": "member", "expires_at": _in(hours=1)}
    args.update(kwargs)
    with pytest.raises(BadRequest, match=detail):
        mint_invitation(KEY, **args)


def test_ninety_days_is_allowed() -> None:
    token = mint_invitation(KEY, room="r", role="member", expires_at=_in(days=90, seconds=-5))
    assert verify_invitation(KEY, token).room == "r"


def _tamper_payload(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{body}.{signature}"


def _flip_last_char(token: str) -> str:
    # The last base64url character carries the signature's final 4 bits (its low 2 bits must
    # be zero): "A" and "E" are both canonical, so the result is a well-formed wrong signature.
    return token[:-1] + ("A" if token[-1] != "A" else "E")


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: _encode(_claims(exp=int(_in(minutes=-5).timestamp()))), "expired"),
        (lambda: _flip_last_char(_encode(_claims())), "bad signature"),
        (lambda: _tamper_payload(_encode(_claims()), role="host"), "bad signature"),
        (lambda: _tamper_payload(_encode(_claims()), room="phong-khac"), "bad signature"),
        (lambda: _encode(_claims(), key=OTHER_KEY), "bad signature"),
        (lambda: _encode(_claims(aud="giaoban:api")), "wrong audience"),
        (lambda: _encode(_claims(iss="someone")), "wrong issuer"),
        (lambda: _encode(_claims(exp=None)), "no 'exp' claim"),
        (lambda: _encode(_claims(iat=None)), "no 'iat' claim"),
        (lambda: _encode(_claims(jti=None)), "no 'jti' claim"),
        (lambda: _encode(_claims(room=None)), "no 'room' claim"),
        (lambda: _encode(_claims(role=None)), "no 'role' claim"),
        (lambda: _encode(_claims(aud=None)), "no 'aud' claim"),
        (lambda: _encode(_claims(role="admin")), "unknown role 'admin'"),
        (lambda: _encode(_claims(room="../etc")), "bad room claim"),
        (lambda: _encode(_claims(room=["a"])), "bad room claim"),
        (lambda: _encode(_claims(site=7)), "bad site or name claim"),
        (lambda: _encode(_claims(iat=int(_in(hours=1).timestamp()))), "in the future"),
        (lambda: _encode(_claims(), algorithm="HS512"), "not signed with HS256"),
        (lambda: jwt.encode(_claims(), None, algorithm="none"), "not signed with HS256"),
        (lambda: "", "malformed"),
        (lambda: "not a token", "malformed"),
        (lambda: "a.b.c", "malformed"),
        (lambda: "....", "malformed"),
        (lambda: jwt.api_jws.PyJWS().encode(b"not json", KEY, algorithm="HS256"), "malformed"),
        (lambda: "x" * 5000, "malformed"),
        (lambda: "é.ü.ñ", "malformed"),
    ],
)
def test_verify_rejects(make: Any, detail: str) -> None:
    token = make()
    with pytest.raises(InvalidToken, match=detail) as caught:
        verify_invitation(KEY, token)
    assert caught.value.code == "invalid_token"


def test_other_room() -> None:
    token = mint_invitation(KEY, room="phong-a", role="member", expires_at=_in(hours=1))
    with pytest.raises(InvalidToken, match="for another room"):
        verify_invitation(KEY, token, room="phong-b")


def test_wrong_types_never_escape() -> None:
    for token in (None, 42, b"bytes", ["a"]):
        with pytest.raises(InvalidToken, match="malformed"):
            verify_invitation(KEY, token)  # type: ignore[arg-type]
    for claims in (
        _claims(exp="tomorrow"),
        _claims(iat="today"),
        _claims(jti=7),
        _claims(exp=10**20),
        _claims(aud=7),
    ):
        with pytest.raises(InvalidToken):
            verify_invitation(KEY, _encode(claims))


def test_invitation_url() -> None:
    token = mint_invitation(KEY, room="abc-defg-hij", role="member", expires_at=_in(hours=1))
    assert (
        invitation_url("https://giaoban.example.vn/", "abc-defg-hij", token)
        == f"https://giaoban.example.vn/r/abc-defg-hij?token={token}"
    )
    assert (
        invitation_url("http://localhost:8080", "r", "a.b.c")
        == "http://localhost:8080/r/r?token=a.b.c"
    )
