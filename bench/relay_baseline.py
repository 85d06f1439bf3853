"""Benchmark baseline only: a minimal server that fans out with aiortc's MediaRelay.

It speaks the subset of signaling/PROTOCOL.md a benchmark needs (join, publish, subscribe,
down_offer/down_answer, ice, leave) but, unlike the node, it decodes every published track once
and re-encodes it for every subscriber (`aiortc.contrib.media.MediaRelay`). bench/forwarding.py
runs it to compare its CPU cost per subscriber with the node's RTP forwarding. It is not part of
the product and has none of the node's validation, limits or cleanup guarantees.

    python bench/relay_baseline.py --host 127.0.0.1 --port 8090

Host candidates come from GIAOBAN_ICE_HOST_ADDRESSES (comma separated, default 127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import socketio
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.sfu.ice import restrict_host_addresses

log = logging.getLogger("relay_baseline")
NAMESPACE = "/meeting"


def ok(result: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ok": result or {}}


def error(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


@dataclass(eq=False)
class Published:
    id: str
    participant_id: str
    kind: str
    source: str
    track: MediaStreamTrack

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "participant_id": self.participant_id,
            "kind": self.kind,
            "source": self.source,
            "muted": False,
        }


@dataclass(eq=False)
class Member:
    sid: str
    id: str
    name: str
    room: str
    up: dict[str, RTCPeerConnection] = field(default_factory=dict)
    tracks: dict[str, Published] = field(default_factory=dict)  # up mid key -> track
    down: RTCPeerConnection | None = None
    down_tracks: dict[str, RTCRtpTransceiver] = field(default_factory=dict)  # track id ->
    revision: int = 0
    offer_pending: bool = False
    dirty: bool = False

    def as_dict(self) -> dict[str, Any]:
        tracks = [t.as_dict() for t in self.tracks.values()]
        return {"id": self.id, "name": self.name, "tracks": tracks}


class RelayBaseline:
    def __init__(self) -> None:
        self.sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
        self.relay = MediaRelay()
        self.members: dict[str, Member] = {}  # sid -> member
        self.drains: list[asyncio.Task[None]] = []
        self.lock = asyncio.Lock()  # one signaling operation at a time: simple and enough
        for event in ("join", "publish", "subscribe", "down_answer", "ice", "leave"):
            self.sio.on(event, self._wrap(getattr(self, f"on_{event}")), namespace=NAMESPACE)
        self.sio.on("disconnect", self.on_disconnect, namespace=NAMESPACE)
        self.sio.on("*", self.on_unknown, namespace=NAMESPACE)

    def _wrap(self, handler):  # type: ignore[no-untyped-def]
        async def wrapped(sid: str, payload: Any = None) -> dict[str, Any]:
            if not isinstance(payload, dict):
                return error("bad_request", "payload must be an object")
            try:
                async with self.lock:
                    return await handler(sid, payload)
            except (KeyError, TypeError, ValueError) as exc:
                return error("bad_request", repr(exc))
            except Exception as exc:
                log.exception("handler failed")
                return error("internal", repr(exc))

        return wrapped

    async def on_unknown(self, event: str, sid: str, *args: Any) -> dict[str, Any]:
        return error("unknown_event", f"unknown event {event!r}")

    def room_members(self, room: str) -> list[Member]:
        return [m for m in self.members.values() if m.room == room]

    async def on_join(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        if sid in self.members:
            return error("already_joined", "already joined")
        member = Member(
            sid=sid, id=f"p-{uuid.uuid4().hex[:12]}", name=payload["name"], room=payload["room"]
        )
        others = self.room_members(member.room)
        self.members[sid] = member
        for other in others:
            await self.sio.emit(
                "participant_joined", member.as_dict(), to=other.sid, namespace=NAMESPACE
            )
        return ok(
            {
                "participant_id": member.id,
                "room": member.room,
                "participants": [o.as_dict() for o in others],
                "ice_servers": [],
            }
        )

    async def on_publish(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        member = self.members.get(sid)
        if member is None:
            return error("not_joined", "join first")
        name = payload["pc"]
        sources = {t["mid"]: t["source"] for t in payload.get("tracks", [])}
        conn = member.up.get(name)
        if conn is None:
            conn = member.up[name] = new_peer_connection()
        await conn.setRemoteDescription(RTCSessionDescription(sdp=payload["sdp"], type="offer"))
        added: list[Published] = []
        for transceiver in conn.getTransceivers():
            key = f"{name}:{transceiver.mid}"
            if transceiver.mid is None or key in member.tracks:
                continue
            kind = transceiver.kind
            published = Published(
                id=f"t-{uuid.uuid4().hex[:12]}",
                participant_id=member.id,
                kind=kind,
                source=sources.get(transceiver.mid, "camera" if kind == "video" else "microphone"),
                track=transceiver.receiver.track,
            )
            member.tracks[key] = published
            added.append(published)
            # Keep the decoded source drained even with no subscriber (aiortc's remote track
            # queue is unbounded); MediaRelay then reads it once for everyone.
            self.drains.append(
                asyncio.ensure_future(drain(self.relay.subscribe(published.track, buffered=False)))
            )
        answer = await conn.createAnswer()
        await conn.setLocalDescription(answer)
        for other in self.room_members(member.room):
            if other is member:
                continue
            for published in added:
                await self.sio.emit(
                    "track_added", published.as_dict(), to=other.sid, namespace=NAMESPACE
                )
            if other.down is not None and added:
                for published in added:
                    self.add_down_track(other, published)
                await self.negotiate(other)
        return ok(
            {
                "sdp": conn.localDescription.sdp,
                "tracks": [
                    t.as_dict() for key, t in member.tracks.items() if key.startswith(f"{name}:")
                ],
            }
        )

    def add_down_track(self, member: Member, published: Published) -> None:
        assert member.down is not None
        if published.id in member.down_tracks:
            return
        proxy = self.relay.subscribe(published.track, buffered=False)
        member.down_tracks[published.id] = member.down.addTransceiver(proxy, direction="sendonly")

    async def on_subscribe(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        member = self.members.get(sid)
        if member is None:
            return error("not_joined", "join first")
        if member.down is not None:
            await member.down.close()
        member.down = new_peer_connection()
        member.down_tracks = {}
        member.offer_pending = False
        member.dirty = False
        for other in self.room_members(member.room):
            if other is not member:
                for published in other.tracks.values():
                    self.add_down_track(member, published)
        await self.negotiate(member)
        return ok()

    async def negotiate(self, member: Member) -> None:
        if member.down is None:
            return
        if member.offer_pending:
            member.dirty = True
            return
        offer = await member.down.createOffer()
        await member.down.setLocalDescription(offer)
        member.revision += 1
        member.offer_pending = True
        mapping = [
            {"mid": tr.mid, "track_id": track_id}
            for track_id, tr in member.down_tracks.items()
            if tr.mid is not None
        ]
        await self.sio.emit(
            "down_offer",
            {
                "revision": member.revision,
                "sdp": member.down.localDescription.sdp,
                "tracks": mapping,
            },
            to=member.sid,
            namespace=NAMESPACE,
        )

    async def on_down_answer(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        member = self.members.get(sid)
        if member is None or member.down is None:
            return error("not_found", "no down connection")
        if payload["revision"] != member.revision or not member.offer_pending:
            return error("conflict", "unexpected revision")
        await member.down.setRemoteDescription(
            RTCSessionDescription(sdp=payload["sdp"], type="answer")
        )
        member.offer_pending = False
        if member.dirty:
            member.dirty = False
            await self.negotiate(member)
        return ok()

    async def on_ice(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        # aiortc's SDP already carries every candidate; trickled ones are accepted and unused.
        return ok()

    async def on_leave(self, sid: str, payload: dict[str, Any]) -> dict[str, Any]:
        await self.remove(sid)
        return ok()

    async def on_disconnect(self, sid: str, *args: Any) -> None:
        async with self.lock:
            await self.remove(sid)

    async def remove(self, sid: str) -> None:
        member = self.members.pop(sid, None)
        if member is None:
            return
        conns = [*member.up.values(), *([member.down] if member.down else [])]
        for conn in conns:
            await conn.close()
        for other in self.room_members(member.room):
            for published in member.tracks.values():
                transceiver = other.down_tracks.pop(published.id, None)
                if transceiver is not None:
                    transceiver.sender.replaceTrack(None)
                await self.sio.emit(
                    "track_removed",
                    {"track_id": published.id, "participant_id": member.id},
                    to=other.sid,
                    namespace=NAMESPACE,
                )
            await self.sio.emit(
                "participant_left", {"participant_id": member.id}, to=other.sid, namespace=NAMESPACE
            )

    async def shutdown(self, app: web.Application) -> None:
        for sid in list(self.members):
            await self.remove(sid)
        for task in self.drains:
            task.cancel()
        await asyncio.gather(*self.drains, return_exceptions=True)


async def drain(track: MediaStreamTrack) -> None:
    try:
        while True:
            await track.recv()
    except MediaStreamError:
        return


def new_peer_connection() -> RTCPeerConnection:
    return RTCPeerConnection(configuration=RTCConfiguration(iceServers=[]))


def make_app() -> web.Application:
    baseline = RelayBaseline()
    app = web.Application()
    baseline.sio.attach(app)

    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)
    app.on_shutdown.append(baseline.shutdown)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args()
    addresses = os.environ.get("GIAOBAN_ICE_HOST_ADDRESSES", "127.0.0.1")
    # Never fall back to aioice's default (every interface): loopback unless told otherwise.
    chosen = [a.strip() for a in addresses.split(",") if a.strip()] or ["127.0.0.1"]
    restrict_host_addresses(chosen)
    logging.basicConfig(level=logging.WARNING)
    web.run_app(make_app(), host=args.host, port=args.port, print=None, shutdown_timeout=2)


if __name__ == "__main__":
    main()
