"""The one module that reaches into aiortc's and aioice's private internals (pinned:
aiortc==1.16.0, aioice==0.13.0).

Forwarding needs four things aiortc and aioice do not offer publicly:
- on a receiver, every parsed RTP packet (after RTX unwrapping) handed to us instead of its
  jitter buffer and decoder thread, while aiortc keeps sending NACKs, receiver reports and REMB;
- on a sender, RTCP feedback (NACK, PLI/FIR, REMB) handed to us, since its own handling feeds
  an encoder we never run, and our packets counted in its statistics (its class is swapped
  for a subclass that reads those counts from our ForwardingSender, which sends the sender
  reports itself, with the packets);
- the negotiated send parameters (codecs, header-extension ids, mid) of a sender;
- on a down connection, the subscriber's RTCP read where aioice receives it (_SubscriberRtcp;
  after the first report, in C on the pair's socket in place of asyncio's reader callback:
  server/sfu/_rtcp_reader.c): reports, REMB and extended reports end there, feedback that
  asks for action goes on to aiortc's handlers; on an up connection, the publisher's RTP
  decrypted, parsed and forwarded where aioice receives it (_ArrivingRtp) instead of in
  aiortc's DTLS task; and aioice's StunProtocol hands media on without trying it as STUN, and
  receives into a 64 KiB buffer.

`check_internals()` runs at import and tests/unit/test_aiortc_tap.py asserts it, so an aiortc
upgrade that moves any of these fails loudly instead of silently decoding or dropping media.
The forwarding loop in C (server/sfu/_fanout.c, see fanout.py) sends through the path this
module finds (the nominated pair's socket and the DTLS transport's SRTP context) and reads two
fields of asyncio's datagram transport; those are checked here too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import time
import weakref
from asyncio.selector_events import (
    BaseSelectorEventLoop,
    _SelectorDatagramTransport,
    _SelectorTransport,
)
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from struct import Struct
from typing import Any

import aioice
import aiortc
import pylibsrtp
from aioice.ice import Connection as IceConnection
from aioice.ice import StunProtocol
from aiortc import RTCDtlsTransport, RTCRtpReceiver, RTCRtpSender, clock
from aiortc import rtcrtpreceiver as _receiver_module
from aiortc.codecs import is_rtx
from aiortc.rtcdtlstransport import State as DtlsState
from aiortc.rtcrtpparameters import RTCRtpCodecParameters, RTCRtpSendParameters
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_PSFB_FIR,
    RTCP_PSFB_PLI,
    RTCP_RTPFB_NACK,
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRtpfbPacket,
    RtcpSdesPacket,
    RtcpSenderInfo,
    RtcpSourceInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
    unwrap_rtx,
    wrap_rtx,
)
from pylibsrtp._binding import ffi as _srtp_ffi
from pylibsrtp._binding import lib as _srtp_lib

from server.sfu import fanout, rtcp_feedback, rtcp_xr
from server.sfu.nack import NackSchedule
from server.sfu.rtp_header import ExtensionIds

# A subscriber's RTCP read in C (_rtcp_reader.c), with the forwarding loop in C: both are
# built at install, and GIAOBAN_FORWARDING_LOOP=python turns both off.
_rtcp_reader: Any = None
if fanout.NATIVE:
    try:
        from server.sfu import _rtcp_reader
    except ImportError:  # not built
        _rtcp_reader = None
RTCP_IN_C = _rtcp_reader is not None

SUPPORTED_AIORTC = "1.16.0"
SUPPORTED_AIOICE = "0.13.0"

_R = "_RTCRtpReceiver__"
_S = "_RTCRtpSender__"
_RECEIVER_FIELDS = (
    "codecs",
    "rtx_ssrc",
    "remote_streams",
    "nack_generator",
    "remote_bitrate_estimator",
    "rtcp_ssrc",
    "decoder_thread",
)
# aiortc keeps a sender's report counts in four private fields (its statistics read them; its
# report loop did, before ForwardingSender took the reports over). The forwarding path keeps
# those counts on the ForwardingSender (touching aiortc's object per packet cost a cache miss
# per subscriber), and a subclass of the sender's class makes aiortc read them from there.
_REPORT_FIELDS = {
    "ntp_timestamp": "ntp_time",
    "rtp_timestamp": "rtp_timestamp",
    "octet_count": "octet_count",
    "packet_count": "packet_count",
}
_SENDER_FIELDS = ("transport", "rtcp_started", "rtcp_exited", *_REPORT_FIELDS)
# A sender report's sender info: NTP time (two words), RTP time, packets, octets (RFC 3550).
_SENDER_INFO = Struct("!IIIII")
_DTLS_CONNECTED = DtlsState.CONNECTED

logger = logging.getLogger(__name__)


class TapError(RuntimeError):
    """aiortc's internals are not what this module was written against."""


