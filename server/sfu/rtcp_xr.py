"""RTCP extended reports (RFC 3611) for a subscriber's round-trip time: aiortc parses none.

A browser that only receives (our down connection) has no sender reports of its own to time,
so it does not know its round-trip time and asks again for a lost packet only every 100 ms
(libwebrtc's default), whatever the link: one lost NACK or retransmission then freezes the
picture for about 200 ms. When the offer lists `rrtr` for a video codec, Chromium sends a
receiver reference time (RRTR, §4.4) with its reports; the node answers each one with the
delay since it arrived (DLRR, §4.5), from which the browser computes the round-trip time and
re-asks after that instead.
"""

from __future__ import annotations

from struct import Struct

RTCP_XR = 207
_RRTR = 4
_DLRR = 5
_HEADER = Struct("!BBH")
_SSRC = Struct("!I")
_NTP = Struct("!II")
_DLRR_PACKET = Struct("!BBHIBBHIII")


def reference_times_in(compound: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(sender SSRC, compact NTP time) of the RRTR blocks of the XR packet that fills
    compound[start:end]."""
    found: list[tuple[int, int]] = []
    if end - start < 8:
        return found
    (sender,) = _SSRC.unpack_from(compound, start + 4)
    block = start + 8
    while block + 4 <= end:
        block_type, _, block_words = _HEADER.unpack_from(compound, block)
        block_end = block + 4 * (block_words + 1)
        if block_end > end:
            break
        if block_type == _RRTR and block_words == 2:
            seconds, fraction = _NTP.unpack_from(compound, block + 4)
            found.append((sender, ((seconds & 0xFFFF) << 16) | (fraction >> 16)))
        block = block_end
    return found


def delay_since_last_rr(sender_ssrc: int, receiver_ssrc: int, last_rr: int, delay: float) -> bytes:
    """An XR packet with one DLRR sub-block: `delay` seconds since `receiver_ssrc`'s RRTR."""
    units = min(int(delay * 65536), 0xFFFFFFFF)
    return _DLRR_PACKET.pack(
        0x80, RTCP_XR, 5, sender_ssrc, _DLRR, 0, 3, receiver_ssrc, last_rr & 0xFFFFFFFF, units
    )
