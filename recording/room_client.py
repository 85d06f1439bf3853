"""A recording worker's hidden recorder in one live room, over signaling/PROTOCOL.md.

It joins with a recorder pass, asks for a down connection and taps every receiver with
`server.sfu.aiortc_tap.disable_decoding`, so what the node forwards goes to the `RoomRecorder`
as RTP packets: nothing is decoded or encoded here either. Keyframe requests go back to the node
as PLIs, which it turns into requests to the publisher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from recording.recorder import RoomRecorder
from server.sfu import aiortc_tap
from server.sfu.rtp_rewrite import SeenSequences
from server.sfu.up_track import PacketSink

log = logging.getLogger(__name__)

NAMESPACE = "/meeting"
REQUEST_TIMEOUT = 10.0
KEYFRAME_INTERVAL = 0.5  # seconds between PLIs for one track


class JoinRefused(Exception):
    """The node did not let the recorder in: `code` as in signaling/PROTOCOL.md; `home`, for
    `wrong_node`, the base URL of the node the room's meeting runs on."""

    def __init__(self, code: str, message: str, url: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.home = url.split("/r/", 1)[0] if code == "wrong_node" and url else None


@dataclass
class RemoteParticipant:
    """Someone in the room, as the node describes them."""

    id: str
    name: str
    site_code: str | None


@dataclass
class RemoteTrack:
    """One track the node forwards to the recorder (what `RoomRecorder` records)."""

    id: str
    kind: str
    source: str
    codec: RTCRtpCodecParameters
    receiver: RTCRtpReceiver
    media_ssrc: int
    sinks: list[PacketSink] = field(default_factory=list)
    seen: SeenSequences = field(default_factory=SeenSequences)
    last_keyframe_request: float = 0.0

    def add_sink(self, sink: PacketSink) -> None:
        self.sinks.append(sink)

    def remove_sink(self, sink: PacketSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def request_keyframe(self) -> None:
        now = time.monotonic()
        if now - self.last_keyframe_request < KEYFRAME_INTERVAL:
            return
        self.last_keyframe_request = now
        task = asyncio.ensure_future(aiortc_tap.request_keyframe(self.receiver, self.media_ssrc))
        task.add_done_callback(_log_failure)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("keyframe request failed: %r", task.exception())


class RoomClient:
    """Joins `room` on the node at `node_url` as its hidden recorder and feeds `recorder`."""

    def __init__(self, node_url: str, room: str, recorder_pass: str) -> None:
        self.node_url = node_url.rstrip("/")
        self.room = room
        self._pass = recorder_pass
        self._sio = socketio.AsyncClient(reconnection=False)
        self._pc: RTCPeerConnection | None = None
        self._recorder: RoomRecorder | None = None
        self.participants: dict[str, RemoteParticipant] = {}
        self._track_owner: dict[str, str] = {}  # track id -> participant id
        self._track_source: dict[str, str] = {}  # track id -> camera, microphone, screen, …
        self._mids: dict[str, str] = {}  # mid -> track id, from the latest down_offer
        self._tracks: dict[str, RemoteTrack] = {}
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._sio.on("*", self._on_event, namespace=NAMESPACE)
        self._sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)

    async def join(self) -> dict[str, Any]:
        """Connect and join; JoinRefused with the node's error code, OSError-like failures
        (socketio.exceptions.ConnectionError) when the node cannot be reached."""
        await self._sio.connect(
            self.node_url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=5
        )
        ack = await self._sio.call(
            "join",
            {"room": self.room, "recorder_pass": self._pass},
            namespace=NAMESPACE,
            timeout=REQUEST_TIMEOUT,
        )
        if not isinstance(ack, dict) or "ok" not in ack:
            error = (ack or {}).get("error") or {} if isinstance(ack, dict) else {}
            raise JoinRefused(
                str(error.get("code", "internal")),
                str(error.get("message", ack)),
                error.get("url") if isinstance(error.get("url"), str) else None,
            )
        joined = ack["ok"]
        for described in joined.get("participants", []):
            self._participant(described)
        return joined

    async def record(self, recorder: RoomRecorder) -> str:
        """Receive the room into `recorder` until the recording stops ("stopped") or the link
        to the node is lost ("lost"). The recorder's files are left for the caller to close."""
        self._recorder = recorder
        negotiation = asyncio.ensure_future(self._negotiate())
        try:
            ack = await self._sio.call(
                "subscribe", {}, namespace=NAMESPACE, timeout=REQUEST_TIMEOUT
            )
            if not isinstance(ack, dict) or "ok" not in ack:
                raise JoinRefused("subscribe", str(ack))
            # Shielded: a cancelled recording must not cancel `_ended` (close() reads it).
            return await asyncio.shield(self._ended)
        finally:
            negotiation.cancel()
            await asyncio.gather(negotiation, return_exceptions=True)

    async def close(self) -> None:
        """Leave (best effort) and close the connections."""
        dismissed = (
            self._ended.done() and not self._ended.cancelled() and self._ended.result() == "stopped"
        )
        if self._sio.connected and not dismissed:
            try:
                await self._sio.call("leave", {}, namespace=NAMESPACE, timeout=2)
            except Exception as exc:  # the node may be gone already
                log.debug("leave failed: %r", exc)
        if self._pc is not None:
            await self._pc.close()
            self._pc = None
        if self._sio.connected:
            await self._sio.disconnect()

    # -- events -------------------------------------------------------------------------------

    def _participant(self, described: dict[str, Any]) -> None:
        pid = str(described.get("id"))
        self.participants[pid] = RemoteParticipant(
            pid, str(described.get("name") or pid), described.get("site_code")
        )
        for track in described.get("tracks") or []:
            self._known_track(track)

    def _known_track(self, described: dict[str, Any]) -> None:
        track_id = str(described.get("id"))
        self._track_owner[track_id] = str(described.get("participant_id"))
        if isinstance(described.get("source"), str):
            self._track_source[track_id] = described["source"]

    async def _on_event(self, event: str, *args: Any) -> None:
        payload = args[0] if args and isinstance(args[0], dict) else {}
        if event in ("participant_joined", "participant_updated"):
            self._participant(payload)
        elif event == "track_added":
            self._known_track(payload)
        elif event == "track_removed":
            self._drop(str(payload.get("track_id")))
        elif event == "down_offer":
            self._offers.put_nowait(payload)
        elif event in ("recording_stopped", "meeting_ended"):
            log.info("room=%s: %s", self.room, event)
            self._end("stopped")

    async def _on_disconnect(self, *args: Any) -> None:
        self._end("lost")

    def _end(self, why: str) -> None:
        if not self._ended.done():
            self._ended.set_result(why)

    # -- the down connection ------------------------------------------------------------------

    async def _negotiate(self) -> None:
        while True:
            offer = await self._offers.get()
            try:
                await self._answer(offer)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "room=%s: down_offer %s not answered", self.room, offer.get("revision")
                )
                self._end("lost")

    async def _answer(self, offer: dict[str, Any]) -> None:
        if self._pc is None:
            self._pc = RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))
            pc = self._pc

            @pc.on("connectionstatechange")
            def on_state() -> None:
                if pc.connectionState == "failed":
                    self._end("lost")

        pc = self._pc
        before = {id(t) for t in pc.getTransceivers()}
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        mids = {str(t["mid"]): str(t["track_id"]) for t in offer.get("tracks", [])}
        for gone in set(self._mids.values()) - set(mids.values()):
            self._drop(gone)
        self._mids = mids
        for transceiver in pc.getTransceivers():
            if id(transceiver) not in before and transceiver.mid is not None:
                self._tap(transceiver.mid, transceiver.receiver)
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
        await self._sio.call(
            "down_answer",
            {"revision": offer["revision"], "sdp": pc.localDescription.sdp},
            namespace=NAMESPACE,
            timeout=REQUEST_TIMEOUT,
        )

    def _tap(self, mid: str, receiver: RTCRtpReceiver) -> None:
        async def on_packet(
            packet: RtpPacket, codec: RTCRtpCodecParameters, retransmitted: bool
        ) -> None:
            track_id = self._mids.get(mid)
            if track_id is None:
                return
            track = self._tracks.get(track_id)
            if track is None:
                track = self._track(track_id, receiver, codec, packet.ssrc)
                if track is None:
                    return
            if not track.seen.first_time(packet.sequence_number):
                return
            for sink in track.sinks:
                sink.write_packet(packet)

        aiortc_tap.disable_decoding(receiver, on_packet)

    def _track(
        self, track_id: str, receiver: RTCRtpReceiver, codec: RTCRtpCodecParameters, ssrc: int
    ) -> RemoteTrack | None:
        """The first packet of a track: its file opens (the codec is known from now on)."""
        if self._recorder is None:
            return None
        owner = self.participants.get(self._track_owner.get(track_id, ""))
        participant = owner or RemoteParticipant(track_id, "p", None)
        kind, _, _ = codec.mimeType.partition("/")
        source = self._track_source.get(track_id) or ("camera" if kind == "video" else "microphone")
        track = RemoteTrack(track_id, kind, source, codec, receiver, ssrc)
        self._tracks[track_id] = track
        self._recorder.track_added(participant, track)
        return track

    def _drop(self, track_id: str) -> None:
        track = self._tracks.pop(track_id, None)
        if track is not None and self._recorder is not None:
            self._recorder.track_removed(track)
