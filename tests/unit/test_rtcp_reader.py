"""server/sfu/_rtcp_reader.c: a subscriber's RTCP read in C on its pair's socket.

Real sockets over loopback: aioice's StunProtocol as the nominated pair's, on asyncio's
datagram transport, and the subscriber's own UDP socket sending SRTCP to it. The transport's
SRTP sessions are keyed by hand (no DTLS handshake); aiortc's DTLS task does not run, so
what aioice queues for it stays in the queue, where the tests read it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import socket
import struct
from collections.abc import AsyncIterator

import pylibsrtp
import pytest
from aioice import Candidate
from aioice.ice import CandidatePair, StunProtocol
from aiortc import RTCCertificate, RTCDtlsTransport, RTCIceGatherer, RTCIceTransport, RTCRtpSender
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
)

from server.sfu import aiortc_tap, rtcp_feedback
from server.sfu.aiortc_tap import ForwardingSender
from tests.unit.test_aiortc_tap import (
    Feedback,
    SubscriberWire,
    record_aiortc_handling,
    reference_time_report,
)

pytestmark = pytest.mark.skipif(
    not aiortc_tap.RTCP_IN_C, reason="the RTCP reader in C is not built or not chosen"
)

# A DTLS application-data record: not SRTCP, so always handed to aioice's protocol.
MARKER = bytes([23, 0xFE, 0xFD]) + bytes(20)


@pytest.fixture(scope="module")
def certificate() -> RTCCertificate:
    return RTCCertificate.generateCertificate()


@pytest.fixture
async def dtls(certificate: RTCCertificate) -> RTCDtlsTransport:
    return RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [certificate])


@pytest.fixture
def wire(dtls: RTCDtlsTransport, monkeypatch: pytest.MonkeyPatch) -> SubscriberWire:
    return SubscriberWire(dtls, monkeypatch)


class SocketWire:
    """A wire whose connection has a nominated pair on a real socket, and the subscriber's
    socket that sends to it."""

    def __init__(
        self, wire: SubscriberWire, udp: asyncio.DatagramTransport, protocol: StunProtocol
    ) -> None:
        self.wire = wire
        self.udp = udp
        self.protocol = protocol
        self.address = udp.get_extra_info("sockname")
        self.subscriber = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.subscriber.bind(("127.0.0.1", 0))

    def send(self, datagram: bytes) -> None:
        self.subscriber.sendto(datagram, self.address)

    def send_rtcp(self, compound: bytes) -> None:
        self.send(self.wire.protect(compound))

    async def next_queued(self) -> bytes:
        """The next datagram aioice queued for aiortc's DTLS task."""
        data, _component = await asyncio.wait_for(self.wire.connection._queue.get(), 5)
        return data

    async def through(self) -> None:
        """Until all sent before has been read: a marker sent last is queued after them (one
        socket, read in order)."""
        self.send(MARKER)
        assert await self.next_queued() == MARKER

    async def reader_taken(self) -> object:
        """Send the first report, which the Python lane reads and then hands the socket to a
        Reader; return it."""
        aiortc_tap.take_subscriber_rtcp(self.wire.dtls, 5555, video=True)
        self.send_rtcp(receiver_report())
        await self.through()
        reader = self.wire.dtls._giaoban_subscriber_rtcp.reader
        assert reader, "a C Reader reads the pair's socket after the first report"
        return reader

    def rx_packets(self) -> int:
        return self.wire.dtls._RTCDtlsTransport__rx_packets

    def rx_bytes(self) -> int:
        return self.wire.dtls._RTCDtlsTransport__rx_bytes


@pytest.fixture
async def on_socket(wire: SubscriberWire) -> AsyncIterator[SocketWire]:
    loop = asyncio.get_running_loop()
    udp, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(wire.connection), local_addr=("127.0.0.1", 0)
    )
    protocol.local_candidate = Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
    remote = Candidate("2", 1, "udp", 1, "127.0.0.1", 9, "host")
    wire.connection._nominated[1] = CandidatePair(protocol, remote)
    on = SocketWire(wire, udp, protocol)
    yield on
    on.subscriber.close()
    udp.close()


