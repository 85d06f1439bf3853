"""server/sfu/rtcp_xr.py: reading RRTR blocks and writing the DLRR answer (RFC 3611)."""

from __future__ import annotations

import random
import struct

from aiortc.rtp import RtcpPacket, RtcpRrPacket, RtcpSdesPacket

from server.sfu.rtcp_xr import delay_since_last_rr, receiver_reference_times


def xr(sender: int, *blocks: bytes) -> bytes:
    body = struct.pack("!I", sender) + b"".join(blocks)
    return struct.pack("!BBH", 0x80, 207, len(body) // 4) + body


def rrtr(seconds: int, fraction: int) -> bytes:
    return struct.pack("!BBHII", 4, 0, 2, seconds, fraction)


def other_block(block_type: int, words: int) -> bytes:
    return struct.pack("!BBH", block_type, 0, words) + bytes(4 * words)


def test_the_rrtr_of_a_compound_is_found_with_its_compact_time() -> None:
    compound = (
        bytes(RtcpRrPacket(ssrc=1, reports=[]))
        + bytes(RtcpSdesPacket(chunks=[]))
        + xr(1, rrtr(0xAAAA1234, 0x5678BBBB))
    )
    assert receiver_reference_times(compound) == [(1, 0x12345678)]
    # aiortc's own parser reads the same compound and skips the XR (why we read it ourselves).
    assert [type(p) for p in RtcpPacket.parse(compound)] == [RtcpRrPacket, RtcpSdesPacket]


def test_other_blocks_and_packets_are_stepped_over() -> None:
    compound = xr(7, other_block(42, 3), rrtr(1, 0x00020000)) + xr(8, other_block(5, 3))
    assert receiver_reference_times(compound) == [(7, 0x00010002)]
    assert receiver_reference_times(bytes(RtcpRrPacket(ssrc=1, reports=[]))) == []


def test_malformed_parts_end_the_scan_without_error() -> None:
    good = xr(3, rrtr(1, 0))
    assert receiver_reference_times(b"") == []
    assert receiver_reference_times(good[:-1]) == []  # truncated packet
    assert receiver_reference_times(good + good[:6]) == [(3, 0x00010000)]  # truncated second
    # A block claiming more than its packet holds.
    overlong = xr(3, struct.pack("!BBH", 4, 0, 9) + bytes(8))
    assert receiver_reference_times(overlong) == []
    # An RRTR block of the wrong size is not an RRTR.
    assert receiver_reference_times(xr(3, struct.pack("!BBH", 4, 0, 1) + bytes(4))) == []
    rng = random.Random(3611)
    for _ in range(2000):
        receiver_reference_times(bytes(rng.randrange(256) for _ in range(rng.randrange(40))))


def test_the_dlrr_lets_the_browser_compute_its_round_trip_time() -> None:
    packet = delay_since_last_rr(5555, 1, 0x12345678, 0.25)
    assert len(packet) == 24
    first, pt, words, sender, block, _, block_words, receiver, last_rr, delay = struct.unpack(
        "!BBHIBBHIII", packet
    )
    assert (first >> 6, pt, words, sender) == (2, 207, 5, 5555)
    assert (block, block_words, receiver, last_rr) == (5, 3, 1, 0x12345678)
    assert delay == 0x4000  # a quarter second in 1/65536 s
    # As libwebrtc computes it: arrival (compact NTP) - delay - last RR = the round trip.
    arrival = 0x12345678 + 0x4000 + 0x0CCD  # 50 ms of network after 250 ms at the node
    assert abs((arrival - delay - last_rr) / 65536 - 0.05) < 0.001


def test_an_absurd_delay_is_clamped_to_the_field() -> None:
    packet = delay_since_last_rr(1, 2, 3, 1e9)
    assert struct.unpack_from("!I", packet, 20) == (0xFFFFFFFF,)
