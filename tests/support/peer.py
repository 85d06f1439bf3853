"""An aiortc participant that speaks signaling/PROTOCOL.md, for functional tests and benchmarks.

    peer = Peer("http://127.0.0.1:8080", "UBND xã A")
    await peer.connect()
    await peer.join("giao-ban")
    await peer.publish([BarcodeVideoTrack(), ToneAudioTrack()])
    await peer.subscribe()
    await peer.wait_for(lambda: peer.video_frames() > 30, 5, "30 video frames")
    await peer.close()

Media only goes to loopback: the first thing this module does before creating a peer
connection is `restrict_host_addresses(["127.0.0.1"])`, and every peer connection has
`iceServers=[]`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import socketio
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from server.sfu.ice import restrict_host_addresses
from tests.support.frames import FrameReport, ReceivedFrame, check_frames
from tests.support.media import read_barcode

log = logging.getLogger("tests.peer")

NAMESPACE = "/meeting"
LOOPBACK = ["127.0.0.1"]


class SignalingError(Exception):
    """The node answered an event with {"error": {...}}."""

    def __init__(self, event: str, error: dict[str, Any]) -> None:
        self.event = event
        self.code = error.get("code")
        self.message = error.get("message")
        super().__init__(f"{event}: {self.code}: {self.message}")


@dataclass
class ReceivedTrack:
    """What one subscriber received for one of the node's tracks."""

    track_id: str
    kind: str
    mid: str
    frames: list[ReceivedFrame] = field(default_factory=list)  # decode=True only
    packets: int = 0  # decode=False only (RTP packets after RTX unwrap)
    bytes: int = 0  # RTP payload bytes, decode=False only
    retransmitted: int = 0  # of `packets`, how many arrived as RTX (decode=False only)
    first_frame_at: float | None = None
    first_packet_at: float | None = None
    last_at: float | None = None

    def report(self, window: tuple[float, float] | None = None) -> FrameReport:
        return check_frames(self.frames, window)

    def describe(self) -> str:
        now = time.monotonic()
        age = f"{now - self.last_at:.2f}s ago" if self.last_at is not None else "never"
        last = self.frames[-1].number if self.frames else None
        return (
            f"{self.kind} {self.track_id} mid={self.mid}: {len(self.frames)} frames "
            f"(last number {last}), {self.packets} packets, last {age}"
        )


_fixed_video_bitrate: int | None = None


def set_video_bitrate(bitrate: int | None) -> None:
    """Pin the VP8 bitrate of every aiortc sender created afterwards in this process.

    aiortc's sender follows the receiver's REMB, so what a publisher sends depends on the
    node's estimate; benchmarks want a fixed ~800 kb/s. This replaces the module attribute
    `aiortc.rtcrtpsender.get_encoder` (the factory the sender calls) with one that returns a
    VP8 encoder ignoring REMB. `None` restores aiortc's behaviour.
    """
    import aiortc.rtcrtpsender as rtcrtpsender
    from aiortc.codecs import get_encoder
    from aiortc.codecs.vpx import Vp8Encoder

    global _fixed_video_bitrate
    _fixed_video_bitrate = bitrate
    if bitrate is None:
        rtcrtpsender.get_encoder = get_encoder
        return

    class FixedBitrateVp8Encoder(Vp8Encoder):
        def __init__(self, fixed: int) -> None:
            super().__init__()
            Vp8Encoder.target_bitrate.fset(self, fixed)  # type: ignore[attr-defined]
            self._fixed = Vp8Encoder.target_bitrate.fget(self)  # type: ignore[attr-defined]

        @property
        def target_bitrate(self) -> int:
            return self._fixed

        @target_bitrate.setter
        def target_bitrate(self, bitrate: int) -> None:
            pass  # REMB is ignored

    def fixed_get_encoder(codec):  # type: ignore[no-untyped-def]
        if codec.mimeType.lower() == "video/vp8" and _fixed_video_bitrate is not None:
            return FixedBitrateVp8Encoder(_fixed_video_bitrate)
        return get_encoder(codec)

    rtcrtpsender.get_encoder = fixed_get_encoder


def new_peer_connection() -> RTCPeerConnection:
    """A peer connection that offers only 127.0.0.1 and uses no STUN/TURN server."""
    restrict_host_addresses(LOOPBACK)
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


def _default_source(kind: str) -> str:
    return "camera" if kind == "video" else "microphone"