def receiver_report(ssrc: int = 1) -> bytes:
    sdes = RtcpSdesPacket(chunks=[RtcpSourceInfo(ssrc=ssrc, items=[(1, b"cname")])])
    return bytes(RtcpRrPacket(ssrc=ssrc, reports=[])) + bytes(sdes)


def loop_reader(on_socket: SocketWire) -> object:
    """The callback the event loop runs when the pair's socket is readable."""
    key = asyncio.get_running_loop()._selector.get_key(on_socket.udp._sock_fd)  # type: ignore[attr-defined]
    return key.data[0]._callback


async def test_reports_end_in_c_counted_in_aiortcs_statistics(
    on_socket: SocketWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = on_socket.wire
    handled = record_aiortc_handling(wire.dtls, monkeypatch)
    reader = await on_socket.reader_taken()
    assert loop_reader(on_socket) == reader.read_ready and reader.ended == 0
    packets, octets = on_socket.rx_packets(), on_socket.rx_bytes()
    info = RtcpSenderInfo(ntp_timestamp=1, rtp_timestamp=2, packet_count=3, octet_count=4)
    sender_report = bytes(RtcpSrPacket(ssrc=1, sender_info=info)) + bytes(
        RtcpByePacket(sources=[1])
    )
    # Each protected anew: libsrtp refuses a replayed index.
    sent = [wire.protect(c) for c in (receiver_report(), receiver_report(), sender_report)]
    for datagram in sent:
        on_socket.send(datagram)
    await on_socket.through()
    assert reader.ended == 3
    assert on_socket.rx_packets() == packets + 3
    assert on_socket.rx_bytes() == octets + sum(map(len, sent))
    await wire.settled()
    assert (handled, wire.sent) == ([], []), "nothing reached aiortc, nothing was answered"


async def test_feedback_comes_back_to_the_lane_decrypted(
    on_socket: SocketWire, dtls: RTCDtlsTransport
) -> None:
    wire = on_socket.wire
    feedback = Feedback()
    fwd = ForwardingSender(RTCRtpSender("video", dtls), feedback.as_feedback())
    dtls._rtp_router.register_sender(fwd.sender, fwd.ssrc)
    reader = await on_socket.reader_taken()
    remb = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(750_000, [fwd.ssrc])
    )
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=fwd.ssrc, lost=[5, 7])
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=fwd.ssrc)
    on_socket.send_rtcp(receiver_report() + bytes(remb))
    on_socket.send_rtcp(receiver_report() + bytes(nack))
    on_socket.send_rtcp(bytes(pli))
    on_socket.send_rtcp(reference_time_report(1, 0x12345678, 0x9ABCDEF0))
    await on_socket.through()
    await wire.settled()
    assert len(feedback.rembs) == 1 and abs(feedback.rembs[0] - 750_000) < 7_500
    assert feedback.nacks == [[5, 7]] and feedback.keyframe_requests == 1
    ((_, pt, _, sender, _, _, _, receiver, last_rr, _),) = (
        struct.unpack("!BBHIBBHIII", reply) for reply in wire.sent
    )
    assert (pt, sender, receiver, last_rr) == (207, 5555, 1, 0x56789ABC), "DLRR answered"
    assert reader.ended == 0


async def test_other_datagrams_reach_aioices_protocol_with_their_address(
    on_socket: SocketWire,
) -> None:
    await on_socket.reader_taken()
    got: list[tuple[bytes, object]] = []
    arrived = asyncio.Event()

    def datagram_received(data: bytes, addr: object) -> None:
        got.append((data, addr))
        if len(got) == 3:
            arrived.set()

    on_socket.protocol.datagram_received = datagram_received  # type: ignore[method-assign]
    rtp = on_socket.wire.subscriber.protect(
        RtpPacket(payload_type=96, sequence_number=1, ssrc=7, payload=b"x").serialize()
    )
    binding_request = bytes.fromhex("0001000021a442") + bytes(13)
    for datagram in (MARKER, rtp, binding_request):
        on_socket.send(datagram)
    await asyncio.wait_for(arrived.wait(), 5)
    sender = on_socket.subscriber.getsockname()
    assert got == [(MARKER, sender), (rtp, sender), (binding_request, sender)]


