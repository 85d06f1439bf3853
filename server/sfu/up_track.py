"""A published track: RTP from one publisher, fanned out to its down tracks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from aiortc import RTCRtpReceiver, clock
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from server.sfu import aiortc_tap, fanout
from server.sfu.keyframe import KeyframeRequestPacer, keyframe_detector
from server.sfu.rtp_rewrite import SeenSequences
from server.sfu.stats import SfuStats

if TYPE_CHECKING:
    from server.sfu.down_track import DownTrack

log = logging.getLogger(__name__)

AudioLevelSink = Callable[[str, int, bool], None]  # (participant id, -dBov level, voice)


class PacketSink(Protocol):
    """Something besides subscribers that takes a track's packets as published (a recorder).

    It gets each packet once (duplicates and RTX already resolved), in arrival order, with the
    publisher's own header; it must be quick and never raise."""

    def write_packet(self, packet: RtpPacket) -> None: ...


@dataclass(slots=True)
class Outgoing:
    """One upstream packet as every subscriber's header is written from it."""

    payload_type: int
    marker: int
    sequence_number: int
    timestamp: int
    payload: bytes
    padding_size: int
    keyframe: bool
    ntp_time: int
    abs_send_time: int
    audio_level: tuple[bool, int] | None
    now: float
    # Subscribers with the same extension ids and mid share one packet tail (first header
    # byte, then extensions, payload and padding): see rtp_header.packet_tail.
    tails: dict[object, tuple[int, bytes]] = field(default_factory=dict)


class UpTrack:
    """One audio or video track a participant publishes; never decoded on the node."""

    def __init__(
        self,
        track_id: str,
        participant_id: str,
        kind: str,
        source: str,
        receiver: RTCRtpReceiver,
        codec: RTCRtpCodecParameters,
        stats: SfuStats,
        on_audio_level: AudioLevelSink | None = None,
    ) -> None:
        self.id = track_id
        self.participant_id = participant_id
        self.kind = kind
        self.source = source
        self.codec = codec
        self.muted = False
        self.closed = False
        self.media_ssrc: int | None = None
        self.down_tracks: list[DownTrack] = []
        self.sinks: list[PacketSink] = []
        self._receiver = receiver
        self._stats = stats
        self._on_audio_level = on_audio_level
        self._is_keyframe = keyframe_detector(codec.mimeType)
        self._seen = SeenSequences()
        self._pacer = KeyframeRequestPacer()
        self._deferred: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def describe(self) -> dict[str, object]:
        return {
            "id": self.id,
            "participant_id": self.participant_id,
            "kind": self.kind,
            "source": self.source,
            "muted": self.muted,
        }

    def on_packet(
        self, packet: RtpPacket, codec: RTCRtpCodecParameters, retransmitted: bool
    ) -> Awaitable[None] | None:
        """Forward one packet where it arrives; what must wait (forwards through aiortc's own
        path, for subscribers over TURN) is returned to be awaited in order."""
        stats = self._stats
        stats.received_packets += 1
        if not self._seen.first_time(packet.sequence_number):
            stats.duplicate_packets += 1
            return None
        self.media_ssrc = packet.ssrc
        level = packet.extensions.audio_level
        if level is not None and self._on_audio_level is not None and not self.muted:
            self._on_audio_level(self.participant_id, level[1], level[0])
        if self.muted:
            return None
        for sink in self.sinks:
            sink.write_packet(packet)
        if not self.down_tracks:
            return None
        ntp = clock.current_ntp_time()
        out = Outgoing(
            payload_type=packet.payload_type,
            marker=packet.marker,
            sequence_number=packet.sequence_number,
            timestamp=packet.timestamp,
            payload=packet.payload,
            padding_size=packet.padding_size,
            keyframe=self._is_keyframe(packet.payload) if self._is_keyframe else False,
            ntp_time=ntp,
            abs_send_time=(ntp >> 14) & 0x00FFFFFF,
            audio_level=level,
            now=time.monotonic(),
        )
        slow = fanout.forward(self.down_tracks, out)
        # Subscribers over TURN: through aiortc's own path, in turn.
        return None if slow is None else aiortc_tap.in_order(slow)

    def attach(self, down: DownTrack) -> None:
        self.down_tracks.append(down)

    def add_sink(self, sink: PacketSink) -> None:
        """Start giving packets to `sink`; video starts at a keyframe asked for now."""
        self.sinks.append(sink)
        self.request_keyframe()

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def detach(self, down: DownTrack) -> None:
        if down in self.down_tracks:
            self.down_tracks.remove(down)

    def set_muted(self, muted: bool) -> None:
        """Stop (or resume) forwarding; on resume every subscriber restarts from a keyframe."""
        if muted == self.muted:
            return
        self.muted = muted
        if not muted:
            for down in self.down_tracks:
                down.resume()
            self.request_keyframe()

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, paced: deferred when too soon, never dropped."""
        if self.kind != "video" or self.closed:
            return
        loop = asyncio.get_running_loop()
        decision = self._pacer.request(loop.time())
        if decision.send_now:
            self._spawn_pli()
        elif decision.defer_until is not None:
            self._deferred = loop.call_at(decision.defer_until, self._deferred_due)

    def _deferred_due(self) -> None:
        self._deferred = None
        if not self.closed and self._pacer.deferred_due(asyncio.get_running_loop().time()):
            self._spawn_pli()

    def _spawn_pli(self) -> None:
        if self.media_ssrc is None:
            return  # nothing received yet: the first frame is a keyframe anyway
        task = asyncio.ensure_future(self._send_pli(self.media_ssrc))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_pli(self, ssrc: int) -> None:
        self._stats.keyframe_requests += 1
        try:
            await aiortc_tap.request_keyframe(self._receiver, ssrc)
        except ConnectionError:
            pass

    async def close(self) -> None:
        """Stop forwarding; down tracks are detached by their owners."""
        self.closed = True
        if self._deferred is not None:
            self._deferred.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
