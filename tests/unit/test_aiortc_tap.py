"""server/sfu/aiortc_tap.py: the one module that uses aiortc internals.

If an aiortc upgrade moves what the tap relies on, these tests fail loudly. Receivers and
senders are built on a real (never connected) RTCDtlsTransport: no socket is opened.
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import dataclasses
import queue
import struct
import threading
from collections.abc import AsyncIterator, Awaitable

import aioice
import aiortc
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pylibsrtp
import pytest
from aioice import Candidate, stun
from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import (
    RTCCertificate,
    RTCDtlsTransport,
    RTCIceGatherer,
    RTCIceTransport,
    RTCRtpReceiver,
    RTCRtpSender,
)
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import (
    RTCRtpCodecParameters,
    RTCRtpDecodingParameters,
    RTCRtpReceiveParameters,
    RTCRtpRtxParameters,
)
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    wrap_rtx,
)

from server.sfu import aiortc_tap, nack
from server.sfu.aiortc_tap import (
    ForwardingSender,
    SenderFeedback,
    SendParameters,
    TapError,
    check_internals,
    disable_decoding,
)

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
RTX = RTCRtpCodecParameters(
    mimeType="video/rtx", clockRate=90000, payloadType=97, parameters={"apt": 96}
)
MEDIA_SSRC = 1111
RTX_SSRC = 2222


# -- check_internals ----------------------------------------------------------------------------


def test_check_internals_passes_on_installed_aiortc() -> None:
    assert aiortc.__version__ == aiortc_tap.SUPPORTED_AIORTC == "1.16.0"
    check_internals()  # raises TapError otherwise


def test_check_internals_fails_loudly_on_another_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    with pytest.raises(TapError, match=r"aiortc 1\.17\.0 installed.*1\.16\.0"):
        check_internals()


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (aiortc.rtcrtpreceiver, "decoder_worker"),
        (aiortc.rtcrtpreceiver, "StreamStatistics"),
        (RTCRtpReceiver, "_handle_rtp_packet"),
        (RTCRtpReceiver, "_send_rtcp"),
        (RTCRtpReceiver, "_send_rtcp_nack"),
        (RTCRtpReceiver, "_send_rtcp_pli"),
        (RTCRtpSender, "_handle_rtcp_packet"),
        (RTCDtlsTransport, "_handle_rtcp_data"),
        (RTCDtlsTransport, "_send_rtp"),
        (RTCDtlsTransport, "_recv_next"),
    ],
)
def test_check_internals_fails_when_an_internal_moves(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(TapError, match=name):
        check_internals()


def test_check_internals_fails_when_the_senders_rtcp_loop_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ForwardingSender replaces the RTCP loop RTCRtpSender.send starts (sender reports go with
    # the packets); a send() that starts another loop would send aiortc's reports too.
    async def send(self: RTCRtpSender, parameters: object) -> None:
        pass

    monkeypatch.setattr(RTCRtpSender, "send", send)
    with pytest.raises(TapError, match="RTCP loop"):
        check_internals()


def test_check_internals_fails_when_aioice_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Datagrams are handed on by StunProtocol to the connection's data_received, which queues.
    def data_received(self: object, data: bytes, component: int) -> None:
        pass

    monkeypatch.setattr(IceConnection, "data_received", data_received)
    with pytest.raises(TapError, match="queues"):
        check_internals()
    monkeypatch.undo()
    monkeypatch.setattr(aioice, "__version__", "0.14.0")
    with pytest.raises(TapError, match=r"aioice 0\.14\.0"):
        check_internals()


def test_check_internals_fails_when_asyncio_stops_receiving_max_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # StunProtocol's transports receive into a 64 KiB buffer through max_size.
    def read_ready(self: object) -> None:
        pass

    monkeypatch.setattr(
        asyncio.selector_events._SelectorDatagramTransport, "_read_ready", read_ready
    )
    with pytest.raises(TapError, match="max_size"):
        check_internals()


def test_check_internals_fails_when_asyncio_reads_datagrams_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A C Reader (_rtcp_reader.c) stands in for the transport's reader callback: recvfrom,
    # then datagram_received, or error_received on an OSError.
    def read_ready(self) -> None:  # type: ignore[no-untyped-def]
        data, addr = self._sock.recvfrom(self.max_size)
        self._protocol.datagram_received(data, addr)

    monkeypatch.setattr(
        asyncio.selector_events._SelectorDatagramTransport, "_read_ready", read_ready
    )
    with pytest.raises(TapError, match="error_received"):
        check_internals()


def test_check_internals_fails_when_aiortc_stops_routing_rtp_as_the_lane_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # _ArrivingRtp decrypts, parses and routes a publisher's RTP as the DTLS task does.
    async def handle_rtp_data(self: object, data: bytes, arrival_time_ms: int) -> None:
        pass

    monkeypatch.setattr(RTCDtlsTransport, "_handle_rtp_data", handle_rtp_data)
    with pytest.raises(TapError, match="route_rtp"):
        check_internals()


def test_check_internals_fails_when_asyncio_transports_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The C forwarding loop reads _closing and _buffer_size of asyncio's datagram transports.
    def get_write_buffer_size(self: object) -> int:
        return 0

    monkeypatch.setattr(
        asyncio.selector_events._SelectorDatagramTransport,
        "get_write_buffer_size",
        get_write_buffer_size,
    )
    with pytest.raises(TapError, match="_buffer_size"):
        check_internals()


def test_private_fields_exist_on_fresh_objects(dtls: RTCDtlsTransport) -> None:
    receiver = RTCRtpReceiver("video", dtls)
    aiortc_tap._require(receiver, aiortc_tap._R, aiortc_tap._RECEIVER_FIELDS)
    sender = RTCRtpSender("video", dtls)
    aiortc_tap._require(sender, aiortc_tap._S, aiortc_tap._SENDER_FIELDS)
    with pytest.raises(TapError, match="no_such_field"):
        aiortc_tap._require(receiver, aiortc_tap._R, ("no_such_field",))


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> RTCCertificate:
    return RTCCertificate.generateCertificate()


@pytest.fixture
async def dtls(certificate: RTCCertificate) -> AsyncIterator[RTCDtlsTransport]:
    transport = RTCDtlsTransport(RTCIceTransport(RTCIceGatherer()), [certificate])
    yield transport


def make_receiver(dtls: RTCDtlsTransport) -> RTCRtpReceiver:
    """What RTCPeerConnection does before its "track" event (rtcpeerconnection.py)."""
    receiver = RTCRtpReceiver("video", dtls)
    receiver._track = RemoteStreamTrack(kind="video")
    return receiver


class Sink:
    def __init__(self) -> None:
        self.packets: list[tuple[RtpPacket, RTCRtpCodecParameters, bool]] = []

    async def __call__(
        self, packet: RtpPacket, codec: RTCRtpCodecParameters, retransmitted: bool
    ) -> None:
        self.packets.append((packet, codec, retransmitted))


def receive_parameters() -> RTCRtpReceiveParameters:
    return RTCRtpReceiveParameters(
        codecs=[VP8, RTX],
        encodings=[
            RTCRtpDecodingParameters(
                ssrc=MEDIA_SSRC, payloadType=96, rtx=RTCRtpRtxParameters(ssrc=RTX_SSRC)
            )
        ],
        muxId="0",
    )


@pytest.fixture
async def tapped(dtls: RTCDtlsTransport) -> AsyncIterator[tuple[RTCRtpReceiver, Sink]]:
    receiver = make_receiver(dtls)
    sink = Sink()
    disable_decoding(receiver, sink)
    await receiver.receive(receive_parameters())
    yield receiver, sink
    await receiver.stop()


# -- the decoder thread -------------------------------------------------------------------------


def test_decoder_worker_is_our_wrapper() -> None:
    assert aiortc.rtcrtpreceiver.decoder_worker is aiortc_tap._decoder_worker
    assert aiortc_tap._original_decoder_worker is not aiortc_tap._decoder_worker
    assert aiortc_tap._original_decoder_worker.__module__ == "aiortc.rtcrtpreceiver"


def test_wrapper_returns_at_once_for_a_marked_queue() -> None:
    output_q: asyncio.Queue = asyncio.Queue()
    aiortc_tap._forwarded_queues.add(output_q)
    input_q: queue.Queue = queue.Queue()  # empty: aiortc's worker would block on it
    thread = threading.Thread(
        target=aiortc.rtcrtpreceiver.decoder_worker,
        args=(None, input_q, output_q, threading.Event()),
        daemon=True,
    )
    thread.start()
    thread.join(timeout=5)
    alive = thread.is_alive()
    if alive:
        input_q.put(None)  # release aiortc's worker before failing
    assert not alive, "decoder_worker did not return for a forwarded receiver's queue"
    assert input_q.empty()


async def test_wrapper_delegates_for_an_unmarked_queue() -> None:
    """Receivers we do not forward (none today, but aiortc's own use) still decode."""
    output_q: asyncio.Queue = asyncio.Queue()
    input_q: queue.Queue = queue.Queue()
    input_q.put(None)  # aiortc's worker: end of stream -> puts None on the track queue
    loop = asyncio.get_running_loop()
    await asyncio.to_thread(
        aiortc.rtcrtpreceiver.decoder_worker, loop, input_q, output_q, threading.Event()
    )
    assert await asyncio.wait_for(output_q.get(), 5) is None


async def test_receive_starts_no_decoder_on_a_tapped_receiver(
    tapped: tuple[RTCRtpReceiver, Sink],
) -> None:
    receiver, _sink = tapped
    thread = receiver._RTCRtpReceiver__decoder_thread
    assert thread is not None  # aiortc did start its thread...
    thread.join(timeout=5)
    assert not thread.is_alive()  # ...and it returned at once
    assert aiortc_tap.decoding(receiver) is False
    assert receiver.track._queue in aiortc_tap._forwarded_queues


async def test_untapped_receiver_does_decode(dtls: RTCDtlsTransport) -> None:
    """Control for the test above: without disable_decoding the thread keeps running."""
    receiver = make_receiver(dtls)
    await receiver.receive(receive_parameters())
    try:
        assert aiortc_tap.decoding(receiver) is True
    finally:
        await receiver.stop()
    assert aiortc_tap.decoding(receiver) is False


async def test_disable_decoding_after_start_is_refused(dtls: RTCDtlsTransport) -> None:
    receiver = make_receiver(dtls)
    await receiver.receive(receive_parameters())
    try:
        with pytest.raises(TapError, match="before the receiver starts"):
            disable_decoding(receiver, Sink())
    finally:
        await receiver.stop()


# -- packets go to the sink ---------------------------------------------------------------------


def media_packet(seq: int, payload: bytes = b"\x10\x9c\x01\x02") -> RtpPacket:
    return RtpPacket(
        payload_type=96, sequence_number=seq, timestamp=seq * 3000, ssrc=MEDIA_SSRC, payload=payload
    )


async def test_packets_reach_the_sink_not_the_jitter_buffer(
    tapped: tuple[RTCRtpReceiver, Sink],
) -> None:
    receiver, sink = tapped
    for seq in (10, 11, 12):
        await receiver._handle_rtp_packet(media_packet(seq), arrival_time_ms=seq)
    assert [(p.sequence_number, c.mimeType, r) for p, c, r in sink.packets] == [
        (10, "video/VP8", False),
        (11, "video/VP8", False),
        (12, "video/VP8", False),
    ]
    assert receiver.track._queue.empty()  # nothing was decoded into the track
    stats = receiver._RTCRtpReceiver__remote_streams
    assert stats[MEDIA_SSRC].packets_received == 3  # receiver reports still see them


async def test_rtx_is_unwrapped(tapped: tuple[RTCRtpReceiver, Sink]) -> None:
    receiver, sink = tapped
    original = media_packet(500, payload=b"\x10\x9d\xaa\xbb")
    rtx = wrap_rtx(original, payload_type=97, sequence_number=7, ssrc=RTX_SSRC)
    await receiver._handle_rtp_packet(rtx, arrival_time_ms=0)
    assert len(sink.packets) == 1
    packet, codec, retransmitted = sink.packets[0]
    assert retransmitted is True
    assert codec.mimeType == "video/VP8"
    assert packet.ssrc == MEDIA_SSRC
    assert packet.sequence_number == 500
    assert packet.payload_type == 96
    assert packet.payload == b"\x10\x9d\xaa\xbb"


async def test_rtx_from_unknown_ssrc_or_empty_is_dropped(
    tapped: tuple[RTCRtpReceiver, Sink],
) -> None:
    receiver, sink = tapped
    stray = wrap_rtx(media_packet(1), payload_type=97, sequence_number=1, ssrc=9999)
    await receiver._handle_rtp_packet(stray, arrival_time_ms=0)
    padding_only = RtpPacket(payload_type=97, sequence_number=2, ssrc=RTX_SSRC, payload=b"")
    await receiver._handle_rtp_packet(padding_only, arrival_time_ms=0)
    assert sink.packets == []


async def test_unknown_payload_type_is_dropped(tapped: tuple[RTCRtpReceiver, Sink]) -> None:
    receiver, sink = tapped
    packet = media_packet(1)
    packet.payload_type = 100
    await receiver._handle_rtp_packet(packet, arrival_time_ms=0)
    assert sink.packets == []


async def test_disabled_receiver_drops_packets(tapped: tuple[RTCRtpReceiver, Sink]) -> None:
    receiver, sink = tapped
    receiver._enabled = False
    await receiver._handle_rtp_packet(media_packet(1), arrival_time_ms=0)
    assert sink.packets == []


def record_nacks(
    receiver: RTCRtpReceiver, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[int, list[int]]]:
    """The NACKs `receiver` sends, as (media SSRC, lost sequence numbers)."""
    nacks: list[tuple[int, list[int]]] = []

    async def record_nack(media_ssrc: int, lost: list[int]) -> None:
        nacks.append((media_ssrc, lost))

    monkeypatch.setattr(receiver, "_send_rtcp_nack", record_nack)
    return nacks


async def test_gaps_still_produce_nacks(
    tapped: tuple[RTCRtpReceiver, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, sink = tapped
    nacks = record_nacks(receiver, monkeypatch)
    for seq in (100, 101, 104):
        await receiver._handle_rtp_packet(media_packet(seq), arrival_time_ms=0)
    assert nacks == [(MEDIA_SSRC, [102, 103])]
    assert [p.sequence_number for p, _, _ in sink.packets] == [100, 101, 104]


async def test_a_missing_packet_is_nacked_again_until_it_arrives(
    tapped: tuple[RTCRtpReceiver, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, _sink = tapped
    nacks = record_nacks(receiver, monkeypatch)
    step = nack.RENACK_MIN_MS
    await receiver._handle_rtp_packet(media_packet(100), arrival_time_ms=1000)
    await receiver._handle_rtp_packet(media_packet(102), arrival_time_ms=1000)  # 101 lost
    await receiver._handle_rtp_packet(media_packet(103), arrival_time_ms=1000 + step - 1)
    assert nacks == [(MEDIA_SSRC, [101])]  # not again before the interval
    await receiver._handle_rtp_packet(media_packet(104), arrival_time_ms=1000 + step)
    assert nacks == [(MEDIA_SSRC, [101])] * 2  # still missing: asked again
    await receiver._handle_rtp_packet(media_packet(101), arrival_time_ms=1000 + 2 * step)
    await receiver._handle_rtp_packet(media_packet(105), arrival_time_ms=1000 + 4 * step)
    assert len(nacks) == 2  # arrived: nothing more to ask for


async def test_a_publisher_a_round_trip_away_is_asked_again_only_after_it(
    tapped: tuple[RTCRtpReceiver, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, _sink = tapped
    nacks = record_nacks(receiver, monkeypatch)
    handle = receiver._handle_rtp_packet
    await handle(media_packet(100), arrival_time_ms=0)
    await handle(media_packet(102), arrival_time_ms=0)  # 101 lost: asked for at once
    await handle(media_packet(101), arrival_time_ms=200)  # resent: a 200 ms round trip
    await handle(media_packet(104), arrival_time_ms=1000)  # 103 lost: asked for at once
    seq = 105
    for at in range(1020, 1300, 20):  # packets keep coming while 103 is missing
        await handle(media_packet(seq), arrival_time_ms=at)
        seq += 1
    assert nacks == [(MEDIA_SSRC, [101]), (MEDIA_SSRC, [103])], "not every 20 ms"
    await handle(media_packet(seq), arrival_time_ms=1300)  # a round trip and a half later
    assert nacks[-1] == (MEDIA_SSRC, [103]) and len(nacks) == 3


async def test_request_keyframe_sends_a_pli(
    tapped: tuple[RTCRtpReceiver, Sink], monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver, _sink = tapped
    sent: list[object] = []

    async def record(packet: object) -> None:
        sent.append(packet)

    monkeypatch.setattr(receiver, "_send_rtcp", record)
    receiver._set_rtcp_ssrc(4242)
    await aiortc_tap.request_keyframe(receiver, MEDIA_SSRC)
    assert len(sent) == 1
    pli = sent[0]
    assert isinstance(pli, RtcpPsfbPacket)
    assert pli.fmt == RTCP_PSFB_PLI
    assert pli.media_ssrc == MEDIA_SSRC
    assert pli.ssrc == 4242


# -- ForwardingSender ---------------------------------------------------------------------------


class Feedback:
    def __init__(self) -> None:
        self.nacks: list[list[int]] = []
        self.keyframe_requests = 0
        self.rembs: list[int] = []
        self.started: list[SendParameters] = []

    async def on_nack(self, lost: list[int]) -> None:
        self.nacks.append(lost)

    def on_keyframe_request(self) -> None:
        self.keyframe_requests += 1

    def on_remb(self, bitrate: int) -> None:
        self.rembs.append(bitrate)

    def on_started(self, params: SendParameters) -> None:
        self.started.append(params)

    def as_feedback(self) -> SenderFeedback:
        return SenderFeedback(self.on_nack, self.on_keyframe_request, self.on_remb, self.on_started)


def send_parameters(
    codecs: list[RTCRtpCodecParameters], ext: HeaderExtensionsMap, rtx: dict[int, int]
) -> SendParameters:
    """What ForwardingSender records when aiortc starts the sender (no header extensions).

    By field name: the forwarding path is being reworked (extension ids for a hand-written
    RTP header may be added), and these tests are about RTX, not about that."""
    values: dict[str, object] = {
        "codecs": codecs,
        "header_extensions": ext,
        "mid": "0",
        "rtx_payload_types": rtx,
    }
    names = {f.name for f in dataclasses.fields(SendParameters)}
    if "extension_ids" in names:
        from server.sfu.rtp_header import ExtensionIds

        values["extension_ids"] = ExtensionIds()
    assert names == set(values), f"SendParameters changed: {sorted(names)}"
    return SendParameters(**values)  # type: ignore[arg-type]


@pytest.fixture
async def forwarding(dtls: RTCDtlsTransport) -> tuple[ForwardingSender, Feedback]:
    feedback = Feedback()
    sender = RTCRtpSender("video", dtls)
    return ForwardingSender(sender, feedback.as_feedback()), feedback


async def test_sender_rtcp_feedback_is_routed(
    forwarding: tuple[ForwardingSender, Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    fwd, feedback = forwarding
    sender = fwd.sender
    ssrc = fwd.ssrc
    handle = sender._handle_rtcp_packet
    await handle(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=ssrc, lost=[5, 7]))
    await handle(RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=ssrc))
    await handle(RtcpPsfbPacket(fmt=RTCP_PSFB_FIR, ssrc=1, media_ssrc=ssrc))
    await handle(
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(750_000, [ssrc]))
    )
    await handle(  # REMB for someone else's stream
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(1, [ssrc + 1]))
    )
    await handle(RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=b"junk"))
    assert feedback.nacks == [[5, 7]]
    assert feedback.keyframe_requests == 2
    assert len(feedback.rembs) == 1 and abs(feedback.rembs[0] - 750_000) < 750_000 * 0.01


async def test_sender_receiver_reports_go_to_aiortc(
    forwarding: tuple[ForwardingSender, Feedback],
) -> None:
    fwd, feedback = forwarding
    # aiortc's own handler takes RR (RTT, stats): it must not reach our feedback
    await fwd.sender._handle_rtcp_packet(RtcpRrPacket(ssrc=1, reports=[]))
    assert feedback.nacks == [] and feedback.keyframe_requests == 0 and feedback.rembs == []


async def test_send_rtp_counts_for_sender_reports(
    forwarding: tuple[ForwardingSender, Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    fwd, _feedback = forwarding
    wire: list[bytes] = []

    async def capture(data: bytes) -> None:
        wire.append(data)

    monkeypatch.setattr(fwd.sender.transport, "_send_rtp", capture)
    packet = RtpPacket(payload_type=96, sequence_number=1, timestamp=90000, ssrc=fwd.ssrc)
    packet.payload = b"x" * 100
    data = packet.serialize()
    await fwd.send_rtp(data, 90000)
    await fwd.send_rtp(data, 93000)
    assert wire == [data, data]
    assert fwd.sender._RTCRtpSender__packet_count == 2
    assert fwd.sender._RTCRtpSender__octet_count == 2 * (len(data) - 12)
    assert fwd.sender._RTCRtpSender__rtp_timestamp == 93000


async def test_aiortcs_rtcp_loop_only_says_goodbye(
    forwarding: tuple[ForwardingSender, Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Sender reports go with the packets (tests/unit/test_forwarding_path.py, test_fanout.py);
    # the loop aiortc starts for them only sends BYE when the sender stops.
    fwd, _feedback = forwarding
    sender = fwd.sender
    assert isinstance(sender, RTCRtpSender)
    sent: list[list[object]] = []

    async def capture(packets: list[object]) -> None:
        sent.append(packets)

    monkeypatch.setattr(sender, "_send_rtcp", capture)
    loop = asyncio.ensure_future(sender._run_rtcp())  # as RTCRtpSender.send starts it
    await sender._RTCRtpSender__rtcp_started.wait()
    loop.cancel()  # as RTCRtpSender.stop does
    await sender._RTCRtpSender__rtcp_exited.wait()
    [[bye]] = sent
    assert isinstance(bye, RtcpByePacket) and bye.sources == [fwd.ssrc]


async def test_the_report_template_is_aiortcs_sr_and_sdes(
    forwarding: tuple[ForwardingSender, Feedback],
) -> None:
    fwd, _feedback = forwarding
    fwd.start_reports("a-cname")
    sr, sdes = RtcpPacket.parse(fwd.report_template)
    assert isinstance(sr, RtcpSrPacket) and sr.ssrc == fwd.ssrc
    assert sdes.chunks[0].ssrc == fwd.ssrc and sdes.chunks[0].items == [(1, b"a-cname")]


async def test_resend_wraps_as_rtx_when_negotiated(
    forwarding: tuple[ForwardingSender, Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    fwd, _feedback = forwarding
    wire: list[bytes] = []

    async def capture(data: bytes) -> None:
        wire.append(data)

    monkeypatch.setattr(fwd.sender.transport, "_send_rtp", capture)
    ext = HeaderExtensionsMap()
    fwd.parameters = send_parameters([VP8, RTX], ext, {96: 97})
    original = RtpPacket(payload_type=96, sequence_number=4000, timestamp=1, ssrc=fwd.ssrc)
    original.payload = b"\x10\x9c\x00"
    await fwd.resend(original.serialize(ext))
    await fwd.resend(original.serialize(ext))
    first, second = (RtpPacket.parse(d, ext) for d in wire)
    assert first.payload_type == 97
    assert first.ssrc == fwd.sender._rtx_ssrc
    assert first.payload[:2] == (4000).to_bytes(2, "big")  # OSN
    assert first.payload[2:] == b"\x10\x9c\x00"
    assert (second.sequence_number - first.sequence_number) % 65536 == 1


async def test_resend_without_rtx_sends_the_packet_again(
    forwarding: tuple[ForwardingSender, Feedback], monkeypatch: pytest.MonkeyPatch
) -> None:
    fwd, _feedback = forwarding
    wire: list[bytes] = []

    async def capture(data: bytes) -> None:
        wire.append(data)

    monkeypatch.setattr(fwd.sender.transport, "_send_rtp", capture)
    await fwd.resend(b"before-start")  # no parameters yet: nothing to do
    assert wire == []
    ext = HeaderExtensionsMap()
    fwd.parameters = send_parameters([VP8], ext, {})
    data = RtpPacket(payload_type=96, sequence_number=9, ssrc=fwd.ssrc, payload=b"ab").serialize()
    await fwd.resend(data)
    assert wire == [data]


# -- a subscriber's RTCP, read as it arrives ----------------------------------------------------

SRTP_KEY = bytes(range(30))


def reference_time_report(sender_ssrc: int, seconds: int, fraction: int) -> bytes:
    """An RTCP compound as Chromium sends it with rrtr negotiated: RR, then XR with an RRTR."""
    xr = struct.pack("!BBHIBBHII", 0x80, 207, 4, sender_ssrc, 4, 0, 2, seconds, fraction)
    return bytes(RtcpRrPacket(ssrc=sender_ssrc, reports=[])) + xr


class SubscriberWire:
    """A down connection's transport as the subscriber's RTCP finds it once connected: its
    SRTP sessions keyed, its state CONNECTED (no handshake: no socket is opened). `protect`
    is the subscriber's side; `sent` what the transport sends (plain, before SRTP);
    `queued` what aioice queued for aiortc's DTLS task."""

    def __init__(self, dtls: RTCDtlsTransport, monkeypatch: pytest.MonkeyPatch) -> None:
        self.dtls = dtls
        policy = pylibsrtp.Policy
        dtls._rx_srtp = pylibsrtp.Session(policy(key=SRTP_KEY, ssrc_type=policy.SSRC_ANY_INBOUND))
        dtls._tx_srtp = pylibsrtp.Session(policy(key=SRTP_KEY, ssrc_type=policy.SSRC_ANY_OUTBOUND))
        self.subscriber = pylibsrtp.Session(
            policy(key=SRTP_KEY, ssrc_type=policy.SSRC_ANY_OUTBOUND)
        )
        dtls._set_state(DtlsState.CONNECTED)
        self.sent: list[bytes] = []
        self.connection = dtls.transport._connection

        async def send(data: bytes) -> None:
            self.sent.append(data)

        monkeypatch.setattr(dtls, "_send_rtp", send)

    def protect(self, compound: bytes) -> bytes:
        return self.subscriber.protect_rtcp(compound)

    def receive(self, datagram: bytes) -> None:
        """The datagram arrives, as aioice's StunProtocol hands it on."""
        self.connection.data_received(datagram, 1)

    @property
    def queued(self) -> list[bytes]:
        found = []
        while not self.connection._queue.empty():
            found.append(self.connection._queue.get_nowait()[0])
        return found

    async def settled(self) -> None:
        """Until the answers and aiortc's handlers the lane started have run."""
        lane = self.dtls._giaoban_subscriber_rtcp
        await asyncio.gather(*list(lane._tasks))


@pytest.fixture
def wire(dtls: RTCDtlsTransport, monkeypatch: pytest.MonkeyPatch) -> SubscriberWire:
    return SubscriberWire(dtls, monkeypatch)


def record_aiortc_handling(dtls: RTCDtlsTransport, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    handled: list[bytes] = []

    async def handle(data: bytes) -> None:
        handled.append(data)

    monkeypatch.setattr(dtls, "_handle_rtcp_data", handle)
    return handled


async def test_receiver_reports_end_where_they_arrive(
    wire: SubscriberWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = record_aiortc_handling(wire.dtls, monkeypatch)
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 5555, video=True)
    report = RtcpRrPacket(ssrc=1, reports=[])
    wire.receive(wire.protect(bytes(report)))
    await wire.settled()
    assert (wire.queued, handled, wire.sent) == ([], [], [])


async def test_a_reference_time_is_answered_with_the_delay_since(
    wire: SubscriberWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = record_aiortc_handling(wire.dtls, monkeypatch)
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 5555, video=True)
    wire.receive(wire.protect(reference_time_report(1, 0x12345678, 0x9ABCDEF0)))
    await wire.settled()
    assert len(wire.sent) == 1 and handled == [] and wire.queued == []
    _, pt, _, sender, block, _, _, receiver, last_rr, delay = struct.unpack(
        "!BBHIBBHIII", wire.sent[0]
    )
    assert (pt, sender, block, receiver, last_rr) == (207, 5555, 5, 1, 0x56789ABC)
    assert delay < 65536 // 100, "answered at once: under 10 ms of delay"


async def test_reference_times_are_answered_once_and_from_a_video_sender(
    wire: SubscriberWire,
) -> None:
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 1000, video=False)  # audio first
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 2000, video=True)
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 3000, video=True)  # another bundled m-line
    stuffed = b"".join(reference_time_report(1, 0, n << 16) for n in range(20))
    wire.receive(wire.protect(stuffed + reference_time_report(2, 0, 7 << 16)))
    await wire.settled()
    answered = sorted(struct.unpack_from("!I4xII", reply, 4) for reply in wire.sent)
    assert answered == [(2000, 1, 19), (2000, 2, 7)], (
        "one answer per receiver, with its latest reference time, from the video sender"
    )
    # Hooked once: a datagram that is not RTCP reaches aioice's queue once.
    wire.receive(b"\x16" + bytes(20))
    assert wire.queued == [b"\x16" + bytes(20)]


@pytest.fixture
def routed(
    wire: SubscriberWire, forwarding: tuple[ForwardingSender, Feedback]
) -> tuple[ForwardingSender, Feedback]:
    """A forwarding sender on the wire's transport, as aiortc routes RTCP to it."""
    fwd, _feedback = forwarding
    wire.dtls._rtp_router.register_sender(fwd.sender, fwd.ssrc)
    aiortc_tap.take_subscriber_rtcp(wire.dtls, fwd.ssrc, video=True)
    return forwarding


async def test_remb_reaches_the_sender_it_names(
    wire: SubscriberWire, routed: tuple[ForwardingSender, Feedback]
) -> None:
    fwd, feedback = routed
    remb = RtcpPsfbPacket(
        fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(750_000, [fwd.ssrc, 99])
    )
    wire.receive(wire.protect(bytes(RtcpRrPacket(ssrc=1, reports=[])) + bytes(remb)))
    await wire.settled()
    assert len(feedback.rembs) == 1 and abs(feedback.rembs[0] - 750_000) < 7_500
    assert wire.queued == []


async def test_a_nack_goes_through_aiortc_to_the_sender(
    wire: SubscriberWire, routed: tuple[ForwardingSender, Feedback]
) -> None:
    fwd, feedback = routed
    nack = RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=fwd.ssrc, lost=[5, 7])
    pli = RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=1, media_ssrc=fwd.ssrc)
    wire.receive(wire.protect(bytes(RtcpRrPacket(ssrc=1, reports=[])) + bytes(nack)))
    wire.receive(wire.protect(bytes(pli)))
    await wire.settled()
    assert feedback.nacks == [[5, 7]] and feedback.keyframe_requests == 1
    assert wire.queued == [], "decrypted once, here: aiortc's handlers get the compound"


async def test_what_is_not_subscriber_rtcp_takes_aioices_queue(
    wire: SubscriberWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = record_aiortc_handling(wire.dtls, monkeypatch)
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 5555, video=True)
    rtp = wire.subscriber.protect(
        RtpPacket(payload_type=96, sequence_number=1, ssrc=7, payload=b"x").serialize()
    )
    dtls_record = bytes([22, 0xFE, 0xFD]) + bytes(30)
    report = wire.protect(bytes(RtcpRrPacket(ssrc=1, reports=[])))
    for datagram in (rtp, dtls_record, b"\x80"):
        wire.receive(datagram)
    assert wire.queued == [rtp, dtls_record, b"\x80"]
    wire.dtls._set_state(DtlsState.CLOSED)  # SRTCP on a transport that is not connected
    wire.receive(report)
    assert wire.queued == [report] and handled == []


async def test_a_datagram_that_does_not_authenticate_is_dropped(
    wire: SubscriberWire, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled = record_aiortc_handling(wire.dtls, monkeypatch)
    aiortc_tap.take_subscriber_rtcp(wire.dtls, 5555, video=True)
    policy = pylibsrtp.Policy
    stranger = pylibsrtp.Session(policy(key=bytes(30), ssrc_type=policy.SSRC_ANY_OUTBOUND))
    wire.receive(stranger.protect_rtcp(reference_time_report(1, 1, 2)))
    await wire.settled()
    assert (wire.queued, handled, wire.sent) == ([], [], [])


async def test_a_reference_time_on_a_closed_connection_is_dropped_quietly(
    dtls: RTCDtlsTransport, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wire = SubscriberWire(dtls, monkeypatch)
    monkeypatch.undo()  # aiortc's own _send_rtp: no nominated ICE pair, ConnectionError
    aiortc_tap.take_subscriber_rtcp(dtls, 5555, video=True)
    wire.receive(wire.protect(reference_time_report(1, 1, 2)))
    await wire.settled()
    assert "failed" not in caplog.text


# -- a publisher's RTP, handled where it arrives ------------------------------------------------


class ArrivalSink:
    """A tap's sink called where packets arrive: records them, and returns what `wait` holds."""

    def __init__(self) -> None:
        self.packets: list[tuple[int, bool]] = []
        self.waited: list[int] = []
        self.wait = False
        self.fail_at: int | None = None

    def __call__(
        self, packet: RtpPacket, codec: RTCRtpCodecParameters, retransmitted: bool
    ) -> Awaitable[None] | None:
        if packet.sequence_number == self.fail_at:
            raise RuntimeError("a bug in the sink")
        self.packets.append((packet.sequence_number, retransmitted))
        return self._later(packet.sequence_number) if self.wait else None

    async def _later(self, seq: int) -> None:
        self.waited.append(seq)


@pytest.fixture
async def arriving(
    wire: SubscriberWire,
) -> AsyncIterator[tuple[RTCRtpReceiver, ArrivalSink]]:
    """A tapped receiver (at_arrival) on the wire's connected transport, started as aiortc
    starts it (registered with the transport's RTP router)."""
    receiver = make_receiver(wire.dtls)
    sink = ArrivalSink()
    disable_decoding(receiver, sink, at_arrival=True)
    await receiver.receive(receive_parameters())
    yield receiver, sink
    await receiver.stop()


def publisher_rtp(wire: SubscriberWire, seq: int, ssrc: int = MEDIA_SSRC) -> bytes:
    packet = RtpPacket(payload_type=96, sequence_number=seq, timestamp=seq, ssrc=ssrc)
    packet.payload = b"\x10\x9c\x01\x02"
    return wire.subscriber.protect(packet.serialize())


async def arriving_settled(wire: SubscriberWire) -> None:
    await asyncio.gather(*list(wire.dtls._giaoban_arriving_rtp._tasks))


async def test_publisher_rtp_is_forwarded_where_it_arrives(
    wire: SubscriberWire, arriving: tuple[RTCRtpReceiver, ArrivalSink]
) -> None:
    receiver, sink = arriving
    # The first packet comes through aiortc's DTLS task: it shows which transport carries them.
    await receiver._handle_rtp_packet(media_packet(1), arrival_time_ms=0)
    assert sink.packets == [(1, False)]
    counted = wire.dtls._RTCDtlsTransport__rx_packets
    wire.receive(publisher_rtp(wire, 2))
    wire.receive(publisher_rtp(wire, 3))
    # No await in between: handled inside the datagram handler, nothing queued for aiortc.
    assert sink.packets == [(1, False), (2, False), (3, False)]
    assert wire.queued == []
    assert wire.dtls._RTCDtlsTransport__rx_packets == counted + 2  # its statistics still count
    stats = receiver._RTCRtpReceiver__remote_streams
    assert stats[MEDIA_SSRC].packets_received == 3  # and its receiver reports see them


async def test_rtx_arriving_is_unwrapped_where_it_arrives(
    wire: SubscriberWire, arriving: tuple[RTCRtpReceiver, ArrivalSink]
) -> None:
    receiver, sink = arriving
    aiortc_tap.take_arriving_rtp(receiver)
    rtx = wrap_rtx(media_packet(500), payload_type=97, sequence_number=7, ssrc=RTX_SSRC)
    wire.receive(wire.subscriber.protect(rtx.serialize()))
    assert sink.packets == [(500, True)]


async def test_what_is_not_publisher_rtp_takes_aioices_queue(
    wire: SubscriberWire, arriving: tuple[RTCRtpReceiver, ArrivalSink]
) -> None:
    receiver, sink = arriving
    aiortc_tap.take_arriving_rtp(receiver)
    report = wire.protect(bytes(RtcpRrPacket(ssrc=MEDIA_SSRC, reports=[])))
    dtls_record = bytes([22, 0xFE, 0xFD]) + bytes(30)
    for datagram in (report, dtls_record, b"\x80" + bytes(5)):
        wire.receive(datagram)
    assert wire.queued == [report, dtls_record, b"\x80" + bytes(5)]
    wire.dtls._set_state(DtlsState.CLOSED)  # SRTP on a transport that is not connected
    rtp = publisher_rtp(wire, 1)
    wire.receive(rtp)
    assert wire.queued == [rtp] and sink.packets == []


async def test_publisher_rtp_that_does_not_authenticate_or_route_is_dropped(
    wire: SubscriberWire, arriving: tuple[RTCRtpReceiver, ArrivalSink]
) -> None:
    receiver, sink = arriving
    aiortc_tap.take_arriving_rtp(receiver)
    policy = pylibsrtp.Policy
    stranger = pylibsrtp.Session(policy(key=bytes(30), ssrc_type=policy.SSRC_ANY_OUTBOUND))
    wire.receive(stranger.protect(media_packet(1).serialize()))
    unknown = RtpPacket(payload_type=111, sequence_number=2, ssrc=4444, payload=b"x")
    wire.receive(wire.subscriber.protect(unknown.serialize()))  # no receiver takes it
    assert (sink.packets, wire.queued) == ([], [])


async def test_a_failing_sink_loses_one_packet_not_the_connection(
    wire: SubscriberWire,
    arriving: tuple[RTCRtpReceiver, ArrivalSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    receiver, sink = arriving
    aiortc_tap.take_arriving_rtp(receiver)
    sink.fail_at = 2
    for seq in (1, 2, 3):
        wire.receive(publisher_rtp(wire, seq))  # would close aioice's socket if it raised
    assert sink.packets == [(1, False), (3, False)]
    assert "forwarding a received packet failed" in caplog.text


async def test_what_must_wait_runs_after_in_order(
    wire: SubscriberWire,
    arriving: tuple[RTCRtpReceiver, ArrivalSink],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver, sink = arriving
    aiortc_tap.take_arriving_rtp(receiver)
    nacks = record_nacks(receiver, monkeypatch)
    sink.wait = True
    for seq in (100, 101, 104):
        wire.receive(publisher_rtp(wire, seq))
    assert [seq for seq, _ in sink.packets] == [100, 101, 104] and nacks == []
    await arriving_settled(wire)
    assert nacks == [(MEDIA_SSRC, [102, 103])]  # the gap is still asked for
    assert sink.waited == [100, 101, 104]


async def test_an_untapped_receiver_on_the_lane_gets_its_packets_from_aiortc(
    wire: SubscriberWire, arriving: tuple[RTCRtpReceiver, ArrivalSink]
) -> None:
    receiver, sink = arriving
    aiortc_tap.take_arriving_rtp(receiver)
    other = make_receiver(wire.dtls)
    other_sink = Sink()
    disable_decoding(other, other_sink)  # awaited in aiortc's task, not at arrival
    parameters = receive_parameters()
    parameters.encodings[0].ssrc, parameters.muxId = 3333, "1"
    parameters.encodings[0].rtx = None
    await other.receive(parameters)
    try:
        wire.receive(publisher_rtp(wire, 9, ssrc=3333))
        await arriving_settled(wire)
        assert [p.sequence_number for p, _, _ in other_sink.packets] == [9]
        assert sink.packets == []
    finally:
        await other.stop()


# -- datagrams that cannot be STUN ---------------------------------------------------------------


class IceReceiver:
    """Where aioice's StunProtocol hands what it received (an ICE connection, in aioice)."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.requests: list[stun.Message] = []

    def data_received(self, data: bytes, component: int) -> None:
        self.data.append(data)

    def request_received(self, message: stun.Message, addr: object, protocol: object) -> None:
        self.requests.append(message)


async def test_media_datagrams_are_handed_on_without_a_stun_parse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    receiver = IceReceiver()
    protocol = StunProtocol(receiver)  # type: ignore[arg-type]
    protocol.local_candidate = Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
    parsed: list[bytes] = []
    parse = stun.parse_message

    def counting_parse(data: bytes, **kwargs: object) -> stun.Message:
        parsed.append(data)
        return parse(data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(stun, "parse_message", counting_parse)
    rtp = RtpPacket(payload_type=96, sequence_number=1, ssrc=7, payload=b"x").serialize()
    dtls_record = bytes([22, 0xFE, 0xFD]) + bytes(30)
    for datagram in (rtp, dtls_record):
        protocol.datagram_received(datagram, ("127.0.0.1", 5000))
    assert receiver.data == [rtp, dtls_record] and parsed == []
    # STUN is still STUN: a binding request reaches the connection's request handler.
    request = bytes(stun.Message(stun.Method.BINDING, stun.Class.REQUEST))
    protocol.datagram_received(request, ("127.0.0.1", 5000))
    assert parsed == [request] and len(receiver.requests) == 1
    assert receiver.data == [rtp, dtls_record]


async def test_ice_sockets_receive_the_largest_datagram_whole_into_64_kib() -> None:
    # asyncio's 256 KiB receive buffer cost ten times a 64 KiB one per datagram; no UDP
    # datagram is larger than 65,507 bytes of payload over IPv4, so none is cut short.
    loop = asyncio.get_running_loop()
    receiver = IceReceiver()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: StunProtocol(receiver),  # type: ignore[arg-type]
        local_addr=("127.0.0.1", 0),
    )
    sender, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=transport.get_extra_info("sockname")
    )
    try:
        protocol.local_candidate = Candidate("1", 1, "udp", 1, "127.0.0.1", 9, "host")
        assert transport.max_size == aiortc_tap.UDP_RECEIVE_SIZE == 65536
        largest = bytes([0x80]) + bytes(range(256)) * 255 + bytes(65507 - 1 - 256 * 255)
        arrived = asyncio.Event()
        receiver.data_received = lambda data, component: (  # type: ignore[method-assign]
            receiver.data.append(data),
            arrived.set(),
        )
        sender.sendto(largest)
        await asyncio.wait_for(arrived.wait(), 5)
        assert receiver.data == [largest]
    finally:
        sender.close()
        transport.close()