async def test_srtcp_goes_to_aioice_once_the_transport_is_not_connected(
    on_socket: SocketWire,
) -> None:
    reader = await on_socket.reader_taken()
    on_socket.wire.dtls._set_state(DtlsState.CLOSED)
    report = on_socket.wire.protect(receiver_report())
    on_socket.send(report)
    assert await on_socket.next_queued() == report, "as the Python lane hands it on"
    assert reader.ended == 0


async def test_a_datagram_that_does_not_authenticate_is_dropped(
    on_socket: SocketWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = record_aiortc_handling(on_socket.wire.dtls, monkeypatch)
    reader = await on_socket.reader_taken()
    policy = pylibsrtp.Policy
    stranger = pylibsrtp.Session(policy(key=bytes(30), ssrc_type=policy.SSRC_ANY_OUTBOUND))
    on_socket.send(stranger.protect_rtcp(receiver_report()))
    on_socket.send(stranger.protect_rtcp(reference_time_report(1, 1, 2)))
    await on_socket.through()  # nothing queued before the marker
    await on_socket.wire.settled()
    assert reader.ended == 0 and handled == [] and on_socket.wire.sent == []


async def test_the_loss_filter_sees_srtcp_read_in_c(on_socket: SocketWire) -> None:
    reader = await on_socket.reader_taken()
    seen: list[bytes] = []
    report = on_socket.wire.protect(receiver_report())
    aiortc_tap.set_receive_filter(lambda data: seen.append(data) or len(seen) == 1)
    try:
        on_socket.send(report)  # dropped by the filter
        on_socket.send(on_socket.wire.protect(receiver_report()))
        await on_socket.through()
    finally:
        aiortc_tap.set_receive_filter(None)
    assert len(seen) == 2 and seen[0] == report, "the marker is not SRTCP: not filtered here"
    assert reader.ended == 1


async def test_closing_the_socket_takes_the_reader_away(on_socket: SocketWire) -> None:
    await on_socket.reader_taken()
    fd = on_socket.udp._sock_fd  # type: ignore[attr-defined]
    on_socket.udp.close()
    with pytest.raises(KeyError):
        asyncio.get_running_loop()._selector.get_key(fd)  # type: ignore[attr-defined]


async def test_no_reader_for_a_pair_that_is_not_a_plain_udp_socket(
    wire: SubscriberWire,
) -> None:
    class RelayedProtocol:  # what aioice uses for a pair through TURN
        transport = None

    remote = Candidate("2", 1, "udp", 1, "127.0.0.1", 9, "host")
    wire.connection._nominated[1] = CandidatePair(RelayedProtocol(), remote)  # type: ignore[arg-type]
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 5555, video=True)
    wire.receive(wire.protect(receiver_report()))
    lane = wire.dtls._giaoban_subscriber_rtcp
    assert lane.reader is False, "looked at once, and the Python lane stays"


