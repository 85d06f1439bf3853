"""A node killed with SIGKILL while recording: what reached the disk plays, the catalogue says
interrupted, and the recording goes on as a new segment when the meeting is back."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest
from argon2 import PasswordHasher

from server.accounts import create_account
from server.config import Config
from server.invitations import mint_invitation
from server.recordings import get_recording
from server.room_records import create_room
from server.secret_key import load_secret_key
from server.store.db import open_database
from tests.support.media import BarcodeVideoTrack, read_barcode
from tests.support.node_process import NodeProcess
from tests.support.peer import Peer

FPS = 20


def tokens(data_dir: Path) -> tuple[str, str]:
    key = load_secret_key(Config(data_dir=data_dir))
    expires = datetime.now(UTC) + timedelta(hours=1)
    return (
        mint_invitation(key, room="ghi-hinh", role="host", expires_at=expires),
        mint_invitation(key, room="ghi-hinh", role="member", expires_at=expires),
    )


async def catalogue(data_dir: Path, recording_id: int):  # type: ignore[no-untyped-def]
    database = await open_database(Config(data_dir=data_dir))
    try:
        async with database.session() as db:
            return await get_recording(db, recording_id)
    finally:
        await database.close()


def barcodes(path: Path) -> list[int]:
    """The frame numbers a (possibly cut-off) video file decodes to."""
    found: list[int] = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                number = read_barcode(frame)
                if number is not None:
                    found.append(number)
        except av.error.FFmpegError:
            pass  # the torn end of a killed writer
    return found


@pytest.fixture
async def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    database = await open_database(Config(data_dir=data))
    try:
        async with database.session() as db, db.begin():
            cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
            host = await create_account(
                db, "chu-tri", "mat-khau-chu-tri", role="host", hasher=cheap
            )
            await create_room(
                db,
                host,
                title="Ghi hình",
                starts_at=datetime.now(UTC),
                duration_minutes=60,
                mode="discussion",
                lobby=False,
                slug="ghi-hinh",
            )
    finally:
        await database.close()
    return data


async def meeting(node: NodeProcess, data_dir: Path) -> tuple[Peer, Peer, BarcodeVideoTrack]:
    host_token, member_token = tokens(data_dir)
    host, member = Peer(node.url, "Chủ trì"), Peer(node.url, "Xã Nam")
    for peer, token in ((host, host_token), (member, member_token)):
        await peer.connect()
        await peer.join("ghi-hinh", token)
    camera = BarcodeVideoTrack(fps=FPS)
    await member.publish([camera])
    return host, member, camera


async def test_a_killed_recording_plays_is_interrupted_and_resumes(data_dir: Path) -> None:
    node = NodeProcess("node-ghi", "01", data_dir)
    node.start()
    host, member, camera = await meeting(node, data_dir)
    try:
        recording_id = (await host._ok("start_recording", {}))["recording_id"]
        folder = data_dir / "recordings" / str(recording_id)
        began = camera.frames_sent
        await member.wait_for(lambda: camera.frames_sent >= began + 4 * FPS, 10, "4 s of video")
        sent_at_kill = camera.frames_sent
        node.kill()
        killed_at = time.monotonic()
    finally:
        await host.close()
        await member.close()

    # What reached the disk plays, up to a few seconds before the kill.
    video = next(folder.glob("s01-*-video.mkv"))
    numbers = barcodes(video)
    assert numbers and numbers == sorted(numbers)
    assert numbers[-1] >= sent_at_kill - 3 * FPS, (numbers[-1], sent_at_kill)
    assert time.monotonic() - killed_at < 60

    # Restarted, the node tells the catalogue the recording was cut off; never dropped.
    node.start()
    cut = await catalogue(data_dir, recording_id)
    assert cut.state.value == "interrupted" and "stopped while recording" in cut.failure_reason
    closed = [f for f in cut.files if f.segment == 1]
    assert closed and all(f.sha256 and f.closed_at for f in closed)

    # The meeting is back: the same recording goes on as segment 2.
    host, member, camera = await meeting(node, data_dir)
    try:
        assert host.join_result is not None and host.join_result["recording"] is True
        began = camera.frames_sent
        await member.wait_for(lambda: camera.frames_sent >= began + 2 * FPS, 10, "2 s more")
        stopped = await host._ok("stop_recording", {})
        assert stopped["recording_id"] == recording_id

        async def ready() -> bool:
            return (await catalogue(data_dir, recording_id)).state.value == "ready"

        await host.wait_for(ready, 60, "the composite made and the recording ready")
    finally:
        await host.close()
        await member.close()
        node.stop()
    done = await catalogue(data_dir, recording_id)
    assert done.state.value == "ready" and done.segments == 2
    second = next(folder.glob("s02-*-video.mkv"))
    assert barcodes(second), "segment 2 holds video"
