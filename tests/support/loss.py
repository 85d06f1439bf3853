"""Packet loss at the node's UDP sockets: a drop hook on aioice, for loss tests.

Only SRTP/SRTCP datagrams are dropped (first byte 128–191, RFC 7983); ICE and DTLS pass, as
the connection must come up for there to be media to lose. The node is the only UDP user in a
browser test's process, so this drops publisher → node on receive (aioice's protocol) and
node → subscriber on send (asyncio's datagram transport, which both aiortc's path and the
forwarding fast path write through).
"""

from __future__ import annotations

import random
from asyncio.selector_events import _SelectorDatagramTransport
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aioice.ice import StunProtocol


def _is_media(data: bytes) -> bool:
    return bool(data) and 128 <= data[0] <= 191


@dataclass
class LossCounters:
    received: int = 0
    dropped_in: int = 0
    sent: int = 0
    dropped_out: int = 0


@contextmanager
def packet_loss(rate: float, seed: int = 7) -> Iterator[LossCounters]:
    """Drop `rate` of media datagrams in both directions while the context is open."""
    rng = random.Random(seed)
    counters = LossCounters()
    original_receive = StunProtocol.datagram_received
    original_sendto = _SelectorDatagramTransport.sendto

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        if _is_media(data):
            counters.received += 1
            if rng.random() < rate:
                counters.dropped_in += 1
                return None
        return original_receive(self, data, addr)

    def sendto(self, data, addr=None):  # type: ignore[no-untyped-def]
        if _is_media(data):
            counters.sent += 1
            if rng.random() < rate:
                counters.dropped_out += 1
                return None
        return original_sendto(self, data, addr)

    StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]
    _SelectorDatagramTransport.sendto = sendto  # type: ignore[method-assign]
    try:
        yield counters
    finally:
        StunProtocol.datagram_received = original_receive  # type: ignore[method-assign]
        _SelectorDatagramTransport.sendto = original_sendto  # type: ignore[method-assign]
