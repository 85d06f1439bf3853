"""A recorded meeting for the cluster tests (its data directory is the `data_dir` fixture of
tests/cluster/conftest.py): a host and a member who publishes numbered video in room
"ghi-hinh", and readers of the catalogue and of the recorded files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import av

from server.config import Config
from server.invitations import mint_invitation
from server.recordings import get_recording
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


async def meeting(node: NodeProcess, data_dir: Path) -> tuple[Peer, Peer, BarcodeVideoTrack]:
    host_token, member_token = tokens(data_dir)
    host, member = Peer(node.url, "Chủ trì"), Peer(node.url, "Xã Nam")
    for peer, token in ((host, host_token), (member, member_token)):
        await peer.connect()
        await peer.join("ghi-hinh", token)
    camera = BarcodeVideoTrack(fps=FPS)
    await member.publish([camera])
    return host, member, camera