class Peer:
    """One participant: a Socket.IO connection, up peer connections and one down connection."""

    def __init__(
        self,
        base_url: str,
        name: str,
        *,
        request_timeout: float = 10.0,
        invite: Callable[[str], Awaitable[str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        restrict_host_addresses(LOOPBACK)
        self.base_url = base_url.rstrip("/")
        self.name = name
        # Makes the invitation token `join` sends when none is given.
        self.invite = invite
        self.headers = headers or {}  # for the handshake (a sign-in session cookie)
        self.request_timeout = request_timeout
        self.sio = socketio.AsyncClient(reconnection=False)
        self.participant_id: str | None = None
        self.room: str | None = None
        self.join_result: dict[str, Any] | None = None

        # Up (publishing) connections, by the client-chosen pc name.
        self.up_pcs: dict[str, RTCPeerConnection] = {}
        self.published: dict[str, list[dict[str, Any]]] = {}  # pc -> node Track objects
        self._up_tracks: dict[str, list[tuple[MediaStreamTrack, RTCRtpTransceiver, str]]] = {}

        # Down (subscribing) connection.
        self.down_pc: RTCPeerConnection | None = None
        self.down_connected_at: float | None = None
        self.down_states: list[tuple[str, float]] = []
        self.down_revisions: list[int] = []  # revisions answered, in order
        self.mid_to_track: dict[str, str] = {}  # current down_offer map
        self.decode = True
        self._down_attached: set[int] = set()  # id() of transceivers already hooked
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.unmapped_packets = 0

        # Observations.
        self.received: dict[str, ReceivedTrack] = {}
        self.events: list[tuple[str, Any]] = []
        self.errors: list[str] = []  # failures inside background tasks
        self.connected = False

        self._tasks: set[asyncio.Task[Any]] = set()
        self._owned_tracks: list[MediaStreamTrack] = []
        self._closed = False

        self.sio.on("*", self._on_event, namespace=NAMESPACE)
        self.sio.on("disconnect", self._on_disconnect, namespace=NAMESPACE)

    # ------------------------------------------------------------------ signaling

    async def connect(self, timeout: float = 5.0) -> None:
        await self.sio.connect(
            self.base_url,
            namespaces=[NAMESPACE],
            transports=["websocket"],
            headers=self.headers,
            wait_timeout=timeout,
        )
        self.connected = True
        if not any(t.get_name() == "negotiation" for t in self._tasks):
            self._spawn(self._negotiation_loop(), "negotiation")

    async def request(
        self,
        event: str,
        payload: Any = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send `event` with an ack and return the raw ack ({"ok": ...} or {"error": ...})."""
        payload = {} if payload is None else payload
        return await self.sio.call(
            event, payload, namespace=NAMESPACE, timeout=timeout or self.request_timeout
        )

    async def _ok(
        self,
        event: str,
        payload: Any,
        timeout: float | None = None,
    ) -> dict:
        ack = await self.request(event, payload, timeout)
        if not isinstance(ack, dict):
            raise AssertionError(f"{event}: ack is not an object: {ack!r}")
        if "error" in ack:
            raise SignalingError(event, ack["error"] or {})
        if "ok" not in ack:
            raise AssertionError(f"{event}: ack has neither ok nor error: {ack!r}")
        return ack["ok"]

    async def join(self, room: str, token: str | None = None) -> dict[str, Any]:
        """Join `room` with `token` (or one from `invite`); the ok result (maybe a lobby wait)."""
        if token is None and self.invite is not None:
            token = await self.invite(room)
        payload: dict[str, Any] = {"room": room, "name": self.name}
        if token is not None:
            payload["token"] = token
        result = await self._ok("join", payload)
        self.join_result = result
        if result.get("lobby"):
            return result
        self._entered(result, room)
        return result

    def _entered(self, result: dict[str, Any], room: str) -> None:
        self.participant_id = result["participant_id"]
        self.room = result.get("room", room)
        self.join_result = result

    async def wait_admitted(self, timeout: float = 5.0) -> dict[str, Any]:
        """After a lobby wait: the `admitted` result, once a host lets this peer in."""
        await self.wait_for(lambda: self.last_event("admitted") is not None, timeout, "admitted")
        result = self.last_event("admitted")
        assert isinstance(result, dict)
        self._entered(result, result["room"])
        return result

    def last_event(self, name: str) -> Any:
        """The payload of the newest `name` event received, or None."""
        for event, payload in reversed(self.events):
            if event == name:
                return payload
        return None

    async def mute(self, track_id: str, muted: bool) -> dict[str, Any]:
        return await self._ok("mute", {"track_id": track_id, "muted": muted})

    async def leave(self) -> None:
        """Leave the room (node side) and close this side's peer connections."""
        if self.connected and self.participant_id is not None:
            await self._ok("leave", {})
        self.participant_id = None
        await self._close_pcs()

    async def _on_event(self, event: str, *args: Any) -> None:
        payload = args[0] if args else None
        self.events.append((event, payload))
        if event == "down_offer":
            self._offers.put_nowait(payload)

    async def _on_disconnect(self, *args: Any) -> None:
        self.connected = False
        self.events.append(("disconnect", args[0] if args else None))

    # ------------------------------------------------------------------ publishing

    async def publish(
        self,
        tracks: list[MediaStreamTrack],
        pc: str = "main",
        sources: dict[str, str] | None = None,
        video_codec: str | None = None,
    ) -> dict[str, Any]:
        """Publish `tracks` on up connection `pc` (created, or renegotiated if it exists).

        `sources` maps a local track's `id` (or a kind, "video"/"audio") to a source
        ("camera", "microphone", "screen", "screen-audio"); the default is camera/microphone.
        `video_codec` ("video/H264", say) offers only that codec (and RTX) for video, as a
        browser that has no other would. Returns the ok result ({"sdp", "tracks"}); raises
        SignalingError on an error ack.
        """
        sources = sources or {}
        conn = self.up_pcs.get(pc)
        if conn is None:
            conn = new_peer_connection()
            self.up_pcs[pc] = conn
            self._up_tracks[pc] = []
        entries = self._up_tracks[pc]
        known = {id(t) for t, _, _ in entries}
        for track in tracks:
            if id(track) in known:
                continue
            transceiver = conn.addTransceiver(track, direction="sendonly")
            if video_codec is not None and track.kind == "video":
                wanted = (video_codec.lower(), "video/rtx")
                codecs = RTCRtpSender.getCapabilities("video").codecs
                transceiver.setCodecPreferences([c for c in codecs if c.mimeType.lower() in wanted])
            source = sources.get(track.id) or sources.get(track.kind) or _default_source(track.kind)
            entries.append((track, transceiver, source))
            if track not in self._owned_tracks:
                self._owned_tracks.append(track)

        offer = await conn.createOffer()
        await conn.setLocalDescription(offer)
        payload = {
            "pc": pc,
            "sdp": conn.localDescription.sdp,
            "tracks": [{"mid": tr.mid, "source": source} for _, tr, source in entries],
        }
        result = await self._ok("publish", payload)
        await conn.setRemoteDescription(RTCSessionDescription(sdp=result["sdp"], type="answer"))
        self.published[pc] = list(result.get("tracks", []))
        return result

    async def unpublish(self, pc: str = "main") -> dict[str, Any]:
        result = await self._ok("unpublish", {"pc": pc})
        conn = self.up_pcs.pop(pc, None)
        self._up_tracks.pop(pc, None)
        self.published.pop(pc, None)
        if conn is not None:
            await conn.close()
        return result

    def published_track_ids(self, pc: str | None = None) -> list[str]:
        pcs = [pc] if pc is not None else list(self.published)
        return [t["id"] for p in pcs for t in self.published.get(p, [])]

    # ------------------------------------------------------------------ subscribing

    async def subscribe(self, decode: bool = True) -> dict[str, Any]:
        """Ask for a down connection; `down_offer`s are then answered in the background.

        decode=True reads every track (barcode number, size, arrival time per video frame;
        arrival per audio frame). decode=False hooks each receiver with
        `server.sfu.aiortc_tap.disable_decoding` and only counts packets and bytes.
        Calling it again starts a new down connection (the old one is closed).
        """
        self.decode = decode
        if self.down_pc is not None:
            old, self.down_pc = self.down_pc, None
            self._down_attached.clear()
            self.mid_to_track = {}
            while not self._offers.empty():
                self._offers.get_nowait()
            await old.close()
        return await self._ok("subscribe", {})

    async def _negotiation_loop(self) -> None:
        while True:
            payload = await self._offers.get()
            try:
                await self._answer_down_offer(payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("down_offer failed")
                self.errors.append(f"down_offer {payload.get('revision')!r}: {exc!r}")

    async def _answer_down_offer(self, payload: dict[str, Any]) -> None:
        revision = payload["revision"]
        mapping = {t["mid"]: t["track_id"] for t in payload.get("tracks", [])}
        if self.down_pc is None:
            self.down_pc = self._new_down_pc()
        conn = self.down_pc
        await conn.setRemoteDescription(RTCSessionDescription(sdp=payload["sdp"], type="offer"))
        self.mid_to_track = mapping
        for transceiver in conn.getTransceivers():
            if transceiver.mid is None or id(transceiver) in self._down_attached:
                continue
            self._down_attached.add(id(transceiver))
            self._attach_receiver(transceiver)
        answer = await conn.createAnswer()
        await conn.setLocalDescription(answer)
        ack = await self.request(
            "down_answer", {"revision": revision, "sdp": conn.localDescription.sdp}
        )
        if not isinstance(ack, dict) or "ok" not in ack:
            self.errors.append(f"down_answer {revision}: {ack!r}")
        self.down_revisions.append(revision)

    def _new_down_pc(self) -> RTCPeerConnection:
        conn = new_peer_connection()

        @conn.on("connectionstatechange")
        def on_state() -> None:
            if conn is not self.down_pc:
                return
            now = time.monotonic()
            self.down_states.append((conn.connectionState, now))
            if conn.connectionState == "connected" and self.down_connected_at is None:
                self.down_connected_at = now

        return conn

    def _record(self, mid: str, kind: str) -> ReceivedTrack | None:
        track_id = self.mid_to_track.get(mid)
        if track_id is None:
            return None
        rec = self.received.get(track_id)
        if rec is None:
            rec = self.received[track_id] = ReceivedTrack(track_id=track_id, kind=kind, mid=mid)
        return rec

    def _attach_receiver(self, transceiver: RTCRtpTransceiver) -> None:
        mid = transceiver.mid
        kind = transceiver.kind
        assert mid is not None
        if self.decode:
            track = transceiver.receiver.track
            self._spawn(self._read_track(mid, kind, track), f"read-{mid}")
            return

        from server.sfu.aiortc_tap import disable_decoding

        # The tap calls on_packet(packet, codec, retransmitted) and awaits it.
        async def on_packet(packet: Any, codec: Any = None, retransmitted: bool = False) -> None:
            rec = self._record(mid, kind)
            if rec is None:
                self.unmapped_packets += 1
                return
            now = time.monotonic()
            if rec.first_packet_at is None:
                rec.first_packet_at = now
            rec.last_at = now
            rec.packets += 1
            rec.bytes += len(packet.payload)
            if retransmitted:
                rec.retransmitted += 1

        disable_decoding(transceiver.receiver, on_packet)

    async def _read_track(self, mid: str, kind: str, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            rec = self._record(mid, kind)
            if rec is None:
                continue
            if kind == "video":
                row = ReceivedFrame(read_barcode(frame), frame.width, frame.height, now)
            else:
                row = ReceivedFrame(None, 0, 0, now)
            if rec.first_frame_at is None:
                rec.first_frame_at = now
            rec.last_at = now
            rec.frames.append(row)

    # ------------------------------------------------------------------ observing

    def tracks_of(self, kind: str | None = None) -> list[ReceivedTrack]:
        return [r for r in self.received.values() if kind is None or r.kind == kind]

    def describe(self) -> str:
        lines = [
            f"peer {self.name!r} participant={self.participant_id} room={self.room} "
            f"socket_connected={self.connected}",
            "  up: "
            + (", ".join(f"{n}={c.connectionState}" for n, c in self.up_pcs.items()) or "none"),
            f"  down: {self.down_pc.connectionState if self.down_pc else 'none'} "
            f"revisions={self.down_revisions[-5:]} mids={self.mid_to_track}",
        ]
        lines += [f"  {r.describe()}" for r in self.received.values()] or ["  received: nothing"]
        tail = [name for name, _ in self.events[-12:]]
        lines.append(f"  last events: {tail}")
        if self.errors:
            lines.append(f"  errors: {self.errors[-5:]}")
        return "\n".join(lines)

    async def wait_for(
        self,
        predicate: Callable[[], Any | Awaitable[Any]],
        timeout: float,
        what: str,
        interval: float = 0.02,
    ) -> Any:
        """Poll `predicate` until truthy (returned); AssertionError naming `what` on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout:.1f}s waiting for {what}\n{self.describe()}"
                )
            await asyncio.sleep(interval)

    async def wait_event(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float = 5.0,
        since: int = 0,
    ) -> Any:
        """The payload of the first `name` event (from index `since` of `events`) matching."""

        def find() -> tuple[bool, Any]:
            for event, payload in self.events[since:]:
                if event == name and (predicate is None or predicate(payload)):
                    return True, payload
            return False, None

        found = await self.wait_for(lambda: find()[0], timeout, f"event {name!r}")
        assert found
        return find()[1]

    # ------------------------------------------------------------------ lifecycle

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(f"task {task.get_name()}: {task.exception()!r}")

    async def _close_pcs(self) -> None:
        conns = list(self.up_pcs.values())
        if self.down_pc is not None:
            conns.append(self.down_pc)
        self.up_pcs.clear()
        self._up_tracks.clear()
        self.down_pc = None
        self._down_attached.clear()
        for conn in conns:
            await conn.close()

    async def close(self) -> None:
        """Leave (best effort), close every connection, stop owned tracks, await all tasks."""
        if self._closed:
            return
        self._closed = True
        if self.connected and self.participant_id is not None:
            try:
                await self.request("leave", {}, timeout=2)
            except Exception as exc:  # the node may already be gone
                log.debug("leave on close failed: %r", exc)
        await self._close_pcs()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for track in self._owned_tracks:
            track.stop()
        if self.sio.connected:
            await self.sio.disconnect()
        self.connected = False

    async def __aenter__(self) -> Peer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
