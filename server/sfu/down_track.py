"""An up track as one subscriber receives it: own SSRC, payload type, numbering and history."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from server.sfu import fanout
from server.sfu.aiortc_tap import ForwardingSender, SendParameters
from server.sfu.rtp_header import extension_block, fixed_header, packet_tail
from server.sfu.rtp_rewrite import PacketHistory, StreamRewriter
from server.sfu.stats import SfuStats
from server.sfu.up_track import Outgoing, UpTrack

log = logging.getLogger(__name__)

# A subscriber whose socket buffer holds more than this is slow: drop rather than queue.
MAX_BACKLOG_BYTES = 256 * 1024
# While waiting for a keyframe, ask again this often (a PLI can be lost too).
KEYFRAME_RETRY_SECONDS = 1.0


def _codec_key(mime_type: str, parameters: dict) -> tuple[str, str]:
    mime = mime_type.lower()
    if mime == "video/h264":
        return mime, str(parameters.get("profile-level-id", ""))[:4].lower()
    return mime, ""


class DownTrack(fanout.Leg):  # type: ignore[misc,valid-type]
    """Forwards one UpTrack to one subscriber's sender without decoding.

    The sender, numbering and history belong to the subscriber's m-line (the DownConnection's
    slot) and outlive this binding, so a reused m-line continues one stream. The fields
    forward() reads per packet live in fanout.Leg, where the C loop reads them too; forward()
    is the reference that loop follows, and handles every packet the loop leaves to it.
    """

    def __init__(
        self,
        up: UpTrack,
        forwarder: ForwardingSender,
        rewriter: StreamRewriter,
        history: PacketHistory,
        subscriber_id: str,
        stats: SfuStats,
    ) -> None:
        self.up = up
        self.subscriber_id = subscriber_id
        self._forwarder = forwarder
        self._ssrc = forwarder.ssrc
        self._rewriter = rewriter
        self._history = history
        self._stats = stats
        self._waiting_keyframe = up.kind == "video"
        self._last_keyframe_ask = 0.0
        self._pt_map: dict[int, int | None] = {}
        self._params: SendParameters | None = None
        # The last upstream payload type and its mapping, and the extension cache key: what
        # forward() reads per packet, kept on this object rather than looked up elsewhere.
        self._up_pt = -1
        self._down_pt: int | None = None
        self._extension_key: object = None
        rewriter.restart()

    @property
    def started(self) -> bool:
        return self._params is not None

    def start(self, params: SendParameters) -> None:
        """The subscriber negotiated this m-line and its DTLS is up: forwarding may begin.

        A video subscriber needs a keyframe to start decoding, so ask for one now.
        """
        if self._params is not None:
            return
        self._params = params
        self._extension_key = params.extension_key
        if self._waiting_keyframe:
            self.up.request_keyframe()

    def _down_payload_type(self, up_pt: int) -> int | None:
        """The subscriber's payload type for the codec the publisher used (per codec, per leg)."""
        if up_pt not in self._pt_map:
            assert self._params is not None
            up = self.up.codec
            key = _codec_key(up.mimeType, up.parameters)
            match = next(
                (
                    c.payloadType
                    for c in self._params.codecs
                    if _codec_key(c.mimeType, c.parameters) == key
                ),
                None,
            )
            if match is None:
                log.warning(
                    "subscriber %s did not negotiate %s for track %s",
                    self.subscriber_id,
                    up.mimeType,
                    self.up.id,
                )
            self._pt_map[up_pt] = match
        return self._pt_map[up_pt]

    def resume(self) -> None:
        """Forwarding resumes after a pause: continue numbering, start at a keyframe."""
        self._rewriter.restart()
        if self.up.kind == "video":
            self._waiting_keyframe = True

    def forward(self, out: Outgoing) -> Awaitable[None] | None:
        """Forward one upstream packet to this subscriber, now; returns an awaitable only when
        the packet must take aiortc's slower path (a TURN-relayed subscriber)."""
        params = self._params
        if params is None:
            return None
        if self._waiting_keyframe:
            if not out.keyframe:
                if out.now - self._last_keyframe_ask >= KEYFRAME_RETRY_SECONDS:
                    self._last_keyframe_ask = out.now
                    self.up.request_keyframe()
                return None
            self._waiting_keyframe = False
        if out.payload_type == self._up_pt:
            down_pt = self._down_pt
        else:
            down_pt = self._down_pt = self._down_payload_type(out.payload_type)
            self._up_pt = out.payload_type
        if down_pt is None:
            return None
        numbers = self._rewriter.numbers(out.sequence_number, out.timestamp, out.now)
        if numbers is None:
            return None
        sequence_number, timestamp = numbers
        # The tail (extensions, payload, padding) is shared by every subscriber with the same
        # extension ids and mid; the fixed header is this subscriber's own.
        tail = out.tails.get(self._extension_key)
        if tail is None:
            tail = self._packet_tail(out)
        first, rest = tail
        header = fixed_header(
            first, (out.marker << 7) | down_pt, sequence_number, timestamp, self._ssrc
        )
        self._history.put(sequence_number, (header, rest))
        try:
            sent = self._forwarder.send_now(
                header, rest, timestamp, out.ntp_time, MAX_BACKLOG_BYTES, out.now
            )
        except ConnectionError:
            self._stats.dropped_packets += 1
            return None
        if sent is None:
            return self._send_slowly(header + rest, timestamp)
        if not sent:
            # A slow subscriber: drop, and restart video from a keyframe once it drains.
            self._stats.dropped_packets += 1
            if self.up.kind == "video":
                self._waiting_keyframe = True
            return None
        stats = self._stats
        stats.forwarded_packets += 1
        stats.forwarded_bytes += 12 + len(rest)
        return None

    def _packet_tail(self, out: Outgoing) -> tuple[int, bytes]:
        """Build `out`'s tail for this subscriber's extension layout, for every subscriber
        with that layout (the C loop asks for it here too)."""
        params = self._params
        assert params is not None
        tail = out.tails[self._extension_key] = packet_tail(
            extension_block(
                params.extension_ids, params.mid_bytes, out.abs_send_time, out.audio_level
            ),
            out.payload,
            out.padding_size,
        )
        return tail

    async def _send_slowly(self, data: bytes, timestamp: int) -> None:
        try:
            await self._forwarder.send_rtp(data, timestamp)
        except ConnectionError:
            self._stats.dropped_packets += 1
            return
        self._stats.forwarded_packets += 1
        self._stats.forwarded_bytes += len(data)

    async def answer_nack(self, lost: list[int]) -> None:
        """Resend what the subscriber lost, from this m-line's history."""
        for seq in lost:
            sent = self._history.get(seq)
            if isinstance(sent, tuple):
                header, rest = sent
                try:
                    if not self._forwarder.resend_now(header + rest):
                        await self._forwarder.resend(header + rest)  # TURN: aiortc's path
                except ConnectionError:
                    return
                self._stats.retransmitted_packets += 1
