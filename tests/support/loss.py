"""Packet loss at the node's UDP sockets: drop hooks where the node reads and writes them.

Only SRTP/SRTCP datagrams are dropped (first byte 128–191, RFC 7983); ICE and DTLS pass, as
the connection must come up for there to be media to lose. The node is the only UDP user in a
browser test's process, so this drops publisher → node on receive (aioice's protocol; the
subscriber's RTCP that a C Reader reads where it arrives, through aiortc_tap.set_receive_filter)
and node → subscriber on send: at Python's socket.sendto, which aiortc's path (through
asyncio's transport) and send_now write through, and at the forwarding loop in C, which calls
the system's sendto itself and so takes a filter (fanout.set_send_filter) for this.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aioice.ice import StunProtocol

from server.sfu import aiortc_tap, fanout


def _is_media(data: bytes) -> bool:
    return bool(data) and 128 <= data[0] <= 191


@dataclass
class LossCounters:
    received: int = 0
    dropped_in: int = 0
    sent: int = 0
    dropped_out: int = 0


def _arrival_losses(
    rate: float, rng: random.Random, counters: LossCounters
) -> Callable[[bytes], bool]:
    """True for `rate` of the media datagrams it is given (lost on arrival), counted."""

    def lost_on_arrival(data: bytes) -> bool:
        if not _is_media(data):
            return False
        counters.received += 1
        if rng.random() < rate:
            counters.dropped_in += 1
            return True
        return False

    return lost_on_arrival


@contextmanager
def packet_loss(rate: float, seed: int = 7) -> Iterator[LossCounters]:
    """Drop `rate` of media datagrams in both directions while the context is open."""
    rng = random.Random(seed)
    counters = LossCounters()
    original_receive = StunProtocol.datagram_received
    original_sendto = socket.socket.sendto

    lost_on_arrival = _arrival_losses(rate, rng, counters)

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        if lost_on_arrival(data):
            return None
        return original_receive(self, data, addr)

    def lost(data: bytes) -> bool:
        if not _is_media(data):
            return False
        counters.sent += 1
        if rng.random() < rate:
            counters.dropped_out += 1
            return True
        return False

    def sendto(self, data, *args):  # type: ignore[no-untyped-def]
        if lost(data):
            return len(data)  # as sent, as far as the sender can tell
        return original_sendto(self, data, *args)

    StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]
    socket.socket.sendto = sendto  # type: ignore[method-assign]
    fanout.set_send_filter(lost)
    aiortc_tap.set_receive_filter(lost_on_arrival)
    try:
        yield counters
    finally:
        StunProtocol.datagram_received = original_receive  # type: ignore[method-assign]
        socket.socket.sendto = original_sendto  # type: ignore[method-assign]
        fanout.set_send_filter(None)
        aiortc_tap.set_receive_filter(None)


@contextmanager
def slow_link(delay_ms: float, rate: float, seed: int = 11) -> Iterator[LossCounters]:
    """Every datagram aioice's protocols receive arrives `delay_ms` late, and `rate` of the
    media ones not at all, while the context is open: with the node and aiortc peers in one
    process, a link with a round trip of twice `delay_ms` between each peer and the node
    (but for a subscriber's RTCP after its first report, which the node reads in C)."""
    counters = LossCounters()
    original_receive = StunProtocol.datagram_received
    delay = delay_ms / 1000

    lost_on_arrival = _arrival_losses(rate, random.Random(seed), counters)

    def datagram_received(self, data, addr):  # type: ignore[no-untyped-def]
        if lost_on_arrival(data):
            return
        asyncio.get_running_loop().call_later(delay, original_receive, self, data, addr)

    StunProtocol.datagram_received = datagram_received  # type: ignore[method-assign]
    try:
        yield counters
    finally:
        StunProtocol.datagram_received = original_receive  # type: ignore[method-assign]
