"""signaling/messages.py: every validator accepts good input and rejects bad input clearly."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.errors import BadRequest, GiaoBanError, TooLarge
from signaling import messages as m

GOOD_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n"
)


def raises(exc: type[GiaoBanError], fn: Any, *args: Any, match: str | None = None) -> GiaoBanError:
    with pytest.raises(exc, match=match) as info:
        fn(*args)
    err = info.value
    # a clear, bilingual message that names the problem
    assert err.detail
    assert err.message.startswith(f"{err.message_vi} / {err.message_en}: ")
    return err


def dumped_size(data: dict[str, Any]) -> int:
    """Size as the wire carries it: compact JSON, UTF-8."""
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode())


# -- payload_of ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), {}),
        ((None,), {}),
        (({},), {}),
        (({"room": "a"},), {"room": "a"}),
        (({"nested": {"list": [1, 2.5, None, True]}},), {"nested": {"list": [1, 2.5, None, True]}}),
        (({"tên": "Ủy ban xã"},), {"tên": "Ủy ban xã"}),
    ],
)
def test_payload_of_accepts(args: tuple[Any, ...], expected: dict[str, Any]) -> None:
    assert m.payload_of(args) == expected


def _circular() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (({}, {}), "one JSON object"),
        (("room",), "JSON object"),
        (([1, 2],), "JSON object"),
        ((42,), "JSON object"),
        ((b"{}",), "JSON object"),
        (({"x": {1, 2}},), "not JSON"),
        (({"x": object()},), "not JSON"),
        (({(1, 2): "tuple key"},), "not JSON"),
        ((_circular(),), "not JSON"),
    ],
    ids=["two-args", "str", "list", "int", "bytes", "set", "object", "tuple-key", "circular"],
)
def test_payload_of_rejects(args: tuple[Any, ...], match: str) -> None:
    raises(BadRequest, m.payload_of, args, match=match)


def test_payload_of_size_limit_boundary() -> None:
    overhead = dumped_size({"x": ""})
    at_limit = {"x": "a" * (m.MAX_PAYLOAD - overhead)}
    assert dumped_size(at_limit) == 64 * 1024
    assert m.payload_of((at_limit,)) is at_limit
    over = {"x": "a" * (m.MAX_PAYLOAD - overhead + 1)}
    err = raises(TooLarge, m.payload_of, (over,))
    assert str(m.MAX_PAYLOAD) in err.message
    assert err.code == "too_large"


def test_payload_of_counts_utf8_bytes_not_characters() -> None:
    chars = m.MAX_PAYLOAD // 3 + 10  # "ệ" is 3 bytes in UTF-8
    data = {"name": "ệ" * chars}
    assert len(json.dumps(data, ensure_ascii=False)) < m.MAX_PAYLOAD
    raises(TooLarge, m.payload_of, (data,))


# -- text / display_name ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("UBND xã A", "UBND xã A"),
        ("  Trưởng phòng  ", "Trưởng phòng"),  # stripped
        ("a", "a"),
        ("x" * 64, "x" * 64),
        ("  " + "x" * 64 + "  ", "x" * 64),  # the limit applies after stripping
        ("Nguyễn Văn Ả 😀", "Nguyễn Văn Ả 😀"),
    ],
)
def test_display_name_accepts(name: str, expected: str) -> None:
    assert m.display_name({"name": name}) == expected


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        ({}, BadRequest, "'name' must be a string"),
        ({"name": None}, BadRequest, "'name' must be a string"),
        ({"name": 12}, BadRequest, "'name' must be a string"),
        ({"name": ["a"]}, BadRequest, "'name' must be a string"),
        ({"name": True}, BadRequest, "'name' must be a string"),
        ({"name": ""}, BadRequest, "'name' is empty"),
        ({"name": "   "}, BadRequest, "'name' is empty"),
        ({"name": "x" * 65}, BadRequest, "longer than 64"),
        ({"name": "Bob\nSmith"}, BadRequest, "control characters"),
        ({"name": "Bob\x00"}, BadRequest, "control characters"),
        ({"name": "a\x1bb"}, BadRequest, "control characters"),  # ESC
        ({"name": "a\rb"}, BadRequest, "control characters"),
        ({"name": "a\x7fb"}, BadRequest, "control characters"),  # DEL
        ({"name": "a\x85b"}, BadRequest, "control characters"),  # NEL (C1 control)
    ],
    ids=[
        "missing",
        "none",
        "int",
        "list",
        "bool",
        "empty",
        "blank",
        "65-chars",
        "newline",
        "nul",
        "esc",
        "cr",
        "del",
        "c1-nel",
    ],
)
def test_display_name_rejects(data: dict[str, Any], exc: type[GiaoBanError], match: str) -> None:
    raises(exc, m.display_name, data, match=match)


# -- room_name ----------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ["giao-ban-tinh", "a", "A_b-9", "x" * 64, "0", "UBND_Tinh_2025"])
def test_room_name_accepts(room: str) -> None:
    assert m.room_name({"room": room}) == room


@pytest.mark.parametrize(
    ("data", "exc"),
    [
        ({}, BadRequest),
        ({"room": None}, BadRequest),
        ({"room": 5}, BadRequest),
        ({"room": ""}, BadRequest),
        ({"room": "a b"}, BadRequest),
        ({"room": " a"}, BadRequest),  # not stripped: a space is not allowed
        ({"room": "../x"}, BadRequest),
        ({"room": "a/b"}, BadRequest),
        ({"room": "a.b"}, BadRequest),
        ({"room": "phòng"}, BadRequest),  # letters means ASCII letters
        ({"room": "ａｂｃ"}, BadRequest),  # fullwidth
        ({"room": "x" * 65}, BadRequest),
        ({"room": "abc\n"}, BadRequest),  # "$" also matches before a final newline
        ({"room": "\n"}, BadRequest),
        ({"room": "a\x00"}, BadRequest),
    ],
    ids=[
        "missing",
        "none",
        "int",
        "empty",
        "space",
        "leading-space",
        "dotdot",
        "slash",
        "dot",
        "vietnamese",
        "fullwidth",
        "65-chars",
        "trailing-newline",
        "only-newline",
        "nul",
    ],
)
def test_room_name_rejects(data: dict[str, Any], exc: type[GiaoBanError]) -> None:
    err = raises(exc, m.room_name, data)
    assert "'room'" in err.detail


# -- pc_name ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "main"),
        ({"pc": "screen"}, "screen"),
        ({"pc": "a_b-1"}, "a_b-1"),
        ({"pc": "x" * 16}, "x" * 16),
    ],
)
def test_pc_name_accepts(data: dict[str, Any], expected: str) -> None:
    assert m.pc_name(data) == expected


@pytest.mark.parametrize(
    ("data", "exc"),
    [
        ({"pc": None}, BadRequest),
        ({"pc": 1}, BadRequest),
        ({"pc": ""}, BadRequest),
        ({"pc": "Main"}, BadRequest),  # lower case only
        ({"pc": "a b"}, BadRequest),
        ({"pc": "x" * 17}, BadRequest),
        ({"pc": "main\n"}, BadRequest),
    ],
    ids=["none", "int", "empty", "upper", "space", "17-chars", "trailing-newline"],
)
def test_pc_name_rejects(data: dict[str, Any], exc: type[GiaoBanError]) -> None:
    err = raises(exc, m.pc_name, data)
    assert "'pc'" in err.detail


# -- sdp ----------------------------------------------------------------------------------------


def test_sdp_accepts() -> None:
    assert m.sdp({"sdp": GOOD_SDP}) == GOOD_SDP


def test_sdp_size_boundary() -> None:
    at_limit = "v=0\r\n" + "a" * (m.MAX_SDP - 5)
    assert len(at_limit) == 32 * 1024
    assert m.sdp({"sdp": at_limit}) == at_limit
    raises(TooLarge, m.sdp, {"sdp": at_limit + "a"}, match="longer than 32768")


@pytest.mark.parametrize(
    ("data", "exc", "match"),
    [
        ({}, BadRequest, "non-empty string"),
        ({"sdp": None}, BadRequest, "non-empty string"),
        ({"sdp": ""}, BadRequest, "non-empty string"),
        ({"sdp": 0}, BadRequest, "non-empty string"),
        ({"sdp": {"type": "offer"}}, BadRequest, "non-empty string"),
        ({"sdp": b"v=0\r\n"}, BadRequest, "non-empty string"),
        ({"sdp": "hello"}, BadRequest, "not an SDP"),
        ({"sdp": " v=0\r\n"}, BadRequest, "not an SDP"),
        ({"sdp": "o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\n"}, BadRequest, "not an SDP"),
        ({"sdp": "x" * (32 * 1024 + 1)}, TooLarge, "longer than"),
    ],
    ids=["missing", "none", "empty", "int", "dict", "bytes", "garbage", "space", "order", "big"],
)
def test_sdp_rejects(data: dict[str, Any], exc: type[GiaoBanError], match: str) -> None:
    raises(exc, m.sdp, data, match=match)


# -- sources ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, {}),
        ({"tracks": []}, {}),
        (
            {"tracks": [{"mid": "0", "source": "camera"}, {"mid": "1", "source": "microphone"}]},
            {"0": "camera", "1": "microphone"},
        ),
        (
            {"tracks": [{"mid": "a", "source": "screen"}, {"mid": "b", "source": "screen-audio"}]},
            {"a": "screen", "b": "screen-audio"},
        ),
        ({"tracks": [{"mid": "x" * 32, "source": "camera"}]}, {"x" * 32: "camera"}),
        (
            {"tracks": [{"mid": str(i), "source": "camera"} for i in range(16)]},
            {str(i): "camera" for i in range(16)},
        ),
    ],
)
def test_sources_accepts(data: dict[str, Any], expected: dict[str, str]) -> None:
    assert m.sources(data) == expected


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"tracks": None}, "'tracks' must be a list"),
        ({"tracks": {"mid": "0"}}, "'tracks' must be a list"),
        ({"tracks": "camera"}, "'tracks' must be a list"),
        ({"tracks": [{"mid": str(i), "source": "camera"} for i in range(17)]}, "at most 16"),
        ({"tracks": ["camera"]}, "must be an object"),
        ({"tracks": [None]}, "must be an object"),
        ({"tracks": [{"source": "camera"}]}, "mid"),
        ({"tracks": [{"mid": "", "source": "camera"}]}, "mid"),
        ({"tracks": [{"mid": 0, "source": "camera"}]}, "mid"),
        ({"tracks": [{"mid": "x" * 33, "source": "camera"}]}, "mid"),
        ({"tracks": [{"mid": "0"}]}, "source"),
        ({"tracks": [{"mid": "0", "source": "webcam"}]}, "camera, microphone, screen"),
        ({"tracks": [{"mid": "0", "source": "Camera"}]}, "source"),
        ({"tracks": [{"mid": "0", "source": ["camera"]}]}, "source"),
    ],
)
def test_sources_rejects(data: dict[str, Any], match: str) -> None:
    raises(BadRequest, m.sources, data, match=match)


# -- revision -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1, 2, 3, 10**9])
def test_revision_accepts(value: int) -> None:
    assert m.revision({"revision": value}) == value


@pytest.mark.parametrize(
    "value",
    [None, 0, -1, True, False, 1.0, 2.5, "3", [3], {"n": 3}],
    ids=["none", "zero", "negative", "true", "false", "float-int", "float", "str", "list", "dict"],
)
def test_revision_rejects(value: Any) -> None:
    raises(BadRequest, m.revision, {"revision": value}, match="positive integer")


def test_revision_missing() -> None:
    raises(BadRequest, m.revision, {}, match="'revision'")


# -- candidate ----------------------------------------------------------------------------------

LINE = "candidate:1 1 udp 2130706431 192.168.1.5 50000 typ host"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, {}),
        ({"candidate": None}, {}),
        (
            {"candidate": {"candidate": LINE, "sdpMid": "0", "sdpMLineIndex": 0}},
            {"candidate": LINE, "sdpMid": "0", "sdpMLineIndex": 0},
        ),
        (
            {"candidate": {"candidate": LINE}},
            {"candidate": LINE, "sdpMid": None, "sdpMLineIndex": None},
        ),
        (  # end of candidates: an empty line
            {"candidate": {"candidate": "", "sdpMid": "1"}},
            {"candidate": "", "sdpMid": "1", "sdpMLineIndex": None},
        ),
        (  # unknown members are dropped
            {"candidate": {"candidate": LINE, "usernameFragment": "abcd", "evil": 1}},
            {"candidate": LINE, "sdpMid": None, "sdpMLineIndex": None},
        ),
        (
            {"candidate": {"candidate": "c" * 1024}},
            {"candidate": "c" * 1024, "sdpMid": None, "sdpMLineIndex": None},
        ),
    ],
)
def test_candidate_accepts(data: dict[str, Any], expected: dict[str, Any]) -> None:
    assert m.candidate(data) == expected


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (LINE, "RTCIceCandidateInit"),
        ([LINE], "RTCIceCandidateInit"),
        (1, "RTCIceCandidateInit"),
        ({"candidate": 5}, "'candidate.candidate'"),
        ({"candidate": None}, "'candidate.candidate'"),
        ({"candidate": "c" * 1025}, "'candidate.candidate'"),
        ({"candidate": LINE, "sdpMid": 0}, "'candidate.sdpMid'"),
        ({"candidate": LINE, "sdpMLineIndex": "0"}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "sdpMLineIndex": True}, "'candidate.sdpMLineIndex'"),
        ({"candidate": LINE, "sdpMLineIndex": 0.0}, "'candidate.sdpMLineIndex'"),
    ],
)
def test_candidate_rejects(value: Any, match: str) -> None:
    raises(BadRequest, m.candidate, {"candidate": value}, match=match)


# -- flag ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_flag_accepts(value: bool) -> None:
    assert m.flag({"muted": value}, "muted") is value


@pytest.mark.parametrize("value", [None, 0, 1, "true", "false", [], {}])
def test_flag_rejects(value: Any) -> None:
    raises(BadRequest, m.flag, {"muted": value}, "muted", match="'muted' must be true or false")


def test_flag_missing() -> None:
    raises(BadRequest, m.flag, {}, "muted", match="'muted'")


# -- the errors these raise go on the wire as-is -------------------------------------------------


def test_validation_error_wire_shape() -> None:
    with pytest.raises(BadRequest) as info:
        m.room_name({"room": "a b"})
    wire = info.value.to_wire()
    assert wire["error"]["code"] == "bad_request"
    assert "'room'" in wire["error"]["message"]
    json.dumps(wire)  # serializable


@pytest.mark.parametrize("value", [None, "eyJ.a.b"])
def test_token_and_ticket_may_be_absent_or_a_string(value: str | None) -> None:
    assert m.token({"token": value}) == value
    assert m.ticket({"ticket": value}) == value


@pytest.mark.parametrize("value", [17, "", " ", ["x"], "x" * (m.MAX_TOKEN + 1)])
def test_a_bad_token_is_a_bad_request(value: object) -> None:
    with pytest.raises(BadRequest):
        m.token({"token": value})


@pytest.mark.parametrize("value", ["l-0123456789ab"])
def test_entry_ids(value: str) -> None:
    assert m.entry_id({"entry_id": value}) == value


@pytest.mark.parametrize("value", [None, "", "p-0123456789ab", "l-0123456789AB", "l-../etc", 5])
def test_bad_entry_ids(value: object) -> None:
    with pytest.raises(BadRequest):
        m.entry_id({"entry_id": value})
