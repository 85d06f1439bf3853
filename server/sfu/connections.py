"""A participant's peer connections: up ones (the client publishes and offers) and the down
one (the node offers and re-offers as tracks come and go)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.codecs import is_rtx
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecCapability,
    RTCRtpCodecParameters,
)
from aiortc.rtp import RtpPacket
from aiortc.sdp import SessionDescription, candidate_from_sdp

from server.errors import BadRequest, Conflict
from server.sfu.aiortc_tap import (
    ForwardingSender,
    SenderFeedback,
    SendParameters,
    disable_decoding,
    take_subscriber_rtcp,
)
from server.sfu.down_track import DownTrack
from server.sfu.ice import add_public_address
from server.sfu.rtp_rewrite import PacketHistory, StreamRewriter
from server.sfu.stats import SfuStats
from server.sfu.up_track import AudioLevelSink, UpTrack

log = logging.getLogger(__name__)

SOURCES = ("camera", "microphone", "screen", "screen-audio")


@dataclass(frozen=True)
class MediaSettings:
    """What every peer connection of the node is built with (from the node's config)."""

    ice_servers: tuple[dict[str, Any], ...] = ()
    public_address: str | None = None

    def rtc_configuration(self) -> RTCConfiguration:
        servers = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in self.ice_servers
        ]
        return RTCConfiguration(iceServers=servers)

    def local_sdp(self, sdp: str) -> str:
        return add_public_address(sdp, self.public_address) if self.public_address else sdp


def parse_sdp(sdp: str) -> SessionDescription:
    """Parse an SDP, turning any parser failure into BadRequest."""
    try:
        return SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc's parser raises many kinds on garbage
        raise BadRequest(f"SDP: {exc}") from exc


_RRTR = RTCRtcpFeedback(type="rrtr")


def with_receiver_reference_times(sdp: str) -> str:
    """The offer with `rrtr` on every video codec: the browser then sends the reference times
    from which it learns its round-trip time (server/sfu/rtcp_xr.py)."""
    description = SessionDescription.parse(sdp)
    for media in description.media:
        if media.kind == "video":
            for codec in media.rtp.codecs:
                if not is_rtx(codec) and _RRTR not in codec.rtcpFeedback:
                    codec.rtcpFeedback.append(_RRTR)
    return str(description)


def _ice_ufrag(description: SessionDescription) -> str | None:
    for media in description.media:
        if media.ice is not None and media.ice.usernameFragment:
            return media.ice.usernameFragment
    return None


async def add_ice_candidate(pc: RTCPeerConnection, candidate: dict[str, Any]) -> None:
    """Add a browser-trickled candidate (RTCIceCandidateInit); an empty one ends gathering."""
    line = candidate.get("candidate") or ""
    if not line:
        return
    if line.startswith("candidate:"):
        line = line[len("candidate:") :]
    try:
        parsed = candidate_from_sdp(line)
    except Exception as exc:  # aiortc's parser asserts and indexes: any failure is bad input
        raise BadRequest(f"ICE candidate: {type(exc).__name__} {exc}") from exc
    parsed.sdpMid = candidate.get("sdpMid")
    parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
    if parsed.sdpMid is None and parsed.sdpMLineIndex is None:
        raise BadRequest("ICE candidate needs sdpMid or sdpMLineIndex")
    try:
        await pc.addIceCandidate(parsed)
    except (ValueError, KeyError, AssertionError, AttributeError) as exc:
        raise BadRequest(f"ICE candidate: {type(exc).__name__} {exc}") from exc


class _ReceiverTap:
    """Where a tapped receiver's packets go: nowhere until its UpTrack exists."""

    def __init__(self) -> None:
        self.track: UpTrack | None = None

    def on_packet(
        self, packet: RtpPacket, codec: RTCRtpCodecParameters, rtx: bool
    ) -> Awaitable[None] | None:
        if self.track is None:
            return None
        return self.track.on_packet(packet, codec, rtx)


