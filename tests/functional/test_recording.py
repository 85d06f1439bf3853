"""A host records a meeting: everyone is told, each track is remuxed into its own file (no
decoding on the node), and the catalogue holds each file's size and SHA-256."""

from __future__ import annotations

import hashlib
import time

import aiohttp
import av

from server.app import DATABASE, ROOMS
from server.recordings import get_recording
from tests.support.media import BarcodeVideoTrack, ToneAudioTrack, read_barcode
from tests.support.peer import Peer


async def _ready(state) -> bool:  # type: ignore[no-untyped-def]
    return await state() == "ready"


def code_of(ack) -> str:  # type: ignore[no-untyped-def]
    assert isinstance(ack, dict) and "error" in ack, f"expected an error ack, got {ack!r}"
    return ack["error"]["code"]


async def test_a_host_records_each_track_into_its_own_file(node) -> None:  # type: ignore[no-untyped-def]
    host, member = Peer(node.url, "Chủ trì"), Peer(node.url, "UBND xã Bắc")
    try:
        await host.connect()
        await host.join("ghi-hinh", await node.invite("ghi-hinh", "host"))
        await member.connect()
        await member.join("ghi-hinh", await node.invite("ghi-hinh"))
        camera, tone = BarcodeVideoTrack(fps=20), ToneAudioTrack()
        await member.publish([camera, tone])

        assert code_of(await member.request("start_recording", {})) == "forbidden"
        started = await host._ok("start_recording", {})
        assert started["recording"] is True
        recording_id = started["recording_id"]
        update = await member.wait_event("room_updated", lambda r: r["recording"] is True)
        assert update["room"] == "ghi-hinh"
        assert code_of(await host.request("start_recording", {})) == "conflict"

        began, first_frame = time.monotonic(), camera.frames_sent
        await member.wait_for(lambda: camera.frames_sent >= first_frame + 60, 10, "3 s of video")
        recorded_for = time.monotonic() - began
        stopped = await host._ok("stop_recording", {})
        assert stopped["recording"] is False and stopped["recording_id"] == recording_id
        await member.wait_event("room_updated", lambda r: r["recording"] is False)
        assert node.app[ROOMS].by_name["ghi-hinh"].recorder is None

        async def state() -> str:
            async with node.app[DATABASE].session() as db:
                return (await get_recording(db, recording_id)).state.value

        # After the stop: processing (the composite is made), then ready.
        await host.wait_for(lambda: _ready(state), 60, "the recording ready")
        async with node.app[DATABASE].session() as db:
            recording = await get_recording(db, recording_id)
        assert recording.processing_progress == 100
        files = [f for f in recording.files if f.kind.value == "track"]
        assert sorted(f.media_kind for f in files) == ["audio", "video"]
        root = node.config.data_dir / "recordings"
        for stored in files:
            path = root / stored.path
            data = path.read_bytes()
            assert stored.size_bytes == len(data)
            assert stored.sha256 == hashlib.sha256(data).hexdigest()
            assert stored.closed_at is not None

        video = root / next(f.path for f in files if f.media_kind == "video")
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "vp8"  # as the browser sent it: not re-encoded
            numbers = [read_barcode(frame) for frame in container.decode(stream)]
        numbers = [n for n in numbers if n is not None]
        assert numbers == sorted(numbers) and len(numbers) >= 40
        assert numbers[0] >= first_frame - 20  # started when the host pressed record
        duration = (numbers[-1] - numbers[0]) / 20
        assert abs(duration - recorded_for) < 1.0, (duration, recorded_for)

        audio = root / next(f.path for f in files if f.media_kind == "audio")
        with av.open(str(audio)) as container:
            assert container.streams.audio[0].codec_context.name == "opus"
            samples = sum(frame.samples for frame in container.decode(audio=0))
        assert abs(samples / 48000 - recorded_for) < 1.0

        # The composite: H.264 and AAC, as long as what was recorded, with its checksum.
        composite = next(f for f in recording.files if f.kind.value == "composite")
        path = root / composite.path
        assert composite.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.streams.audio[0].codec_context.name == "aac"
            length = float(container.duration) / av.time_base
        assert abs(length - recorded_for) < 1.0, (length, recorded_for)

        async with aiohttp.ClientSession() as http, http.get(f"{node.url}/metrics") as response:
            text = await response.text()
        assert 'giaoban_recordings_total{event="started"} 1.0' in text
        assert 'giaoban_recordings_total{event="stopped"} 1.0' in text
        assert 'giaoban_recordings_total{event="ready"} 1.0' in text
    finally:
        await host.close()
        await member.close()


async def test_recording_through_the_rest_api(node) -> None:  # type: ignore[no-untyped-def]
    from server.accounts import find_account
    from server.api_tokens import create_api_token

    await node.schedule("ghi-api")  # hosted by the test host account "chu-tri"
    await node.account("thanh-vien", "member")
    async with node.app[DATABASE].session() as db, db.begin():
        _, host_token = await create_api_token(db, await find_account(db, "chu-tri"), "lịch")
        _, member_token = await create_api_token(db, await find_account(db, "thanh-vien"), "x")
    url = f"{node.url}/api/v1/rooms/ghi-api/recording"

    async def call(token: str, action: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(url, json={"action": action}) as response,
        ):
            return response.status, await response.json()

    status, answer = await call(host_token, "start")
    assert status == 409 and "not live" in answer["error"]["message"]  # nobody in it yet

    member = Peer(node.url, "UBND xã Tây")
    try:
        await member.connect()
        await member.join("ghi-api", await node.invite("ghi-api"))
        await member.publish([BarcodeVideoTrack(fps=20)])
        status, answer = await call(member_token, "start")
        # Not invited: the room does not exist for this account (as in every room endpoint).
        assert status == 404 and answer["error"]["code"] == "not_found"
        status, answer = await call(host_token, "start")
        assert status == 200 and answer["recording"] is True
        await member.wait_event("room_updated", lambda r: r["recording"] is True)
        status, again = await call(host_token, "stop")
        assert status == 200 and again == {
            "recording": False,
            "recording_id": answer["recording_id"],
        }
        await member.wait_event("room_updated", lambda r: r["recording"] is False)
        status, answer = await call(host_token, "stop")
        assert status == 409 and answer["error"]["code"] == "conflict"
    finally:
        await member.close()