def check_internals() -> None:
    """Raise TapError if the installed aiortc is not the version whose internals we use."""
    if aiortc.__version__ != SUPPORTED_AIORTC:
        raise TapError(
            f"aiortc {aiortc.__version__} installed, server/sfu/aiortc_tap.py is written for "
            f"{SUPPORTED_AIORTC}: check its private fields before changing the pin"
        )
    for name in ("decoder_worker", "StreamStatistics"):
        if not hasattr(_receiver_module, name):
            raise TapError(f"aiortc.rtcrtpreceiver.{name} is gone")
    for method in ("_handle_rtp_packet", "_send_rtcp", "_send_rtcp_nack", "_send_rtcp_pli"):
        if not hasattr(RTCRtpReceiver, method):
            raise TapError(f"RTCRtpReceiver.{method} is gone")
    if not hasattr(RTCRtpSender, "_handle_rtcp_packet"):
        raise TapError("RTCRtpSender._handle_rtcp_packet is gone")
    # Extended reports are read from the decrypted compound on its way to aiortc's parser.
    for method in ("_handle_rtcp_data", "_send_rtp", "_recv_next"):
        if not hasattr(RTCDtlsTransport, method):
            raise TapError(f"RTCDtlsTransport.{method} is gone")
    if "_handle_rtcp_data" not in RTCDtlsTransport._recv_next.__code__.co_names:
        raise TapError("RTCDtlsTransport no longer hands RTCP to _handle_rtcp_data")
    # These are aiortc's report-count fields (ForwardingSender keeps them), and the DTLS transport
    # announces its state changes (ForwardingSender follows them instead of polling).
    for name in _REPORT_FIELDS:
        if _S + name not in RTCRtpSender._run_rtcp.__code__.co_names:
            raise TapError(f"RTCRtpSender's sender reports no longer read {name!r}")
    # Sender reports go with the packets (ForwardingSender): aiortc's RTCP loop is replaced.
    if "_run_rtcp" not in RTCRtpSender.send.__code__.co_names:
        raise TapError("RTCRtpSender.send no longer starts its RTCP loop as _run_rtcp")
    if "statechange" not in RTCDtlsTransport._set_state.__code__.co_consts:
        raise TapError("RTCDtlsTransport no longer emits 'statechange'")
    # The C forwarding loop sends on a datagram transport's socket only while it is open
    # (_closing) with nothing queued (_buffer_size, what get_write_buffer_size returns).
    if "max_size" not in _SelectorDatagramTransport._read_ready.__code__.co_names:
        raise TapError("asyncio's datagram transports no longer receive max_size bytes")
    if "_closing" not in _SelectorTransport.__init__.__code__.co_names or (
        "_buffer_size" not in _SelectorDatagramTransport.get_write_buffer_size.__code__.co_names
    ):
        raise TapError("asyncio's datagram transports no longer keep _closing and _buffer_size")
    # A C Reader takes the place of the transport's reader callback, doing what it does:
    # recvfrom, then datagram_received, or error_received on an OSError.
    read_ready = _SelectorDatagramTransport._read_ready.__code__.co_names
    for name in ("recvfrom", "datagram_received", "error_received"):
        if name not in read_ready:
            raise TapError(f"asyncio's datagram transports no longer read with {name!r}")
    if "_sock_fd" not in _SelectorTransport.__init__.__code__.co_names or not hasattr(
        BaseSelectorEventLoop, "_add_reader"
    ):
        raise TapError("asyncio's selector loop no longer reads a transport's _sock_fd")
    _check_srtp()
    _check_aioice()


def _check_aioice() -> None:
    """Raise TapError unless aioice hands datagrams on as _datagram_received and
    _SubscriberRtcp expect (aioice is pinned with aiortc)."""
    if aioice.__version__ != SUPPORTED_AIOICE:
        raise TapError(
            f"aioice {aioice.__version__} installed, the tap is written for {SUPPORTED_AIOICE}"
        )
    names = inspect.unwrap(StunProtocol.datagram_received).__code__.co_names
    if "data_received" not in names or "parse_message" not in names:
        raise TapError("aioice's StunProtocol no longer parses, then hands on, each datagram")
    if "_queue" not in IceConnection.data_received.__code__.co_names:
        raise TapError("aioice's Connection no longer queues received data")
    fields = RTCDtlsTransport.__init__.__code__.co_names
    for name in (
        "_rx_srtp",
        "_rtp_router",
        "_rtp_header_extensions_map",
        "_RTCDtlsTransport__rx_bytes",
        "_RTCDtlsTransport__rx_packets",
    ):
        if name not in fields:
            raise TapError(f"RTCDtlsTransport has no field {name!r}")
    # _ArrivingRtp decrypts, parses and routes RTP as the DTLS transport's task does.
    for name in ("unprotect", "_handle_rtp_data"):
        if name not in RTCDtlsTransport._recv_next.__code__.co_names:
            raise TapError(f"RTCDtlsTransport no longer receives RTP through {name!r}")
    if "route_rtp" not in RTCDtlsTransport._handle_rtp_data.__code__.co_names:
        raise TapError("RTCDtlsTransport no longer routes RTP with route_rtp")


# ForwardingSender.send_now SRTP-protects as pylibsrtp's Session.protect does (libsrtp 2's
# srtp_protect on a copy of the packet), without its per-call allocation and with one buffer
# for every session: the per-session buffers were 1.5 kB more of cold memory per subscriber.
_srtp_protect = _srtp_lib.srtp_protect
_SRTP_DATA = _srtp_ffi.new("char[]", 1500)
_SRTP_BUFFER = _srtp_ffi.buffer(_SRTP_DATA)
_SRTP_LEN = _srtp_ffi.new("int *")
_SRTP_ROOM = 1500 - pylibsrtp.SRTP_MAX_TRAILER_LEN
_SRTP_ERRORS = pylibsrtp.ERRORS


def _unprotect(function: Callable[..., int], session: pylibsrtp.Session, data: bytes) -> bytes:
    """Session.unprotect (or unprotect_rtcp, as `function` says) through libsrtp directly,
    in the buffer send_now uses: without its per-call allocation and checks, a quarter (RTP)
    to a third (RTCP) less CPU here."""
    size = len(data)
    if size > 1500:
        raise pylibsrtp.Error("packet is too long")
    _SRTP_LEN[0] = size
    _SRTP_BUFFER[0:size] = data
    status = function(session._srtp[0], _SRTP_DATA, _SRTP_LEN)  # type: ignore[attr-defined]
    if status:
        raise pylibsrtp.Error(_SRTP_ERRORS[status])
    return _SRTP_BUFFER[0 : _SRTP_LEN[0]]


_srtp_unprotect = _srtp_lib.srtp_unprotect
_srtp_unprotect_rtcp = _srtp_lib.srtp_unprotect_rtcp