class UpConnection:
    """A publishing connection; each received track becomes an UpTrack (never decoded)."""

    def __init__(
        self,
        name: str,
        participant_id: str,
        settings: MediaSettings,
        stats: SfuStats,
        on_audio_level: AudioLevelSink,
    ) -> None:
        self.name = name
        self.participant_id = participant_id
        self.tracks: dict[str, UpTrack] = {}  # by mid
        self._settings = settings
        self._stats = stats
        self._on_audio_level = on_audio_level
        self.pc = RTCPeerConnection(settings.rtc_configuration())
        stats.peer_connections += 1
        self._closed = False
        self._taps: dict[int, _ReceiverTap] = {}

        @self.pc.on("track")
        def _track(track: MediaStreamTrack) -> None:
            # Emitted inside setRemoteDescription, before aiortc can start the receiver (on a
            # renegotiation it starts while the answer is made): tap it now, bind it later.
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    tap = self._taps[id(transceiver.receiver)] = _ReceiverTap()
                    disable_decoding(transceiver.receiver, tap.on_packet, at_arrival=True)

    def replaced_by(self, offer_sdp: str) -> bool:
        """True if `offer_sdp` comes from a different peer connection (other ICE credentials),
        or this one has failed: it cannot be renegotiated, only replaced."""
        if self.pc.connectionState in ("failed", "closed"):
            return True
        current = self.pc.remoteDescription
        if current is None:
            return False
        return _ice_ufrag(parse_sdp(offer_sdp)) != _ice_ufrag(parse_sdp(current.sdp))

    async def negotiate(self, offer_sdp: str, sources: dict[str, str]) -> tuple[str, list[UpTrack]]:
        """Apply the client's offer; return the answer and the tracks it adds."""
        offer = parse_sdp(offer_sdp)
        if not any(m.kind in ("audio", "video") for m in offer.media):
            raise BadRequest("the offer has no audio or video")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except (ValueError, AssertionError, KeyError, TypeError) as exc:
            raise BadRequest(f"the offer cannot be used: {exc}") from exc
        except Exception as exc:  # aiortc raises InvalidStateError/OperationError and others
            raise BadRequest(f"the offer cannot be used: {type(exc).__name__}: {exc}") from exc
        local = self.pc.localDescription.sdp
        negotiated = {m.rtp.muxId: m for m in SessionDescription.parse(local).media}
        added: list[UpTrack] = []
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid is None or mid in self.tracks or id(transceiver.receiver) not in self._taps:
                continue
            media = negotiated.get(mid)
            if media is None or media.direction not in ("recvonly", "sendrecv"):
                continue
            codec = next((c for c in media.rtp.codecs if not is_rtx(c)), None)
            if codec is None:
                continue
            default = "camera" if transceiver.kind == "video" else "microphone"
            source = sources.get(mid, default)
            track = UpTrack(
                f"t-{uuid.uuid4().hex[:12]}",
                self.participant_id,
                transceiver.kind,
                source,
                transceiver.receiver,
                codec,
                self._stats,
                self._on_audio_level if transceiver.kind == "audio" else None,
            )
            self._taps[id(transceiver.receiver)].track = track
            self.tracks[mid] = track
            added.append(track)
        return self._settings.local_sdp(local), added

    async def add_ice_candidate(self, candidate: dict[str, Any]) -> None:
        await add_ice_candidate(self.pc, candidate)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for track in self.tracks.values():
            await track.close()
        await self.pc.close()
        self._stats.peer_connections -= 1


class SilentTrack(MediaStreamTrack):
    """Stands in a sender so aiortc negotiates it; never yields a frame, so nothing is encoded."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self._ended = asyncio.Event()

    async def recv(self) -> Any:
        await self._ended.wait()
        raise MediaStreamError

    def stop(self) -> None:
        super().stop()
        self._ended.set()


def codec_preferences(kind: str, codec: RTCRtpCodecParameters) -> list[RTCRtpCodecCapability]:
    """Offer the subscriber exactly the publisher's codec (and RTX for video)."""
    caps = RTCRtpSender.getCapabilities(kind).codecs
    same = [
        c
        for c in caps
        if c.mimeType.lower() == codec.mimeType.lower() and c.parameters == codec.parameters
    ]
    if not same:
        same = [c for c in caps if c.mimeType.lower() == codec.mimeType.lower()][:1]
    rtx = [c for c in caps if is_rtx(c)] if kind == "video" else []
    return same[:1] + rtx[:1]


class _Slot:
    """One sendonly m-line of the down connection; outlives the tracks it carries."""

    def __init__(self, transceiver: RTCRtpTransceiver, up: UpTrack) -> None:
        self.transceiver = transceiver
        self.kind = up.kind
        self.mime = up.codec.mimeType.lower()
        self.params = dict(up.codec.parameters)
        self.clock_rate = up.codec.clockRate
        self.rewriter = StreamRewriter(up.codec.clockRate)
        self.history = PacketHistory(512 if up.kind == "video" else 64)
        self.down: DownTrack | None = None
        self.forwarder = ForwardingSender(
            transceiver.sender,
            SenderFeedback(
                on_nack=self._on_nack,
                on_keyframe_request=self._on_keyframe_request,
                on_remb=self._on_remb,
                on_started=self._on_started,
            ),
        )
        self.remb_bitrate: int | None = None

    def fits(self, up: UpTrack) -> bool:
        return (
            self.down is None
            and self.kind == up.kind
            and self.clock_rate == up.codec.clockRate
            and self.mime == up.codec.mimeType.lower()
            and self.params == up.codec.parameters
        )

    def _on_started(self, params: SendParameters) -> None:
        if self.down is not None:
            self.down.start(params)

    async def _on_nack(self, lost: list[int]) -> None:
        if self.down is not None:
            await self.down.answer_nack(lost)

    def _on_keyframe_request(self) -> None:
        if self.down is not None:
            self.down.up.request_keyframe()

    def _on_remb(self, bitrate: int) -> None:
        self.remb_bitrate = bitrate


