"""Malformed, oversized, unknown and out-of-order signaling gets an error ack; the node keeps
serving everyone else."""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.frames import check_frames
from tests.support.media import BarcodeVideoTrack

GARBAGE_SDP = "v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nm=video nonsense\r\na=rtpmap:xx\r\n"
NOT_JSON_OBJECT = ["a string", 42, [1, 2, 3], True]


def error_code(ack):  # type: ignore[no-untyped-def]
    assert isinstance(ack, dict) and "error" in ack, f"expected an error ack, got {ack!r}"
    error = ack["error"]
    assert error["message"] and "/" in error["message"], "a Vietnamese / English message"
    return error["code"]


@pytest.fixture
async def meeting(node, peers):  # type: ignore[no-untyped-def]
    """A publisher and a subscriber in room 'safe' with video flowing."""
    publisher, sub = await peers("pub"), await peers("sub")
    await publisher.join("safe")
    await sub.join("safe")
    await sub.subscribe()
    await publisher.publish([BarcodeVideoTrack(fps=20)])
    await sub.wait_for(
        lambda: sub.tracks_of("video") and len(sub.tracks_of("video")[0].frames) >= 10,
        10,
        "video in the meeting",
    )
    return publisher, sub


async def assert_still_flowing(sub) -> None:  # type: ignore[no-untyped-def]
    video = sub.tracks_of("video")[0]
    count = len(video.frames)
    await sub.wait_for(lambda: len(video.frames) >= count + 20, 5, "video still flowing")
    report = check_frames(video.frames)
    assert report.increasing and report.missing == 0, report.summary()


async def test_bad_messages_get_error_acks_and_nothing_breaks(node, peers, meeting):
    publisher, sub = meeting
    attacker = await peers("attacker")

    assert error_code(await attacker.request("no_such_event", {})) == "unknown_event"
    assert error_code(await attacker.request("publish", {"sdp": "v=0"})) == "not_joined"
    assert error_code(await attacker.request("subscribe", {})) == "not_joined"
    for payload in NOT_JSON_OBJECT:
        assert error_code(await attacker.request("join", payload)) == "bad_request"
    assert error_code(await attacker.request("join", {"room": "safe"})) == "bad_request"
    assert (
        error_code(await attacker.request("join", {"room": "../etc", "name": "x"})) == "bad_request"
    )
    assert (
        error_code(await attacker.request("join", {"room": "safe", "name": "x" * 70_000}))
        == "too_large"
    )
    assert (
        error_code(await attacker.request("join", {"room": "safe", "name": "a\x00b"}))
        == "bad_request"
    )

    assert (
        error_code(await attacker.request("join", {"room": "safe", "name": "attacker"}))
        == "unauthenticated"
    )
    token = await node.invite("safe")
    for bad_token in (17, "", "x" * 5000):
        ack = await attacker.request("join", {"room": "safe", "name": "a", "token": bad_token})
        assert error_code(ack) == "bad_request"
    join = await attacker.request("join", {"room": "safe", "name": "attacker", "token": token})
    assert "ok" in join
    assert (
        error_code(await attacker.request("join", {"room": "other", "name": "again"}))
        == "already_joined"
    )
    assert error_code(await attacker.request("publish", {"sdp": GARBAGE_SDP})) == "bad_request"
    assert error_code(await attacker.request("publish", {"sdp": "hello"})) == "bad_request"
    assert error_code(await attacker.request("publish", {"sdp": 17})) == "bad_request"
    huge = "v=0\r\n" + "a=x-padding:" + "x" * 40_000 + "\r\n"
    assert error_code(await attacker.request("publish", {"sdp": huge})) == "too_large"
    assert (
        error_code(await attacker.request("publish", {"pc": "../../", "sdp": "v=0"}))
        == "bad_request"
    )
    assert (
        error_code(await attacker.request("down_answer", {"revision": 1, "sdp": "v=0"}))
        == "not_found"
    )
    assert (
        error_code(
            await attacker.request(
                "ice",
                {
                    "pc": "main",
                    "candidate": {
                        "candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host",
                        "sdpMid": "0",
                    },
                },
            )
        )
        == "not_found"
    )
    assert (
        error_code(await attacker.request("mute", {"track_id": "t-nope", "muted": True}))
        == "not_found"
    )
    assert (
        error_code(await attacker.request("mute", {"track_id": 3, "muted": "yes"})) == "bad_request"
    )
    # Another participant's track cannot be muted by name: it is not the attacker's.
    victim_track = publisher.published_track_ids()[0]
    assert (
        error_code(await attacker.request("mute", {"track_id": victim_track, "muted": True}))
        == "not_found"
    )

    await attacker.subscribe()
    assert (
        error_code(await attacker.request("down_answer", {"revision": 99, "sdp": "v=0"}))
        == "conflict"
    )
    assert (
        error_code(await attacker.request("down_answer", {"revision": True, "sdp": "v=0"}))
        == "bad_request"
    )
    assert (
        error_code(
            await attacker.request(
                "ice",
                {"pc": "down", "candidate": {"candidate": "candidate:garbage", "sdpMid": "0"}},
            )
        )
        == "bad_request"
    )
    assert (
        error_code(await attacker.request("ice", {"pc": "down", "candidate": "x"})) == "bad_request"
    )

    await assert_still_flowing(sub)
    assert not publisher.errors and not sub.errors

    async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as response:
        text = await response.text()
    assert 'giaoban_signaling_errors_total{code="bad_request",event="join"}' in text
    assert 'giaoban_signaling_errors_total{code="unknown_event",event="other"} 1.0' in text


async def test_a_failed_publish_leaves_no_half_published_state(node, peers, meeting):
    _publisher, sub = meeting
    bad = await peers("bad")
    await bad.join("safe")
    ack = await bad.request("publish", {"pc": "main", "sdp": GARBAGE_SDP})
    assert error_code(ack) == "bad_request"
    # A real publish afterwards works on the same connection name.
    result = await bad.publish([BarcodeVideoTrack(fps=10)])
    assert len(result["tracks"]) == 1
    await sub.wait_for(
        lambda: (
            len(sub.tracks_of("video")) == 2
            and all(len(t.frames) >= 5 for t in sub.tracks_of("video"))
        ),
        10,
        "both publishers' video at the subscriber",
    )
    await assert_still_flowing(sub)


async def test_disconnect_without_leave_cleans_up(node, peers, meeting):
    publisher, sub = meeting
    publisher_id = publisher.participant_id
    await publisher.sio.disconnect()
    left = await sub.wait_event("participant_left")
    assert left["participant_id"] == publisher_id
    await sub.wait_for(
        lambda: node.stats.peer_connections == 1, 5, "only the subscriber's connection left open"
    )


async def test_health_endpoints(node):
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/readyz"):
            async with http.get(node.url + path) as response:
                assert response.status == 200
                assert (await response.json())["status"] in ("ok", "ready")
        async with http.get(node.url + "/metrics") as response:
            text = await response.text()
            assert "giaoban_rooms 0.0" in text
            assert "giaoban_forwarded_packets_total 0.0" in text