def _check_srtp() -> None:
    """Raise TapError unless protecting and unprotecting through libsrtp directly (send_now,
    the C loop's packets and sender reports, the lanes' _unprotect) matches pylibsrtp's
    Session."""
    signature = "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    for name in ("srtp_protect", "srtp_protect_rtcp", "srtp_unprotect", "srtp_unprotect_rtcp"):
        if _srtp_ffi.getctype(_srtp_ffi.typeof(getattr(_srtp_lib, name))) != signature:
            raise TapError(f"pylibsrtp's {name} is not libsrtp 2's")
    key = bytes(range(30))
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    packets = {
        "srtp_protect": (bytes([0x80, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]) + bytes(100), "protect"),
        "srtp_protect_rtcp": (bytes([0x80, 200, 0, 6, 0, 0, 0, 3]) + bytes(20), "protect_rtcp"),
    }
    for name, (packet, method) in packets.items():
        expected = getattr(pylibsrtp.Session(policy), method)(packet)
        session = pylibsrtp.Session(policy)
        if not hasattr(session, "_srtp"):
            raise TapError("pylibsrtp.Session has no private field '_srtp'")
        data = _srtp_ffi.new("char[]", 1500)
        length = _srtp_ffi.new("int *", len(packet))
        _srtp_ffi.buffer(data)[0 : len(packet)] = packet
        if getattr(_srtp_lib, name)(session._srtp[0], data, length) or (
            _srtp_ffi.buffer(data)[0 : length[0]] != expected
        ):
            raise TapError(f"protecting through libsrtp's {name} differs from Session.{method}")
        inbound = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        function = getattr(_srtp_lib, name.replace("protect", "unprotect"))
        try:
            opened = _unprotect(function, pylibsrtp.Session(inbound), expected)
        except pylibsrtp.Error as exc:
            raise TapError(f"unprotecting through libsrtp fails: {exc}") from exc
        if opened != packet:
            raise TapError(f"unprotecting through libsrtp's {name} does not give the packet back")


check_internals()


def _datagram_received(protocol: StunProtocol, data: bytes, addr: tuple) -> None:
    """StunProtocol.datagram_received, with media and DTLS handed on without a STUN parse.

    aioice parses every datagram as STUN first: for a media packet that is a failed parse
    and an exception, per packet. By the first byte (RFC 7983: 0-3 STUN, 20-63 DTLS,
    128-191 RTP and RTCP) only a datagram starting below 4 can be STUN."""
    if data and data[0] > 3:
        protocol.receiver.data_received(data, protocol.local_candidate.component)
    else:
        _stun_datagram_received(protocol, data, addr)


# aioice's own, even if this module was loaded twice in one process (each load would wrap).
_stun_datagram_received = inspect.unwrap(StunProtocol.datagram_received)
_datagram_received.__wrapped__ = _stun_datagram_received  # type: ignore[attr-defined]
StunProtocol.datagram_received = _datagram_received  # type: ignore[method-assign]

# asyncio receives each datagram into a fresh 256 KiB buffer (max_size): above glibc's mmap
# threshold, so every datagram cost an mmap, an mremap and a munmap, 17 µs against 1.7 µs
# for 64 KiB here. No UDP datagram is larger than 65,535 bytes: 64 KiB never cuts one short.
UDP_RECEIVE_SIZE = 65536


def _connection_made(protocol: StunProtocol, transport: asyncio.BaseTransport) -> None:
    """StunProtocol.connection_made, with the transport receiving into a 64 KiB buffer."""
    _stun_connection_made(protocol, transport)
    if isinstance(transport, _SelectorDatagramTransport):
        transport.max_size = UDP_RECEIVE_SIZE


_stun_connection_made = inspect.unwrap(StunProtocol.connection_made)
_connection_made.__wrapped__ = _stun_connection_made  # type: ignore[attr-defined]
StunProtocol.connection_made = _connection_made  # type: ignore[method-assign]

# Decoder threads of forwarded receivers exit at once: aiortc starts one per receiver in
# receive(), whether or not anyone reads the track. We mark the receivers' track queues.
_forwarded_queues: weakref.WeakSet[object] = weakref.WeakSet()
_original_decoder_worker = _receiver_module.decoder_worker


def _decoder_worker(loop, input_q, output_q, error):  # type: ignore[no-untyped-def]
    if output_q in _forwarded_queues:
        return None
    return _original_decoder_worker(loop, input_q, output_q, error)


_receiver_module.decoder_worker = _decoder_worker


