"""The per-packet forwarding path: DownTrack.forward and answer_nack, ForwardingSender.send_now.

send_now runs on a real asyncio UDP endpoint and real SRTP sessions; only the aiortc objects
around them (sender, DTLS and ICE transports, the nominated pair) are stand-ins with the fields
send_now reads.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pylibsrtp
import pytest
from aioice.ice import StunProtocol
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import (
    HeaderExtensionsMap,
    RtcpPacket,
    RtcpSdesPacket,
    RtcpSrPacket,
    RtpPacket,
)

from server.sfu.aiortc_tap import ForwardingSender, SenderFeedback, SendParameters
from server.sfu.down_track import DownTrack
from server.sfu.rtp_header import ExtensionIds, extension_block, rtp_packet
from server.sfu.rtp_rewrite import PacketHistory, StreamRewriter
from server.sfu.stats import SfuStats
from server.sfu.up_track import Outgoing, UpTrack

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
KEY = bytes(range(30))
SSRC = 4242


# -- DownTrack ----------------------------------------------------------------------------------


@dataclass
class RecordingForwarder:
    """ForwardingSender's interface to DownTrack, recording what it is given."""

    ssrc: int = SSRC
    sent: list[bytes] = field(default_factory=list)
    resent: list[bytes] = field(default_factory=list)

    def send_now(
        self,
        header: bytes,
        tail: bytes,
        timestamp: int,
        ntp_time: int,
        max_backlog: int,
        now: float,
    ) -> bool:
        self.sent.append(header + tail)
        return True

    direct: bool = True  # resend_now has a direct path (else: aiortc's, resend)

    def resend_now(self, data: bytes) -> bool:
        if self.direct:
            self.resent.append(data)
        return self.direct

    async def resend(self, data: bytes) -> None:
        self.resent.append(data)


def outgoing(seq: int, *, marker: int = 0, padding: int = 0, payload: bytes = b"") -> Outgoing:
    return Outgoing(
        payload_type=96,
        marker=marker,
        sequence_number=seq,
        timestamp=seq * 3000,
        payload=payload or bytes([seq & 0xFF]) * 40,
        padding_size=padding,
        keyframe=True,
        ntp_time=0,
        abs_send_time=seq,
        audio_level=None,
        now=seq / 30,
    )


def started_down_track(
    history_size: int = 8,
) -> tuple[DownTrack, RecordingForwarder, SfuStats]:
    stats = SfuStats()
    up = UpTrack("t", "p", "video", "camera", None, VP8, stats)  # type: ignore[arg-type]
    forwarder = RecordingForwarder()
    down = DownTrack(
        up,
        forwarder,  # type: ignore[arg-type]
        StreamRewriter(90000, rng=random.Random(7)),
        PacketHistory(history_size),
        "s",
        stats,
    )
    down.start(SendParameters([VP8], HeaderExtensionsMap(), ExtensionIds(1, 2, 0), "0"))
    return down, forwarder, stats


async def test_forward_writes_the_subscribers_header_and_counts() -> None:
    down, forwarder, stats = started_down_track()
    out = outgoing(100, marker=1)
    assert down.forward(out) is None
    [data] = forwarder.sent
    extensions = extension_block(ExtensionIds(1, 2, 0), b"0", 100, None)
    assert data[12 : 12 + len(extensions)] == extensions
    assert data[:2] == bytes([0x90, 0x80 | 96])
    assert int.from_bytes(data[8:12], "big") == SSRC
    assert data.endswith(out.payload)
    assert (stats.forwarded_packets, stats.forwarded_bytes) == (1, len(data))


async def test_nacked_packets_are_resent_exactly_as_sent() -> None:
    down, forwarder, _ = started_down_track()
    packets = [
        outgoing(10),
        outgoing(11, marker=1),
        outgoing(12, padding=4),
        outgoing(13, payload=os.urandom(1000)),
    ]
    for out in packets:
        down.forward(out)
    sent = {int.from_bytes(d[2:4], "big"): d for d in forwarder.sent}
    await down.answer_nack(list(sent))
    assert forwarder.resent == list(sent.values())
    # Each resent packet is the whole packet: header, extensions, payload and padding.
    padded = forwarder.sent[2]
    assert padded[0] & 0x20 and padded[-1] == 4 and padded.endswith(bytes(3) + b"\x04")


