"""The forwarding loop in C (server/sfu/_fanout.c) against the Python path it follows.

Each comparison runs the same upstream packets through fanout.forward (C) and through
fanout.python_forward (DownTrack.forward per down track) on real UDP sockets with real SRTP
sessions, and compares what every subscriber's socket received byte for byte, the NACK
history, the sender-report counts and the statistics.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import tracemalloc
from collections import Counter
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aioice.ice import StunProtocol
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import HeaderExtensionsMap

from server.sfu import fanout, rtp_rewrite
from server.sfu.aiortc_tap import ForwardingSender, SenderFeedback, SendParameters
from server.sfu.down_track import DownTrack
from server.sfu.rtp_header import ExtensionIds
from server.sfu.rtp_rewrite import (
    PacketHistory,
    PythonPacketHistory,
    PythonStreamRewriter,
    StreamRewriter,
)
from server.sfu.stats import SfuStats
from server.sfu.up_track import Outgoing, UpTrack
from tests.unit.test_forwarding_path import VP8, FakeDtls, FakeSender, drain


@pytest.mark.skipif(fanout.WANTED == "python", reason="GIAOBAN_FORWARDING_LOOP=python")
def test_the_c_loop_is_built() -> None:
    # giaoban.sh installs a C compiler and Python's headers; without them the node still
    # works, on the slower Python loop, and this test says so.
    assert fanout.NATIVE, "server/sfu/_fanout.c was not built: is gcc (and python3-dev) there?"
    assert rtp_rewrite.NATIVE_NUMBERING
    assert PacketHistory is not PythonPacketHistory


class Subscriber:
    """One subscriber: its socket, and a ForwardingSender whose nominated pair points there."""

    def __init__(self, udp: asyncio.DatagramTransport, protocol: Any) -> None:
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.bind(("127.0.0.1", 0))
        self.peer.setblocking(False)
        self.udp = udp
        pair = SimpleNamespace(protocol=protocol, remote_addr=self.peer.getsockname())
        self.dtls = FakeDtls(SimpleNamespace(_nominated={1: pair}))
        self.sender = FakeSender(self.dtls)
        feedback = SenderFeedback(
            on_nack=None,  # type: ignore[arg-type]
            on_keyframe_request=lambda: None,
            on_remb=lambda bitrate: None,
            on_started=lambda params: None,
        )
        self.forwarder = ForwardingSender(self.sender, feedback)  # type: ignore[arg-type]

    def received(self) -> list[bytes]:
        return drain(self.peer)

    def counts(self) -> tuple[int, int, int, int]:
        f = self.forwarder
        return f.packet_count, f.octet_count, f.rtp_timestamp, f.ntp_time


class Room:
    """An up track with `n` down tracks, each to its own subscriber socket."""

    def __init__(self, subscribers: list[Subscriber], ids: list[ExtensionIds]) -> None:
        self.stats = SfuStats()
        self.up = UpTrack("t", "p", "video", "camera", None, VP8, self.stats)  # type: ignore[arg-type]
        self.subscribers = subscribers
        self.downs = []
        for k, (sub, extension_ids) in enumerate(zip(subscribers, ids, strict=True)):
            down = DownTrack(
                self.up,
                sub.forwarder,
                StreamRewriter(90000, rng=random.Random(k)),
                PacketHistory(64),
                f"s{k}",
                self.stats,
            )
            params = SendParameters([VP8], HeaderExtensionsMap(), extension_ids, "0")
            down.start(params)
            self.downs.append(down)


@pytest.fixture
async def make_room() -> AsyncIterator[Callable[[list[ExtensionIds]], Any]]:
    loop = asyncio.get_running_loop()
    made: list[Subscriber] = []

    async def make(ids: list[ExtensionIds]) -> Room:
        subscribers = []
        for _ in ids:
            udp, protocol = await loop.create_datagram_endpoint(
                lambda: StunProtocol(None),  # type: ignore[arg-type]
                local_addr=("127.0.0.1", 0),
            )
            subscribers.append(Subscriber(udp, protocol))
        made.extend(subscribers)
        return Room(subscribers, ids)

    yield make
    for sub in made:
        sub.udp.close()
        sub.peer.close()


def upstream(rng: random.Random, count: int) -> list[dict[str, Any]]:
    """Upstream packets as they reach the node once duplicates are gone: in order mostly, some
    lost or swapped, markers, padding, large and small payloads, audio levels on some."""
    seqs = []
    seq = 65500  # wraps around
    for _ in range(count):
        seq = (seq + rng.choice((1, 1, 1, 1, 2))) & 0xFFFF
        seqs.append(seq)
    for k in range(1, count):
        if rng.random() < 0.1:
            seqs[k - 1], seqs[k] = seqs[k], seqs[k - 1]
    packets = []
    for k, seq in enumerate(seqs):
        packets.append(
            {
                "payload_type": 96,
                "marker": int(k % 5 == 4),
                "sequence_number": seq,
                "timestamp": (seq * 3000) & 0xFFFFFFFF,
                "payload": os.urandom(rng.choice((20, 300, 1100))),
                "padding_size": rng.choice((0, 0, 0, 7)),
                "keyframe": k == 0,
                "ntp_time": 1 << 40 | k,
                "abs_send_time": k & 0xFFFFFF,
                "audio_level": (True, k % 127) if k % 3 else None,
                "now": k / 30,
            }
        )
    return packets


# Eight subscribers in three extension layouts (ids and mid): three packet tails per packet.
IDS = [ExtensionIds(1, 2, 0)] * 3 + [ExtensionIds(3, 0, 4)] * 2 + [ExtensionIds()] * 3
LAYOUTS = 3


def count_calls(monkeypatch: pytest.MonkeyPatch, owner: type, *names: str) -> Counter[str]:
    """Count the calls of `owner`'s methods `names` (they still run) while the test runs."""
    calls: Counter[str] = Counter()
    for name in names:
        original = getattr(owner, name)

        def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
            calls[_name] += 1
            return _original(*args)

        monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.skipif(not fanout.NATIVE, reason="the C loop is not built")