def random_compound(rng: random.Random) -> bytes:
    """RTCP packets of every kind a subscriber might send, and some broken ones."""
    parts = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["rr", "sr", "sdes", "bye", "remb", "nack", "pli", "xr", "app", "bad"])
        if kind == "rr":
            parts.append(bytes(RtcpRrPacket(ssrc=rng.getrandbits(32), reports=[])))
        elif kind == "sr":
            info = RtcpSenderInfo(ntp_timestamp=1, rtp_timestamp=2, packet_count=3, octet_count=4)
            parts.append(bytes(RtcpSrPacket(ssrc=1, sender_info=info)))
        elif kind == "sdes":
            chunk = RtcpSourceInfo(ssrc=1, items=[(1, rng.randbytes(rng.randint(1, 30)))])
            parts.append(bytes(RtcpSdesPacket(chunks=[chunk])))
        elif kind == "bye":
            parts.append(bytes(RtcpByePacket(sources=[rng.getrandbits(32)])))
        elif kind == "remb":
            fci = pack_remb_fci(rng.randint(1, 10**7), [rng.getrandbits(32)])
            parts.append(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=fci)))
        elif kind == "nack":
            parts.append(
                bytes(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=2, lost=[3]))
            )
        elif kind == "pli":
            parts.append(bytes(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=2)))
        elif kind == "xr":
            parts.append(reference_time_report(rng.getrandbits(32), 1, 2)[8:])
        elif kind == "app":
            parts.append(struct.pack("!BBHI4s", 0x80, 204, 2, 1, b"name"))
        else:  # a length past the end, a wrong version, or a stray byte
            broken = bytearray(bytes(RtcpRrPacket(ssrc=1, reports=[])))
            # (not the first packet's version: the datagram would not be SRTCP at all)
            damage = rng.choice(["length", "version", "tail"] if parts else ["length", "tail"])
            if damage == "length":
                broken[3] += 5
            elif damage == "version":
                broken[0] &= 0x3F
            else:
                broken.append(0)
            parts.append(bytes(broken))
    return b"".join(parts)


def nothing_to_do(read: rtcp_feedback.SubscriberRtcp) -> bool:
    return not (read.reference_times or read.remb or read.for_aiortc)


async def test_c_ends_only_what_the_python_reader_finds_nothing_to_do_in(
    on_socket: SocketWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_aiortc_handling(on_socket.wire.dtls, monkeypatch)
    came_back: list[bytes] = []
    read_compound = aiortc_tap._SubscriberRtcp.read_compound

    def recording(self, compound: bytes, arrived: float) -> None:  # type: ignore[no-untyped-def]
        came_back.append(compound)
        read_compound(self, compound, arrived)

    # Before the Reader is made: it is given the lane's (recording) read_compound.
    monkeypatch.setattr(aiortc_tap._SubscriberRtcp, "read_compound", recording)
    reader = await on_socket.reader_taken()
    came_back.clear()
    rng = random.Random(11)
    compounds = [random_compound(rng) for _ in range(300)]
    for start in range(0, len(compounds), 20):  # not more than the socket's buffer holds
        for compound in compounds[start : start + 20]:
            on_socket.send_rtcp(compound)
        await on_socket.through()
    await on_socket.wire.settled()
    assert reader.ended + len(came_back) == len(compounds)
    ended = [c for c in compounds if c not in came_back]
    assert all(nothing_to_do(rtcp_feedback.read_subscriber_rtcp(c)) for c in ended)
    acted_on = [c for c in compounds if not nothing_to_do(rtcp_feedback.read_subscriber_rtcp(c))]
    assert all(c in came_back for c in acted_on), "all that asks for something reaches Python"
    assert reader.ended >= 20 and len(acted_on) >= 100  # both kinds were in the mix


def test_a_receive_error_goes_to_the_protocol_as_asyncio_hands_it(dtls: RTCDtlsTransport) -> None:
    class Protocol:
        def __init__(self) -> None:
            self.errors: list[OSError] = []

        def error_received(self, exc: OSError) -> None:
            self.errors.append(exc)

    protocol = Protocol()
    read_end, write_end = os.pipe()  # not a socket: recvfrom fails with ENOTSOCK
    try:
        reader = aiortc_tap._rtcp_reader.Reader(protocol, read_end, dtls, lambda c, a: None)
        reader.read_ready()
        ((error,),) = [protocol.errors]
        assert isinstance(error, OSError) and error.errno == errno.ENOTSOCK
        # A socket with nothing to read: nothing happens (the loop calls again when it has).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as empty:
            empty.bind(("127.0.0.1", 0))
            quiet = aiortc_tap._rtcp_reader.Reader(protocol, empty.fileno(), dtls, print)
            quiet.read_ready()
        assert len(protocol.errors) == 1
    finally:
        os.close(read_end)
        os.close(write_end)
