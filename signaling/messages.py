"""Validation of signaling payloads (signaling/PROTOCOL.md): plain checks, clear errors."""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

from server.errors import BadRequest, TooLarge

MAX_PAYLOAD = 64 * 1024
MAX_SDP = 32 * 1024
MAX_NAME = 64
ROOM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PC_NAME = re.compile(r"^[a-z0-9_-]{1,16}$")
SOURCES = ("camera", "microphone", "screen", "screen-audio")


def payload_of(args: tuple[Any, ...]) -> dict[str, Any]:
    """The single JSON object an event carries (an absent one counts as empty)."""
    if not args:
        return {}
    if len(args) > 1:
        raise BadRequest("an event carries one JSON object")
    data = args[0]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadRequest("the payload must be a JSON object")
    try:
        size = len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        raise BadRequest("the payload is not JSON") from exc
    if size > MAX_PAYLOAD:
        raise TooLarge(f"{size} bytes, at most {MAX_PAYLOAD}")
    return data


def text(
    data: dict[str, Any],
    key: str,
    max_len: int,
    pattern: re.Pattern[str] | None = None,
    default: str | None = None,
) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise BadRequest(f"'{key}' must be a string")
    value = value.strip() if pattern is None else value
    if len(value) > max_len:
        raise BadRequest(f"'{key}' is longer than {max_len} characters")
    if not value:
        raise BadRequest(f"'{key}' is empty")
    if pattern is not None and not pattern.fullmatch(value):
        raise BadRequest(f"'{key}' has characters that are not allowed")
    return value


def sdp(data: dict[str, Any]) -> str:
    value = data.get("sdp")
    if not isinstance(value, str) or not value:
        raise BadRequest("'sdp' must be a non-empty string")
    if len(value) > MAX_SDP:
        raise TooLarge(f"'sdp' is longer than {MAX_SDP} characters")
    if not value.startswith("v=0"):
        raise BadRequest("'sdp' is not an SDP description")
    return value


def display_name(data: dict[str, Any]) -> str:
    name = text(data, "name", MAX_NAME)
    if any(unicodedata.category(ch) == "Cc" for ch in name):
        raise BadRequest("'name' has control characters")
    return name


def room_name(data: dict[str, Any]) -> str:
    return text(data, "room", MAX_NAME, ROOM_NAME)


def pc_name(data: dict[str, Any]) -> str:
    return text(data, "pc", 16, PC_NAME, default="main")


def sources(data: dict[str, Any]) -> dict[str, str]:
    tracks = data.get("tracks", [])
    if not isinstance(tracks, list) or len(tracks) > 16:
        raise BadRequest("'tracks' must be a list of at most 16 entries")
    result: dict[str, str] = {}
    for entry in tracks:
        if not isinstance(entry, dict):
            raise BadRequest("each of 'tracks' must be an object")
        mid, source = entry.get("mid"), entry.get("source")
        if not isinstance(mid, str) or not 0 < len(mid) <= 32:
            raise BadRequest("'tracks[].mid' must be a short string")
        if source not in SOURCES:
            raise BadRequest(f"'tracks[].source' must be one of {', '.join(SOURCES)}")
        result[mid] = source
    return result


def revision(data: dict[str, Any]) -> int:
    value = data.get("revision")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("'revision' must be a positive integer")
    return value


def candidate(data: dict[str, Any]) -> dict[str, Any]:
    value = data.get("candidate")
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("'candidate' must be an RTCIceCandidateInit object")
    line = value.get("candidate", "")
    if not isinstance(line, str) or len(line) > 1024:
        raise BadRequest("'candidate.candidate' must be a string")
    mid = value.get("sdpMid")
    index = value.get("sdpMLineIndex")
    if mid is not None and not isinstance(mid, str):
        raise BadRequest("'candidate.sdpMid' must be a string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
        raise BadRequest("'candidate.sdpMLineIndex' must be an integer")
    return {"candidate": line, "sdpMid": mid, "sdpMLineIndex": index}


def flag(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    if not isinstance(value, bool):
        raise BadRequest(f"'{key}' must be true or false")
    return value


MAX_TOKEN = 4096
ENTRY_ID = re.compile(r"^l-[0-9a-f]{12}$")


def optional_text(data: dict[str, Any], key: str, max_len: int) -> str | None:
    """A string that may be absent (or null); when present it must be non-empty and short."""
    if data.get(key) is None:
        return None
    return text(data, key, max_len)


def token(data: dict[str, Any]) -> str | None:
    return optional_text(data, "token", MAX_TOKEN)


def recorder_pass(data: dict[str, Any]) -> str | None:
    return optional_text(data, "recorder_pass", MAX_TOKEN)


def ticket(data: dict[str, Any]) -> str | None:
    return optional_text(data, "ticket", 64)


PARTICIPANT_ID = re.compile(r"^p-[0-9a-f]{12}$")


def participant_id(data: dict[str, Any]) -> str:
    return text(data, "participant_id", 16, PARTICIPANT_ID)


def entry_id(data: dict[str, Any]) -> str:
    return text(data, "entry_id", 16, ENTRY_ID)