async def test_nacks_for_unknown_or_overwritten_packets_resend_nothing() -> None:
    down, forwarder, _ = started_down_track(history_size=4)
    for seq in range(20, 30):
        down.forward(outgoing(seq))
    numbers = [int.from_bytes(d[2:4], "big") for d in forwarder.sent]
    await down.answer_nack([numbers[0], numbers[5], (numbers[-1] + 1) & 0xFFFF])
    assert forwarder.resent == []
    await down.answer_nack([numbers[-1]])
    assert forwarder.resent == [forwarder.sent[-1]]


# -- ForwardingSender.send_now ------------------------------------------------------------------


class FakeSender:
    """The RTCRtpSender fields ForwardingSender uses."""

    def __init__(self, transport: Any) -> None:
        self._ssrc = SSRC
        self._rtx_ssrc = SSRC + 1
        self._RTCRtpSender__transport = transport
        self._RTCRtpSender__ntp_timestamp = 0
        self._RTCRtpSender__rtp_timestamp = 0
        self._RTCRtpSender__octet_count = 0
        self._RTCRtpSender__packet_count = 0
        self._RTCRtpSender__rtcp_started = asyncio.Event()
        self._RTCRtpSender__rtcp_exited = asyncio.Event()

    @property
    def transport(self) -> Any:
        return self._RTCRtpSender__transport

    async def send(self, parameters: Any) -> None:
        pass

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        pass


class FakeDtls:
    """The RTCDtlsTransport fields and event ForwardingSender uses."""

    def __init__(self, connection: Any) -> None:
        self._state = DtlsState.CONNECTED
        self.transport = SimpleNamespace(_connection=connection)
        self._tx_srtp = srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._handlers: list[Any] = []

    def on(self, event: str, handler: Any) -> None:
        assert event == "statechange"
        self._handlers.append(handler)

    def set_state(self, state: DtlsState) -> None:
        self._state = state
        for handler in self._handlers:
            handler()


def srtp_session(direction: int) -> pylibsrtp.Session:
    return pylibsrtp.Session(pylibsrtp.Policy(key=KEY, ssrc_type=direction))


@dataclass
class Path:
    forwarder: ForwardingSender
    sender: FakeSender
    dtls: FakeDtls
    udp: asyncio.DatagramTransport
    peer: socket.socket

    def peer_datagrams(self) -> list[bytes]:
        """What reached the subscriber's socket, as it came (SRTP and SRTCP)."""
        return drain(self.peer)

    def received(self) -> list[bytes]:
        rx = srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND)
        return [rx.unprotect(datagram) for datagram in drain(self.peer)]


def drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on a non-blocking socket."""
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


@pytest.fixture
async def path() -> AsyncIterator[Path]:
    loop = asyncio.get_running_loop()
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.setblocking(False)
    udp, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(None),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    pair = SimpleNamespace(protocol=protocol, remote_addr=peer.getsockname())
    connection = SimpleNamespace(_nominated={1: pair})
    dtls = FakeDtls(connection)
    sender = FakeSender(dtls)
    feedback = SenderFeedback(
        on_nack=None,  # type: ignore[arg-type]
        on_keyframe_request=lambda: None,
        on_remb=lambda bitrate: None,
        on_started=lambda params: None,
    )
    forwarder = ForwardingSender(sender, feedback)  # type: ignore[arg-type]
    yield Path(forwarder, sender, dtls, udp, peer)
    udp.close()
    peer.close()


def packet(seq: int, size: int = 200) -> bytes:
    return rtp_packet(96, 0, seq, seq * 3000, SSRC, b"", bytes([seq & 0xFF]) * size)


def send(
    forwarder: ForwardingSender,
    data: bytes,
    timestamp: int = 0,
    ntp_time: int = 0,
    backlog: int = 1 << 20,
    now: float = 0.0,
) -> bool | None:
    return forwarder.send_now(data[:12], data[12:], timestamp, ntp_time, backlog, now)


async def test_send_now_protects_sends_and_counts(path: Path) -> None:
    data = [packet(1), packet(2, 1100)]
    for k, d in enumerate(data):
        assert send(path.forwarder, d, 1000 + k, 77 + k) is True
    assert path.received() == data
    sender = path.sender
    assert sender._RTCRtpSender__packet_count == 2
    assert sender._RTCRtpSender__octet_count == sum(len(d) - 12 for d in data)
    assert (sender._RTCRtpSender__rtp_timestamp, sender._RTCRtpSender__ntp_timestamp) == (1001, 78)


async def test_a_sender_report_goes_with_the_packet_that_finds_it_due(path: Path) -> None:
    fwd = path.forwarder
    before = time.monotonic()
    fwd.start_reports("cname-1")
    assert before + 0.5 <= fwd.report_at <= time.monotonic() + 1.5, "first due in 0.5-1.5 s"
    fwd.report_at = 10.0
    send(fwd, packet(1), 1000, 77, now=9.99)
    assert len(path.peer_datagrams()) == 1, "not due yet: the packet alone"
    send(fwd, packet(2, 300), 4000, (5 << 32) | 6, now=10.0)
    rtp, srtcp = path.peer_datagrams()
    assert srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect(rtp) == packet(2, 300)
    report = srtp_session(pylibsrtp.Policy.SSRC_ANY_INBOUND).unprotect_rtcp(srtcp)
    sr, sdes = RtcpPacket.parse(report)
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == SSRC
    info = sr.sender_info
    assert (info.ntp_timestamp, info.rtp_timestamp) == ((5 << 32) | 6, 4000), "this packet's"
    assert (info.packet_count, info.octet_count) == (2, 200 + 300), "counted with this packet"
    assert isinstance(sdes, RtcpSdesPacket)
    assert sdes.chunks[0].ssrc == SSRC and sdes.chunks[0].items == [(1, b"cname-1")]
    # The next one a second later.
    assert fwd.report_at == 11.0
    send(fwd, packet(3), now=10.9)
    send(fwd, packet(4), now=11.0)
    assert [d[1] for d in path.peer_datagrams()] == [96, 96, 200]


async def test_no_sender_report_before_the_sender_starts(path: Path) -> None:
    send(path.forwarder, packet(1), now=1e9)
    assert len(path.peer_datagrams()) == 1


async def test_send_now_matches_session_protect(path: Path) -> None:
    data = packet(9, 700)
    expected = srtp_session(pylibsrtp.Policy.SSRC_ANY_OUTBOUND).protect(data)
    send(path.forwarder, data)
    assert path.peer.recv(2048) == expected


async def test_send_now_drops_over_the_backlog_and_queues_behind_one(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backlog = [300]
    monkeypatch.setattr(path.udp, "get_write_buffer_size", lambda: backlog[0])
    queued: list[bytes] = []
    monkeypatch.setattr(path.udp, "sendto", lambda d, addr=None: queued.append(d))
    assert send(path.forwarder, packet(1), backlog=299) is False  # slow: dropped
    assert queued == [] and path.sender._RTCRtpSender__packet_count == 0
    # Something queued in asyncio's transport: the packet goes behind it, through asyncio.
    assert send(path.forwarder, packet(2), backlog=300) is True
    assert len(queued) == 1 and path.received() == []
    backlog[0] = 0
    assert send(path.forwarder, packet(3), backlog=300) is True
    assert len(queued) == 1 and path.received() == [packet(3)]


async def test_a_socket_error_falls_back_to_asyncio(path: Path) -> None:
    send(path.forwarder, packet(1))
    assert path.received() == [packet(1)]

    class Refusing:
        def sendto(self, data: bytes, addr: object) -> int:
            raise BlockingIOError

    path.forwarder._socket = Refusing()
    assert send(path.forwarder, packet(2)) is True
    assert path.received() == [packet(2)]  # asyncio's sendto sent it


async def test_send_now_follows_the_nominated_pair_and_connection_state(path: Path) -> None:
    send(path.forwarder, packet(1))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    try:
        nominated = path.dtls.transport._connection._nominated
        nominated[1] = SimpleNamespace(
            protocol=nominated[1].protocol, remote_addr=other.getsockname()
        )
        # The nominated pair is looked at every PATH_CHECK_PACKETS packets, not per packet.
        every = ForwardingSender.PATH_CHECK_PACKETS
        for seq in range(2, 2 + every):
            send(path.forwarder, packet(seq))
        assert len(other.recv(2048)) > len(packet(2))
        assert [p[2:4] for p in path.received()] == [packet(s)[2:4] for s in range(1, 1 + every)]

        nominated[1] = SimpleNamespace(protocol=object(), remote_addr=other.getsockname())
        results = [send(path.forwarder, packet(seq)) for seq in range(100, 100 + every)]
        assert results[-1] is None  # TURN: aiortc's path
        nominated.clear()
        with pytest.raises(ConnectionError):
            for seq in range(200, 200 + every):
                send(path.forwarder, packet(seq))
        # A connection that closes stops sending at once (its state comes by event).
        nominated[1] = SimpleNamespace(
            protocol=path.udp.get_protocol(), remote_addr=other.getsockname()
        )
        send(path.forwarder, packet(300))
        path.dtls.set_state(DtlsState.CLOSED)
        with pytest.raises(ConnectionError):
            send(path.forwarder, packet(301))
    finally:
        other.close()


# -- ForwardingSender.resend_now ----------------------------------------------------------------


VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
VP8_RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
)


def started(forwarder: ForwardingSender, rtx: dict[int, int]) -> None:
    """As if aiortc had started the sender with these codecs (no header extensions)."""
    forwarder.parameters = SendParameters(
        codecs=[VP8, VP8_RTX] if rtx else [VP8],
        header_extensions=HeaderExtensionsMap(),
        extension_ids=ExtensionIds(0, 0, 0),
        mid="0",
        rtx_payload_types=rtx,
    )


async def test_resend_now_sends_the_packet_again_at_once(path: Path) -> None:
    assert path.forwarder.resend_now(packet(5)) is True  # not started: nothing to resend
    assert path.peer_datagrams() == []
    started(path.forwarder, {})
    data = [packet(7), packet(8, 1100)]
    assert all(path.forwarder.resend_now(d) for d in data)
    assert path.received() == data  # protected as send_now protects
    # A retransmission is not a new packet: the sender reports' counts stay.
    assert path.sender._RTCRtpSender__packet_count == 0


async def test_resend_now_wraps_as_rtx_when_negotiated(path: Path) -> None:
    started(path.forwarder, {96: 97})
    original = packet(4000, 300)
    assert path.forwarder.resend_now(original) and path.forwarder.resend_now(original)
    first, second = (RtpPacket.parse(d) for d in path.received())
    expected = RtpPacket.parse(original)
    assert (first.payload_type, first.ssrc) == (97, path.sender._rtx_ssrc)
    assert first.payload[:2] == (4000).to_bytes(2, "big")  # the original sequence number
    assert first.payload[2:] == expected.payload
    assert first.timestamp == expected.timestamp
    assert (second.sequence_number - first.sequence_number) % 65536 == 1


async def test_resend_now_leaves_turn_to_aiortc_and_refuses_when_down(path: Path) -> None:
    started(path.forwarder, {})
    nominated = path.dtls.transport._connection._nominated
    nominated[1] = SimpleNamespace(protocol=object(), remote_addr=nominated[1].remote_addr)
    assert path.forwarder.resend_now(packet(1)) is False  # a TURN path: resend's job
    assert path.peer_datagrams() == []
    nominated.clear()
    with pytest.raises(ConnectionError):
        path.forwarder.resend_now(packet(2))


async def test_a_nack_over_turn_is_answered_through_aiortcs_path() -> None:
    down, forwarder, _ = started_down_track()
    down.forward(outgoing(40))
    forwarder.direct = False
    await down.answer_nack([int.from_bytes(forwarder.sent[0][2:4], "big")])
    assert forwarder.resent == forwarder.sent
