"""server/sfu/rtcp_xr.py: the DLRR answer (RFC 3611). Reading RRTR blocks from a compound is
tested through server/sfu/rtcp_feedback.py (tests/unit/test_rtcp_feedback.py)."""

from __future__ import annotations

import struct

from server.sfu.rtcp_xr import delay_since_last_rr


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