def _require(obj: object, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        if not hasattr(obj, prefix + name):
            raise TapError(f"{type(obj).__name__} has no private field {name!r}")


# Called with (packet after RTX unwrap, its codec, whether it arrived as a retransmission). What
# it returns, if anything, is awaited: in aiortc's receive task, or in a task of its own when
# the packet is handled where it arrives (disable_decoding's at_arrival).
PacketSink = Callable[[RtpPacket, RTCRtpCodecParameters, bool], Awaitable[None] | None]


def disable_decoding(
    receiver: RTCRtpReceiver, on_packet: PacketSink, *, at_arrival: bool = False
) -> None:
    """Send every RTP packet of `receiver` to `on_packet`; no jitter buffer, no decoder.

    Call it from the peer connection's "track" event, before the receiver starts. With
    `at_arrival`, packets are handled where aioice receives them (_ArrivingRtp), from the
    first one on; `on_packet` must then be quick and return whatever has to wait.
    """
    _require(receiver, _R, _RECEIVER_FIELDS)
    if getattr(receiver, _R + "decoder_thread") is not None:
        raise TapError("disable_decoding() must run before the receiver starts")
    _forwarded_queues.add(receiver.track._queue)

    # These containers are created in __init__ and filled in receive(): hold them once.
    codecs: dict[int, RTCRtpCodecParameters] = getattr(receiver, _R + "codecs")
    rtx_ssrc: dict[int, int] = getattr(receiver, _R + "rtx_ssrc")
    streams: dict = getattr(receiver, _R + "remote_streams")
    nack_generator = getattr(receiver, _R + "nack_generator")
    estimator = getattr(receiver, _R + "remote_bitrate_estimator")
    statistics_class = _receiver_module.StreamStatistics
    schedule = NackSchedule()
    rtcp_ssrc_field = _R + "rtcp_ssrc"

    def receive(packet: RtpPacket, arrival_time_ms: int) -> Awaitable[None] | None:
        if not receiver._enabled:
            return None
        sends: list[Awaitable[None]] | None = None
        # REMB lets the browser size its bitrate (aiortc does not negotiate transport-cc).
        if estimator is not None and packet.extensions.abs_send_time is not None:
            remb = estimator.add(
                abs_send_time=packet.extensions.abs_send_time,
                arrival_time_ms=arrival_time_ms,
                payload_size=len(packet.payload) + packet.padding_size,
                ssrc=packet.ssrc,
            )
            rtcp_ssrc = getattr(receiver, rtcp_ssrc_field)
            if rtcp_ssrc is not None and remb is not None:
                sends = [
                    receiver._send_rtcp(
                        RtcpPsfbPacket(
                            fmt=RTCP_PSFB_APP,
                            ssrc=rtcp_ssrc,
                            media_ssrc=0,
                            fci=pack_remb_fci(*remb),
                        )
                    )
                ]
        codec = codecs.get(packet.payload_type)
        if codec is None:
            return None if sends is None else in_order(sends)
        stream = streams.get(packet.ssrc)
        if stream is None:
            stream = streams[packet.ssrc] = statistics_class(codec.clockRate)
        stream.add(packet)  # feeds aiortc's receiver reports

        retransmitted = False
        if is_rtx(codec):
            original_ssrc = rtx_ssrc.get(packet.ssrc)
            apt = codec.parameters.get("apt")
            if (
                original_ssrc is None
                or len(packet.payload) < 2
                or not isinstance(apt, int)
                or apt not in codecs
            ):
                return None if sends is None else in_order(sends)
            packet = unwrap_rtx(packet, payload_type=apt, ssrc=original_ssrc)
            codec = codecs[apt]
            retransmitted = True
        if nack_generator is not None:
            # aiortc finds the gaps (and forgets those older than 128 packets); when to ask for
            # each, and again while it is missing, is the schedule's (server/sfu/nack.py).
            new_gap = nack_generator.add(packet)
            schedule.arrived(packet.sequence_number, arrival_time_ms)
            lost = schedule.due(nack_generator.missing, arrival_time_ms, new_gap)
            if lost:
                nack = receiver._send_rtcp_nack(packet.ssrc, lost)
                sends = [nack] if sends is None else [*sends, nack]
        pending = on_packet(packet, codec, retransmitted)
        if sends is None:
            return pending
        if pending is not None:
            sends.append(pending)
        return in_order(sends)

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        # aiortc's receive task: every packet without at_arrival, else those that came before
        # the lane was taken (the first one, which shows which transport carries them).
        if at_arrival:
            take_arriving_rtp(receiver)
        pending = receive(packet, arrival_time_ms)
        if pending is not None:
            await pending

    receiver._handle_rtp_packet = handle_rtp_packet  # type: ignore[method-assign]
    if at_arrival:
        receiver._giaoban_receive = receive  # type: ignore[attr-defined]


async def in_order(work: list[Awaitable[None]]) -> None:
    """Await each of `work` in turn: what a packet sink returns when several things must wait."""
    for step in work:
        await step


async def request_keyframe(receiver: RTCRtpReceiver, media_ssrc: int) -> None:
    """Send a PLI for `media_ssrc` to the publisher of `receiver`."""
    await receiver._send_rtcp_pli(media_ssrc)


def decoding(receiver: RTCRtpReceiver) -> bool:
    """True if aiortc runs a decoder thread for this receiver (never, for forwarded ones)."""
    thread = getattr(receiver, _R + "decoder_thread", None)
    return thread is not None and thread.is_alive()


@dataclass
class SendParameters:
    """What the subscriber negotiated for one down track."""

    codecs: list[RTCRtpCodecParameters]
    header_extensions: HeaderExtensionsMap
    extension_ids: ExtensionIds
    mid: str | None
    rtx_payload_types: dict[int, int] = field(default_factory=dict)  # media pt -> rtx pt

    def __post_init__(self) -> None:
        self.mid_bytes = self.mid.encode() if self.mid else None
        # Subscribers whose extension ids and mid agree share one header-extension block.
        ids = self.extension_ids
        self.extension_key = (ids.mid, ids.abs_send_time, ids.audio_level, self.mid)


@dataclass
class SenderFeedback:
    on_nack: Callable[[list[int]], Awaitable[None]]
    on_keyframe_request: Callable[[], None]
    on_remb: Callable[[int], None]
    on_started: Callable[[SendParameters], None]


_reporting_classes: dict[type, type] = {}


def _reported(name: str) -> property:
    def get(sender: object) -> int:
        return getattr(sender._giaoban_forwarding, name)  # type: ignore[attr-defined]

    def put(sender: object, value: int) -> None:
        setattr(sender._giaoban_forwarding, name, value)  # type: ignore[attr-defined]

    return property(get, put)


def _reporting_class(cls: type) -> type:
    """`cls` with its sender-report fields read from the ForwardingSender (cached per class)."""
    subclass = _reporting_classes.get(cls)
    if subclass is None:
        fields = {_S + field: _reported(ours) for field, ours in _REPORT_FIELDS.items()}
        subclass = _reporting_classes[cls] = type(cls.__name__, (cls,), fields)
    return subclass


class ForwardingSender(fanout.Path):  # type: ignore[misc,valid-type]
    """Drives an aiortc RTCRtpSender whose track is never read: we write its RTP ourselves.

    Its path state, and the direct path it finds, are read by the C forwarding loop too
    (server/sfu/fanout.py), which sends the common packets itself."""

    # Every so many packets send_now looks whether the ICE connection nominated another pair.
    PATH_CHECK_PACKETS = 32
    # Seconds between sender reports (aiortc: 0.5-1.5 s at random; libwebrtc: 1 s for video).
    REPORT_INTERVAL = 1.0

    def __init__(self, sender: RTCRtpSender, feedback: SenderFeedback) -> None:
        _require(sender, _S, _SENDER_FIELDS)
        self.sender = sender
        self.ssrc: int = sender._ssrc  # fixed for the sender's life
        self.parameters: SendParameters | None = None
        self._feedback = feedback
        self._rtx_seq = 0
        # The current path, as send_now found it: the DTLS transport and its ICE connection's
        # nominated pairs, the pair in use, its asyncio UDP transport (and, unless connected,
        # that transport's socket), the remote address and the SRTP session with its context.
        self._dtls: object | None = None
        self._nominated: dict[int, object] = {}
        self._pair: object | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._socket: object | None = None
        self._remote: tuple[str, int] | None = None
        self._srtp: pylibsrtp.Session | None = None
        self._srtp_context: object = None
        self._connected = False  # the DTLS transport's state, kept by its statechange event
        self._unchecked = 0  # packets sent since the nominated pair was last looked at
        # What aiortc's sender reports say (ntp_time, rtp_timestamp, octet_count, packet_count:
        # the last packet's timestamps, octets and packets), from aiortc's values so far.
        for theirs, ours in _REPORT_FIELDS.items():
            setattr(self, ours, getattr(sender, _S + theirs))
        # Sender reports: sent with the packets, by send_now or the C loop (start_reports).
        self.report_at = 0.0
        self.report_interval = self.REPORT_INTERVAL
        self.report_template: bytes | None = None
        sender._giaoban_forwarding = self  # type: ignore[attr-defined]
        sender.__class__ = _reporting_class(type(sender))
        sender._run_rtcp = self._say_goodbye_when_stopped  # type: ignore[method-assign]
        original_send = sender.send
        original_rtcp = sender._handle_rtcp_packet

        async def send(parameters: RTCRtpSendParameters) -> None:
            first = self.parameters is None
            ext_map = HeaderExtensionsMap()
            ext_map.configure(parameters)
            rtx = {
                int(c.parameters["apt"]): c.payloadType
                for c in parameters.codecs
                if is_rtx(c) and isinstance(c.parameters.get("apt"), int)
            }
            self.parameters = SendParameters(
                list(parameters.codecs),
                ext_map,
                ExtensionIds.from_negotiated(parameters.headerExtensions),
                parameters.muxId,
                rtx,
            )
            await original_send(parameters)
            self._bind_transport()
            if first:
                self.start_reports(parameters.rtcp.cname)
                feedback.on_started(self.parameters)

        async def handle_rtcp_packet(packet) -> None:  # type: ignore[no-untyped-def]
            if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                await feedback.on_nack(list(packet.lost))
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt in (
                RTCP_PSFB_PLI,
                RTCP_PSFB_FIR,
            ):
                feedback.on_keyframe_request()
            elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                try:
                    bitrate, ssrcs = unpack_remb_fci(packet.fci)
                except ValueError:
                    return
                if sender._ssrc in ssrcs:
                    self.bitrate_estimated(bitrate)
            else:
                await original_rtcp(packet)  # receiver reports: RTT and stats

        sender.send = send  # type: ignore[method-assign]
        sender._handle_rtcp_packet = handle_rtcp_packet  # type: ignore[method-assign]

    def start_reports(self, cname: str | None) -> None:
        """Send sender reports (SR, and SDES with `cname`) from now on, with the packets.

        aiortc's RTCP loop sends them from a task per sender that wakes every second: at 64
        subscribers, 128 wake-ups a second of Python. Here the packet that finds a report due
        takes it along (send_now, or the C loop), with its own NTP and RTP times. The first
        is due at a random time in 0.5-1.5 s, as aiortc's, so that the reports of senders
        started together do not all go with the same packet."""
        info = RtcpSenderInfo(ntp_timestamp=0, rtp_timestamp=0, packet_count=0, octet_count=0)
        template = bytes(RtcpSrPacket(ssrc=self.ssrc, sender_info=info))
        if cname is not None:
            chunk = RtcpSourceInfo(ssrc=self.ssrc, items=[(1, cname.encode("utf8"))])
            template += bytes(RtcpSdesPacket(chunks=[chunk]))
        self.report_template = template
        self.report_at = time.monotonic() + 0.5 + random.random()

    def _report_due(self, now: float) -> bytes | None:
        """The sender report due at `now` after the packet just counted, else None (the C
        loop writes the same bytes: _fanout.c send_report)."""
        if not self.report_at or now < self.report_at:
            return None
        self.report_at = now + self.report_interval
        template = self.report_template
        if template is None:
            return None
        report = bytearray(template)
        _SENDER_INFO.pack_into(
            report,
            8,
            self.ntp_time >> 32,
            self.ntp_time & 0xFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        return bytes(report)

    async def _say_goodbye_when_stopped(self) -> None:
        """In place of aiortc's RTCP loop: nothing to do until the sender stops, then BYE."""
        sender = self.sender
        getattr(sender, _S + "rtcp_started").set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            pass
        await sender._send_rtcp([RtcpByePacket(sources=[self.ssrc])])
        getattr(sender, _S + "rtcp_exited").set()

    def bitrate_estimated(self, bitrate: int) -> None:
        """The subscriber's REMB for this sender's stream: `bitrate` bits/s."""
        self._feedback.on_remb(bitrate)

    def send_now(
        self,
        header: bytes,
        tail: bytes,
        timestamp: int,
        ntp_time: int,
        max_backlog: int,
        now: float,
    ) -> bool | None:
        """Send one RTP packet (fixed header, then the rest) synchronously: SRTP-protect it and
        write it to the subscriber's UDP socket. False: the socket's buffer holds more than
        `max_backlog` (a slow subscriber: the packet is dropped); None: no direct path (TURN),
        use send_rtp.

        This skips four nested coroutines of aiortc's path per packet, which is most of the
        forwarding cost. With nothing queued in asyncio's transport, the datagram goes straight
        to its socket (asyncio's own sendto takes over on any error: it queues on EAGAIN and
        reports the rest). Raises ConnectionError when the connection is not up.
        """
        if (
            not self._connected or self._udp is None or self._unchecked >= self.PATH_CHECK_PACKETS
        ) and self._find_path():
            return None
        self._unchecked += 1
        udp = self._udp
        backlog = udp.get_write_buffer_size()  # type: ignore[union-attr]
        if backlog > max_backlog:
            return False
        # SRTP protect, as pylibsrtp's Session.protect does, in one buffer shared by all.
        size = 12 + len(tail)
        if size > _SRTP_ROOM:
            raise ValueError("packet is too long")
        _SRTP_LEN[0] = size
        _SRTP_BUFFER[0:12] = header
        _SRTP_BUFFER[12:size] = tail
        status = _srtp_protect(self._srtp_context, _SRTP_DATA, _SRTP_LEN)
        if status:
            raise pylibsrtp.Error(_SRTP_ERRORS[status])
        self._send_datagram(_SRTP_BUFFER[0 : _SRTP_LEN[0]], backlog)
        self.ntp_time = ntp_time
        self.rtp_timestamp = timestamp
        self.octet_count += len(tail)
        self.packet_count += 1
        report = self._report_due(now)
        if report is not None:
            self._send_datagram(self._srtp.protect_rtcp(report))  # type: ignore[union-attr]
        return True

    def _send_datagram(self, datagram: bytes, backlog: int = 0) -> None:
        """To the socket itself when nothing is queued, else through asyncio's transport
        (which also takes over on any error: it queues on EAGAIN and reports the rest)."""
        udp = self._udp
        raw = self._socket
        if backlog or raw is None:
            udp.sendto(datagram, self._remote)  # type: ignore[union-attr]
        else:
            try:
                raw.sendto(datagram, self._remote)  # type: ignore[attr-defined]
            except OSError:
                udp.sendto(datagram, self._remote)  # type: ignore[union-attr]

    def _bind_transport(self) -> None:
        """Follow the sender's DTLS transport: its state from now on comes by its event."""
        dtls = self.sender._RTCRtpSender__transport  # type: ignore[attr-defined]
        if dtls is self._dtls:
            return
        self._dtls = dtls
        self._nominated = dtls.transport._connection._nominated  # cleared, never replaced
        self._pair = None
        self._udp = None
        self._set_direct(None, -1, None, 0)

        def state_changed() -> None:
            if self._dtls is dtls:
                self._connected = dtls._state is _DTLS_CONNECTED

        dtls.on("statechange", state_changed)
        self._connected = dtls._state is _DTLS_CONNECTED

    def _find_path(self) -> bool:
        """Look up the path packets take now; True if there is no direct one (TURN).

        Raises ConnectionError when the connection is not up.
        """
        self._bind_transport()
        self._unchecked = 0
        if not self._connected:
            raise ConnectionError("down connection is not connected")
        pair = self._nominated.get(1)
        if pair is None:
            raise ConnectionError("no nominated ICE pair")
        if pair is not self._pair or self._udp is None:
            protocol = pair.protocol  # type: ignore[attr-defined]
            if type(protocol) is not StunProtocol:
                self._udp = None
                self._set_direct(None, -1, None, 0)
                return True
            udp = protocol.transport
            self._udp = udp
            self._socket = getattr(udp, "_sock", None) if not getattr(udp, "_address", 1) else None
            self._remote = pair.remote_addr  # type: ignore[attr-defined]
            dtls = self._dtls
            self._srtp = dtls._tx_srtp  # type: ignore[attr-defined]
            self._srtp_context = self._srtp._srtp[0]  # type: ignore[union-attr]
            self._pair = pair
            # The C loop sends on the same socket with the same SRTP context; the socket object
            # it keeps holds the descriptor, and it sends only while the transport is open.
            raw = self._socket
            self._set_direct(
                raw,
                raw.fileno() if raw is not None else -1,  # type: ignore[attr-defined]
                self._remote,
                int(_srtp_ffi.cast("uintptr_t", self._srtp_context)),
            )
        return False

    def _count(self, data: bytes, timestamp: int, ntp_time: int) -> None:
        """Count a packet sent through aiortc's path in the sender reports."""
        self.ntp_time = ntp_time
        self.rtp_timestamp = timestamp
        self.octet_count += len(data) - 12
        self.packet_count += 1

    async def send_rtp(self, data: bytes, timestamp: int) -> None:
        """Send one RTP packet through aiortc's own path (used where send_now cannot)."""
        await self.sender.transport._send_rtp(data)
        self._count(data, timestamp, clock.current_ntp_time())
        report = self._report_due(time.monotonic())
        if report is not None:
            await self.sender.transport._send_rtp(report)  # SRTCP by its packet type

    def resend_now(self, data: bytes) -> bool:
        """Retransmit a packet from history at once, wrapped as RTX when the subscriber
        negotiated it, protected and written to its socket as send_now writes packets. False:
        no direct path (TURN), use resend. Raises ConnectionError when the connection is not up.

        aiortc's path (resend) costs four nested coroutines and a second SRTP copy per
        retransmission: on a lossy link that is a few per cent of the packets."""
        params = self.parameters
        if params is None:
            return True  # not started: nothing was sent, nothing to resend
        if (
            not self._connected or self._udp is None or self._unchecked >= self.PATH_CHECK_PACKETS
        ) and self._find_path():
            return False
        self._unchecked += 1
        data = self._as_retransmission(data, params)
        if len(data) > _SRTP_ROOM:
            raise ValueError("packet is too long")
        _SRTP_LEN[0] = len(data)
        _SRTP_BUFFER[0 : len(data)] = data
        status = _srtp_protect(self._srtp_context, _SRTP_DATA, _SRTP_LEN)
        if status:
            raise pylibsrtp.Error(_SRTP_ERRORS[status])
        backlog = self._udp.get_write_buffer_size()  # type: ignore[union-attr]
        self._send_datagram(_SRTP_BUFFER[0 : _SRTP_LEN[0]], backlog)
        return True

    async def resend(self, data: bytes) -> None:
        """Retransmit a packet from history through aiortc's path (where resend_now cannot)."""
        params = self.parameters
        if params is None:
            return
        await self.sender.transport._send_rtp(self._as_retransmission(data, params))

    def _as_retransmission(self, data: bytes, params: SendParameters) -> bytes:
        """`data` wrapped as RTX (RFC 4588) when the subscriber negotiated RTX for its codec."""
        packet = RtpPacket.parse(data, params.header_extensions)
        rtx_pt = params.rtx_payload_types.get(packet.payload_type)
        if rtx_pt is None:
            return data
        packet = wrap_rtx(
            packet,
            payload_type=rtx_pt,
            sequence_number=self._rtx_seq,
            ssrc=self.sender._rtx_ssrc,
        )
        self._rtx_seq = (self._rtx_seq + 1) & 0xFFFF
        return packet.serialize(params.header_extensions)


class _Lane:
    """Datagrams of one DTLS transport taken where aioice receives them (a subclass says
    which), the rest handed on to `deliver`; work that has to wait runs in held tasks."""

    failure = "handling a received datagram failed"

    def __init__(self, dtls: RTCDtlsTransport, deliver: Callable[[bytes, int], None]) -> None:
        self.dtls = dtls
        self.deliver = deliver  # the connection's data_received before this lane: aioice's queue
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error(self.failure, exc_info=task.exception())


class _SubscriberRtcp(_Lane):
    """The RTCP a subscriber sends on its down connection, read as it arrives.

    aioice hands every datagram to a queue that aiortc's DTLS transport drains in a task, which
    decrypts and parses it and routes each packet to a sender: about 0.2 ms of Python per
    datagram on a slow machine, for receiver reports nothing reads. Here an SRTCP datagram is
    decrypted where it arrives and read by its headers (server/sfu/rtcp_feedback.py): receiver
    reports and descriptions end there, REMB goes to the senders it names, each receiver
    reference time is answered with a DLRR, and a compound with a NACK, PLI or FIR (or any
    other packet type) goes to aiortc's handlers as before. Anything that is not SRTCP on a
    connected transport takes aioice's queue, as it would without this.
    """

    failure = "subscriber RTCP handling failed"

    def __init__(self, dtls: RTCDtlsTransport, deliver: Callable[[bytes, int], None]) -> None:
        super().__init__(dtls, deliver)
        self.dlrr_ssrc = 0
        self.dlrr_video = False
        # The C Reader on the nominated pair's socket (_rtcp_reader.c), False where none is
        # used (not built, the Python loop chosen, a pair through TURN), None until looked at.
        self.reader: object = None if RTCP_IN_C else False

    def answer_from(self, sender_ssrc: int, video: bool) -> None:
        """DLRRs come from one of the transport's senders, a video one's when there is one:
        Chromium shows the round-trip time in that stream's statistics (remote-outbound-rtp),
        and its NACK timing takes it for every stream of the connection."""
        if not self.dlrr_ssrc or (video and not self.dlrr_video):
            self.dlrr_ssrc, self.dlrr_video = sender_ssrc, video

    def data_received(self, data: bytes, component: int) -> None:
        dtls = self.dtls
        srtp = dtls._rx_srtp  # type: ignore[attr-defined]
        # RFC 5761: RTCP packet types 192-223 share the first byte's range with RTP.
        if (
            srtp is None
            or len(data) < 8
            or not 127 < data[0] < 192
            or not 191 < data[1] < 224
            or dtls._state is not _DTLS_CONNECTED
        ):
            self.deliver(data, component)
            return
        _count_received(dtls, data)
        arrived = time.monotonic()
        try:
            compound = _unprotect(_srtp_unprotect_rtcp, srtp, data)
        except pylibsrtp.Error:
            return  # as aiortc does: a datagram that does not authenticate is dropped
        self.read_compound(compound, arrived)
        if self.reader is None:
            self._read_in_c()

    def read_compound(self, compound: bytes, arrived: float) -> None:
        """Act on a decrypted compound that arrived at `arrived` (time.monotonic())."""
        dtls = self.dtls
        read = rtcp_feedback.read_subscriber_rtcp(compound)
        for receiver_ssrc, last_rr in read.reference_times.items():
            self._spawn(self._answer_reference_time(receiver_ssrc, last_rr, arrived))
        if read.for_aiortc:
            # Its REMB too: aiortc's routing hands each packet to its sender's handler.
            self._spawn(dtls._handle_rtcp_data(compound))
            return
        senders = dtls._rtp_router.senders  # type: ignore[attr-defined]
        for bitrate, ssrcs in read.remb:
            for ssrc in ssrcs:
                forwarding = getattr(senders.get(ssrc), "_giaoban_forwarding", None)
                if forwarding is not None:
                    forwarding.bitrate_estimated(bitrate)

    def _read_in_c(self) -> None:
        """Have a C Reader read the nominated pair's socket from now on (_rtcp_reader.c):
        the subscriber's reports end there, the rest comes back here (read_compound) or goes
        to aioice's protocol as asyncio's transport would hand it. Only for a pair on a plain
        UDP socket of asyncio's selector loop; the Reader stops decrypting when the transport
        leaves the connected state, and is gone with the socket's transport."""
        dtls = self.dtls
        pair = dtls.transport._connection._nominated.get(1)  # type: ignore[attr-defined]
        if pair is None:
            return  # not nominated yet: look again with the next datagram
        self.reader = False
        protocol = pair.protocol
        udp = getattr(protocol, "transport", None)
        # asyncio's own selector transport (made by a selector loop only): its reader is ours.
        if (
            type(protocol) is not StunProtocol
            or type(udp) is not _SelectorDatagramTransport
            or udp.is_closing()
        ):
            return
        srtp = dtls._rx_srtp  # type: ignore[attr-defined]
        reader = _rtcp_reader.Reader(protocol, udp._sock_fd, dtls, self.read_compound)
        reader.set_srtp(srtp, int(_srtp_ffi.cast("uintptr_t", srtp._srtp[0])))

        def state_changed() -> None:
            if dtls._state is not _DTLS_CONNECTED:
                reader.set_srtp(None, 0)

        dtls.on("statechange", state_changed)
        udp._loop._add_reader(udp._sock_fd, reader.read_ready)
        self.reader = reader

    async def _answer_reference_time(
        self, receiver_ssrc: int, last_rr: int, arrived: float
    ) -> None:
        reply = rtcp_xr.delay_since_last_rr(
            self.dlrr_ssrc, receiver_ssrc, last_rr, time.monotonic() - arrived
        )
        try:
            await self.dtls._send_rtp(reply)  # RTCP by its packet type: SRTCP-protected
        except ConnectionError:
            pass


def take_subscriber_rtcp(dtls: RTCDtlsTransport, sender_ssrc: int, video: bool) -> None:
    """Read the RTCP arriving on a down connection's `dtls` as it arrives (_SubscriberRtcp),
    answering receiver reference times from `sender_ssrc` (or another sender's: the
    transport's first video sender's). Once per transport; a bundled one carries every m-line.
    """
    lane: _SubscriberRtcp | None = getattr(dtls, "_giaoban_subscriber_rtcp", None)
    if lane is None:
        connection = dtls.transport._connection  # type: ignore[attr-defined]
        lane = _SubscriberRtcp(dtls, connection.data_received)
        connection.data_received = lane.data_received
        dtls._giaoban_subscriber_rtcp = lane  # type: ignore[attr-defined]
    lane.answer_from(sender_ssrc, video)


class _ArrivingRtp(_Lane):
    """RTP arriving on a connection the node receives media on, handled where it arrives.

    Through aioice's queue each packet woke aiortc's DTLS task on the next turn of the event
    loop before it was decrypted, parsed and forwarded: a task switch and a second poll per
    packet. Here an SRTP packet on a connected transport is decrypted, parsed and routed as
    aiortc's task does, and goes to its receiver's tap (disable_decoding with at_arrival) at
    once; what the tap returns to wait for (a NACK or REMB to send, a forward through aiortc's
    own path) runs in a task. RTCP, DTLS and anything before the transport connects take
    aioice's queue as before.
    """

    failure = "handling a received packet failed"

    def data_received(self, data: bytes, component: int) -> None:
        dtls = self.dtls
        srtp = dtls._rx_srtp  # type: ignore[attr-defined]
        # aiortc's own test (is_rtcp): second byte 192-208 is RTCP, anything else RTP.
        if (
            srtp is None
            or len(data) < 12
            or not 127 < data[0] < 192
            or 191 < data[1] < 209
            or dtls._state is not _DTLS_CONNECTED
        ):
            self.deliver(data, component)
            return
        _count_received(dtls, data)
        arrival_time_ms = clock.current_ms()
        try:
            packet = RtpPacket.parse(
                _unprotect(_srtp_unprotect, srtp, data), dtls._rtp_header_extensions_map
            )
        except (pylibsrtp.Error, ValueError):
            return  # as aiortc does: a packet that does not authenticate or parse is dropped
        receiver = dtls._rtp_router.route_rtp(packet)  # type: ignore[attr-defined]
        if receiver is None:
            return
        receive = getattr(receiver, "_giaoban_receive", None)
        try:
            if receive is None:  # a receiver left untapped: aiortc's handler, in order
                pending = receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)
            else:
                pending = receive(packet, arrival_time_ms)
        except Exception:
            # Raised out of here, asyncio would close the socket: one packet must not.
            logger.exception("forwarding a received packet failed")
            return
        if pending is not None:
            self._spawn(pending)


def take_arriving_rtp(receiver: RTCRtpReceiver) -> None:
    """Handle the RTP of `receiver`'s transport where it arrives (_ArrivingRtp); once per
    transport, which a bundled connection shares between its m-lines."""
    dtls = receiver.transport
    if getattr(dtls, "_giaoban_arriving_rtp", None) is not None:
        return
    connection = dtls.transport._connection  # type: ignore[attr-defined]
    lane = _ArrivingRtp(dtls, connection.data_received)
    connection.data_received = lane.data_received
    dtls._giaoban_arriving_rtp = lane  # type: ignore[attr-defined]


def _count_received(dtls: RTCDtlsTransport, data: bytes) -> None:
    """aiortc's transport statistics (bytes and packets received) count what the lanes take."""
    dtls._RTCDtlsTransport__rx_bytes += len(data)  # type: ignore[attr-defined]
    dtls._RTCDtlsTransport__rx_packets += 1  # type: ignore[attr-defined]


if _rtcp_reader is not None:
    _rtcp_reader.configure(
        int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_unprotect_rtcp")))
    )


def set_receive_filter(drop: Callable[[bytes], bool] | None) -> None:
    """Loss tests only: `drop` is given each SRTCP datagram a C Reader reads (True drops it);
    what goes through aioice's protocol is not given to it."""
    if _rtcp_reader is not None:
        _rtcp_reader.set_receive_filter(drop)


# The C forwarding loop protects with the libsrtp that pylibsrtp links (checked by
# _check_srtp above), up to the same packet size, and hands back to send_now as often.
fanout.configure(
    int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect"))),
    int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect_rtcp"))),
    pylibsrtp.SRTP_MAX_TRAILER_LEN,
    pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN,
    ForwardingSender.PATH_CHECK_PACKETS,
    pylibsrtp.Error,
)
