"""What a subscriber's RTCP compound asks of the node, read without aiortc's parser.

A subscriber sends receiver reports about once a second per stream, and REMB and extended
reports alongside: on a node with many subscribers most of its RTCP is these, and none of it
needs aiortc (nothing here reads the statistics aiortc would build from a receiver report).
Reading the compound's headers is enough to answer them; what asks for action the node takes
through aiortc's handlers (NACK, PLI, FIR, and any packet type not read here) is flagged so
the whole compound goes to aiortc as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from struct import Struct

from aiortc.rtp import unpack_remb_fci

from server.sfu import rtcp_xr

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
RTCP_PSFB = 206
PSFB_APP = 15  # application layer feedback: REMB
# Reports and descriptions: for statistics the node does not keep.
_NOTHING_TO_DO = frozenset({RTCP_SR, RTCP_RR, RTCP_SDES, RTCP_BYE})
_HEADER = Struct("!BBH")


@dataclass
class SubscriberRtcp:
    """One compound from a subscriber: what the node answers itself, and whether aiortc must
    see it."""

    reference_times: dict[int, int] = field(default_factory=dict)  # receiver SSRC -> RRTR
    remb: list[tuple[int, list[int]]] = field(default_factory=list)  # (bits/s, media SSRCs)
    for_aiortc: bool = False  # NACK, PLI, FIR or a packet type not read here


def read_subscriber_rtcp(compound: bytes) -> SubscriberRtcp:
    """Read a decrypted RTCP compound. Malformed or truncated parts end the scan: what came
    before them is kept (aiortc's parser would refuse the whole compound)."""
    read = SubscriberRtcp()
    pos = 0
    size = len(compound)
    while pos + 4 <= size:
        first, packet_type, words = _HEADER.unpack_from(compound, pos)
        end = pos + 4 * (words + 1)
        if end > size:
            break
        if packet_type == rtcp_xr.RTCP_XR:
            # One answer per receiver and compound: the latest reference time counts.
            read.reference_times.update(rtcp_xr.reference_times_in(compound, pos, end))
        elif packet_type == RTCP_PSFB and first & 0x1F == PSFB_APP:
            if end - pos >= 12:
                try:
                    bitrate, ssrcs = unpack_remb_fci(compound[pos + 12 : end])
                except ValueError:
                    pass  # another application's message, as aiortc ignores it
                else:
                    read.remb.append((bitrate, list(ssrcs)))
        elif packet_type not in _NOTHING_TO_DO:
            read.for_aiortc = True
        pos = end
    return read
