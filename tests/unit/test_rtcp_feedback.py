"""server/sfu/rtcp_feedback.py: what a subscriber's RTCP compound asks of the node."""

from __future__ import annotations

import random
import struct

from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSourceInfo,
    pack_remb_fci,
)

from server.sfu.rtcp_feedback import read_subscriber_rtcp


def xr(sender: int, *blocks: bytes) -> bytes:
    body = struct.pack("!I", sender) + b"".join(blocks)
    return struct.pack("!BBH", 0x80, 207, len(body) // 4) + body


def rrtr(seconds: int, fraction: int) -> bytes:
    return struct.pack("!BBHII", 4, 0, 2, seconds, fraction)


def other_block(block_type: int, words: int) -> bytes:
    return struct.pack("!BBH", block_type, 0, words) + bytes(4 * words)


def receiver_report(ssrc: int = 1) -> bytes:
    info = RtcpReceiverInfo(
        ssrc=77, fraction_lost=3, packets_lost=9, highest_sequence=1000, jitter=5, lsr=0, dlsr=0
    )
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, b"cname")])])
    return bytes(RtcpRrPacket(ssrc=ssrc, reports=[info])) + bytes(sdes)


def remb(bitrate: int, ssrcs: list[int]) -> bytes:
    return bytes(
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, ssrcs))
    )


def test_reports_and_descriptions_ask_for_nothing() -> None:
    read = read_subscriber_rtcp(receiver_report() + bytes(RtcpByePacket(sources=[1])))
    assert (read.reference_times, read.remb, read.for_aiortc) == ({}, [], False)


def test_remb_is_read_as_aiortc_reads_it() -> None:
    read = read_subscriber_rtcp(receiver_report() + remb(750_000, [11, 22]))
    assert not read.for_aiortc
    [(bitrate, ssrcs)] = read.remb
    assert ssrcs == [11, 22] and abs(bitrate - 750_000) < 750_000 * 0.01
    # Another application's message in a PSFB APP packet is not REMB, and asks for nothing.
    other = RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"junkjunk")
    read = read_subscriber_rtcp(bytes(other))
    assert (read.remb, read.for_aiortc) == ([], False)


def test_feedback_that_asks_for_action_goes_to_aiortc() -> None:
    for packet in (
        RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=5, lost=[3]),
        RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=5),
        RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=5, fci=bytes(8)),
    ):
        assert read_subscriber_rtcp(receiver_report() + bytes(packet)).for_aiortc, packet
    # A packet type not read here (APP, 204) too: aiortc decides what it is.
    app = struct.pack("!BBHI4s", 0x80, 204, 2, 1, b"name")
    assert read_subscriber_rtcp(app).for_aiortc


def test_the_rrtr_of_a_compound_is_found_with_its_compact_time() -> None:
    compound = receiver_report() + xr(1, rrtr(0xAAAA1234, 0x5678BBBB))
    read = read_subscriber_rtcp(compound)
    assert read.reference_times == {1: 0x12345678} and not read.for_aiortc
    # aiortc's own parser reads the same compound and skips the XR (why we read it ourselves).
    assert [type(p) for p in RtcpPacket.parse(compound)] == [RtcpRrPacket, RtcpSdesPacket]


def test_other_blocks_are_stepped_over_and_the_latest_time_counts() -> None:
    compound = xr(7, other_block(42, 3), rrtr(1, 0x00020000)) + xr(8, other_block(5, 3))
    assert read_subscriber_rtcp(compound).reference_times == {7: 0x00010002}
    stuffed = b"".join(xr(1, rrtr(0, n << 16)) for n in range(50)) + xr(2, rrtr(0, 7 << 16))
    assert read_subscriber_rtcp(stuffed).reference_times == {1: 49, 2: 7}


def test_malformed_parts_end_the_scan_without_error() -> None:
    good = xr(3, rrtr(1, 0))
    assert read_subscriber_rtcp(b"").reference_times == {}
    assert read_subscriber_rtcp(good[:-1]).reference_times == {}  # truncated packet
    assert read_subscriber_rtcp(good + good[:6]).reference_times == {3: 0x00010000}
    # A block claiming more than its packet holds.
    overlong = xr(3, struct.pack("!BBH", 4, 0, 9) + bytes(8))
    assert read_subscriber_rtcp(overlong).reference_times == {}
    # An RRTR block of the wrong size is not an RRTR.
    assert (
        read_subscriber_rtcp(xr(3, struct.pack("!BBH", 4, 0, 1) + bytes(4))).reference_times == {}
    )
    # A truncated NACK after a report: the scan ends before it.
    nack = bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=5, lost=[3]))
    assert not read_subscriber_rtcp(receiver_report() + nack[:-2]).for_aiortc
    rng = random.Random(3611)
    for _ in range(3000):
        read_subscriber_rtcp(bytes(rng.randrange(256) for _ in range(rng.randrange(60))))