OfferSink = Callable[[int, str, list[dict[str, str]]], Awaitable[None]]


@dataclass
class DownConnection:
    """The subscribing connection: one sendonly transceiver per forwarded track.

    aiortc cannot remove m-lines: a removed track's transceiver turns inactive and is reused for
    a later track of the same codec. At most one offer is in flight; changes made meanwhile are
    sent in the next offer once the answer arrives.
    """

    participant_id: str
    settings: MediaSettings
    stats: SfuStats
    send_offer: OfferSink
    pc: RTCPeerConnection = field(init=False)
    revision: int = 0
    _slots: list[_Slot] = field(default_factory=list)
    _awaiting: int | None = None
    _dirty: bool = False
    _task: asyncio.Task[None] | None = None
    _closed: bool = False

    def __post_init__(self) -> None:
        self.pc = RTCPeerConnection(self.settings.rtc_configuration())
        self.stats.peer_connections += 1

    @property
    def tracks(self) -> list[DownTrack]:
        return [slot.down for slot in self._slots if slot.down is not None]

    def add(self, up: UpTrack) -> None:
        """Start forwarding `up` to this subscriber (takes effect with the next offer)."""
        if any(s.down is not None and s.down.up is up for s in self._slots):
            return
        slot = next((s for s in self._slots if s.fits(up)), None)
        if slot is None:
            transceiver = self.pc.addTransceiver(SilentTrack(up.kind), direction="sendonly")
            transceiver.setCodecPreferences(codec_preferences(up.kind, up.codec))
            slot = _Slot(transceiver, up)
            self._slots.append(slot)
        else:
            slot.transceiver.direction = "sendonly"
        slot.down = DownTrack(
            up, slot.forwarder, slot.rewriter, slot.history, self.participant_id, self.stats
        )
        up.attach(slot.down)
        self._changed()

    def remove(self, up: UpTrack) -> None:
        """Stop forwarding `up`; its m-line goes inactive in the next offer."""
        for slot in self._slots:
            if slot.down is not None and slot.down.up is up:
                up.detach(slot.down)
                slot.down = None
                slot.transceiver.direction = "inactive"
                self._changed()

    def _changed(self) -> None:
        self._dirty = True
        if self._task is None and not self._closed:
            self._task = asyncio.ensure_future(self._negotiate())

    async def _negotiate(self) -> None:
        try:
            while self._dirty and self._awaiting is None and not self._closed:
                self._dirty = False
                offer = await self.pc.createOffer()
                await self.pc.setLocalDescription(offer)
                self.revision += 1
                self._awaiting = self.revision
                mapping = [
                    {"mid": s.transceiver.mid, "track_id": s.down.up.id}
                    for s in self._slots
                    if s.down is not None and s.transceiver.mid
                ]
                sdp = self.settings.local_sdp(
                    with_receiver_reference_times(self.pc.localDescription.sdp)
                )
                await self.send_offer(self.revision, sdp, mapping)
        except Exception:
            log.exception("down offer for participant %s failed", self.participant_id)
        finally:
            self._task = None

    async def apply_answer(self, revision: int, sdp: str) -> None:
        """Apply the subscriber's answer to offer `revision`."""
        if self._awaiting is None or revision != self._awaiting:
            raise Conflict(f"no offer {revision} is waiting for an answer")
        parse_sdp(sdp)
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        except Exception as exc:
            raise BadRequest(f"the answer cannot be used: {type(exc).__name__}: {exc}") from exc
        self._awaiting = None
        for slot in self._slots:
            take_subscriber_rtcp(
                slot.transceiver.sender.transport, slot.forwarder.ssrc, slot.kind == "video"
            )
        # A reused m-line's sender is already running: its new track starts with this answer.
        for slot in self._slots:
            params = slot.forwarder.parameters
            if slot.down is not None and params is not None:
                slot.down.start(params)
        if self._dirty:
            self._changed()

    async def add_ice_candidate(self, candidate: dict[str, Any]) -> None:
        await add_ice_candidate(self.pc, candidate)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for slot in self._slots:
            if slot.down is not None:
                slot.down.up.detach(slot.down)
                slot.down = None
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.pc.close()
        self.stats.peer_connections -= 1