async def test_the_c_loop_sends_what_the_python_path_sends(
    make_room: Callable[[list[ExtensionIds]], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    c_room, py_room = await make_room(IDS), await make_room(IDS)
    for room in (c_room, py_room):  # sender reports due every second, at staggered times
        for k, sub in enumerate(room.subscribers):
            sub.forwarder.start_reports(f"cname-{k}")
            sub.forwarder.report_at = 1.0 + k / 10
    calls = count_calls(monkeypatch, DownTrack, "forward", "_packet_tail")
    packets = upstream(random.Random(5), 200)
    # Loopback delivers during sendto: each packet is in the sockets when forward returns,
    # and is read at once (200 packets would overflow a socket's receive buffer).
    c_got: list[list[bytes]] = [[] for _ in IDS]
    py_got: list[list[bytes]] = [[] for _ in IDS]
    for fields in packets:
        assert fanout.forward(c_room.downs, Outgoing(**fields)) is None
        for got, sub in zip(c_got, c_room.subscribers, strict=True):
            got += sub.received()
    c_calls = calls.copy()
    calls.clear()
    for fields in packets:
        assert fanout.python_forward(py_room.downs, Outgoing(**fields)) is None
        for got, sub in zip(py_got, py_room.subscribers, strict=True):
            got += sub.received()

    for c_sub, py_sub, c_sent, py_sent in zip(
        c_room.subscribers, py_room.subscribers, c_got, py_got, strict=True
    ):
        assert len(py_sent) > 190  # a few swapped packets come too late to place
        assert c_sent == py_sent  # SRTP, the sender reports' SRTCP and all: byte for byte
        reports = [d for d in c_sent if d[1] == 200]  # an SR's header is not encrypted
        assert len(reports) in (5, 6), "one a second over 6.6 s of packets"
        assert c_sub.counts() == py_sub.counts()
    assert (c_room.stats.forwarded_packets, c_room.stats.forwarded_bytes) == (
        py_room.stats.forwarded_packets,
        py_room.stats.forwarded_bytes,
    )
    for c_down, py_down in zip(c_room.downs, py_room.downs, strict=True):
        for seq in range(65536):
            assert c_down._history.get(seq) == py_down._history.get(seq)
    # The C loop served the packets itself, but for starting each video down track at its
    # keyframe (the first packet); Python built each packet's tail once per extension layout.
    assert calls["forward"] == len(packets) * len(IDS)
    assert c_calls["forward"] == len(IDS)
    assert c_calls["_packet_tail"] == calls["_packet_tail"] == len(packets) * LAYOUTS


@pytest.mark.skipif(not fanout.NATIVE, reason="the C loop is not built")
async def test_the_c_loop_leaves_queued_closed_and_closing_paths_to_python(
    make_room: Callable[[list[ExtensionIds]], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    room = await make_room([ExtensionIds()] * 3)
    _, queued_sub, closing_sub = room.subscribers
    packets = iter(upstream(random.Random(1), 100))
    in_python: list[int] = []
    reference = DownTrack.forward

    def python_path(self: DownTrack, out: Outgoing) -> Any:
        in_python.append(room.downs.index(self))
        return reference(self, out)

    monkeypatch.setattr(DownTrack, "forward", python_path)

    def forward() -> list[int]:
        in_python.clear()
        assert fanout.forward(room.downs, Outgoing(**next(packets))) is None
        return list(in_python)

    assert forward() == [0, 1, 2]  # the keyframe starts each down track
    assert forward() == []
    assert [len(sub.received()) for sub in room.subscribers] == [2, 2, 2]

    # Something queued in asyncio's transport: the packet goes behind it, through asyncio.
    queued: list[bytes] = []
    with monkeypatch.context() as patch:
        patch.setattr(queued_sub.udp, "_buffer_size", 300)
        patch.setattr(queued_sub.udp, "sendto", lambda data, addr=None: queued.append(data))
        assert forward() == [1]
    assert [len(sub.received()) for sub in room.subscribers] == [1, 0, 1]
    assert len(queued) == 1

    # A connection that closes stops at once (its state comes by event), the others go on.
    queued_sub.dtls.set_state(DtlsState.CLOSED)
    dropped = room.stats.dropped_packets
    assert forward() == [1]
    assert [len(sub.received()) for sub in room.subscribers] == [1, 0, 1]
    assert room.stats.dropped_packets == dropped + 1

    # A transport that is closing is left to the Python path: its socket closes on the next
    # loop iteration and the descriptor may be reused, so the C loop never writes to it.
    closing_sub.udp.close()
    assert forward() == [1, 2]


@pytest.mark.skipif(not fanout.NATIVE, reason="the C loop is not built")
async def test_the_c_loop_follows_the_nominated_pair(
    make_room: Callable[[list[ExtensionIds]], Any],
) -> None:
    room = await make_room([ExtensionIds()])
    [sub] = room.subscribers
    packets = iter(upstream(random.Random(2), 200))
    fanout.forward(room.downs, Outgoing(**next(packets)))
    assert len(sub.received()) == 1
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    other.setblocking(False)
    try:
        nominated = sub.dtls.transport._connection._nominated
        nominated[1] = SimpleNamespace(
            protocol=nominated[1].protocol, remote_addr=other.getsockname()
        )
        for _ in range(ForwardingSender.PATH_CHECK_PACKETS + 1):
            fanout.forward(room.downs, Outgoing(**next(packets)))
        assert 0 < len(sub.received()) <= ForwardingSender.PATH_CHECK_PACKETS
        assert other.recv(2048)
    finally:
        other.close()


async def test_down_tracks_of_other_kinds_take_their_own_path() -> None:
    done: list[str] = []

    class Plain:
        def __init__(self, name: str, slow: bool) -> None:
            self.name, self.slow = name, slow

        def forward(self, out: Outgoing) -> Any:
            done.append(self.name)
            return asyncio.sleep(0) if self.slow else None

    downs = [Plain("a", False), Plain("b", True), Plain("c", False)]
    out = Outgoing(**upstream(random.Random(3), 1)[0])
    pending = fanout.forward(downs, out)
    assert done == ["a", "b", "c"]
    assert pending is not None and len(pending) == 1
    await pending[0]


@pytest.mark.parametrize("seed", range(6))
def test_numbering_in_c_and_python_agree(seed: int) -> None:
    rng = random.Random(seed)
    c_rewriter = StreamRewriter(48000, rng=random.Random(seed))
    py_rewriter = PythonStreamRewriter(48000, rng=random.Random(seed))
    seq, now = rng.randrange(65536), 0.0
    for _ in range(5000):
        move = rng.random()
        if move < 0.005:
            for r in (c_rewriter, py_rewriter):
                r.restart()
        if move < 0.01:
            seq = rng.randrange(65536)  # the publisher's numbering jumps
        elif move < 0.05:
            seq = (seq - rng.randrange(1, 2000)) & 0xFFFF  # late, maybe too late
        else:
            seq = (seq + rng.choice((1, 1, 1, 2, 3))) & 0xFFFF
        now += rng.choice((0.0, 0.02, 0.5))
        ts = (seq * 960 + rng.randrange(3)) & 0xFFFFFFFF
        assert c_rewriter.numbers(seq, ts, now) == py_rewriter.numbers(seq, ts, now)
    assert c_rewriter._last_in_seq == py_rewriter._last_in_seq


def test_packet_histories_in_c_and_python_agree() -> None:
    rng = random.Random(9)
    c_history, py_history = PacketHistory(16), PythonPacketHistory(16)
    for _ in range(2000):
        seq = rng.randrange(65536) if rng.random() < 0.1 else rng.randrange(40)
        if rng.random() < 0.5:
            item = (os.urandom(12), os.urandom(rng.randrange(50)))
            c_history.put(seq, item)
            py_history.put(seq, item)
        assert c_history.get(seq) == py_history.get(seq)
    with pytest.raises(ValueError):
        PacketHistory(0)


@pytest.mark.skipif(not fanout.NATIVE, reason="the C loop is not built")
async def test_the_c_loop_keeps_no_memory_per_packet(
    make_room: Callable[[list[ExtensionIds]], Any],
) -> None:
    # Each packet's tail is kept only by the histories (64 packets each here): a reference
    # leaked per packet or per subscriber would grow by about a kilobyte a packet.
    room = await make_room([ExtensionIds(1, 2, 0)] * 4)
    packets = upstream(random.Random(4), 3000)

    def forward(fields: dict[str, Any]) -> None:
        fanout.forward(room.downs, Outgoing(**fields))
        for sub in room.subscribers:
            sub.received()

    for fields in packets[:1000]:
        forward(fields)
    tracemalloc.start()
    try:
        for fields in packets[1000:2000]:
            forward(fields)
        before = tracemalloc.get_traced_memory()[0]
        for fields in packets[2000:]:
            forward(fields)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert room.stats.forwarded_packets >= 4 * 2900
    assert grown < 64 * 1024, f"{grown} bytes more after 1000 packets"
