"""A `RecordWorker` in this process against a node with GIAOBAN_RECORDER=workers: one worker
records two meetings at the same time, each into its own recording, and composes both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from recording.jobs import RedisJobQueue
from server.app import DATABASE, SECRET_KEY
from server.record_worker import RecordWorker
from server.recordings import get_recording
from tests.cluster.recorded import barcodes
from tests.conftest import Node
from tests.support.media import BarcodeVideoTrack
from tests.support.peer import Peer
from tests.support.wait import eventually

FPS = 20


@pytest.fixture
async def worker(
    workers_node: Node, redis_url: str, redis_prefix: str
) -> AsyncIterator[RecordWorker]:
    client = aioredis.from_url(redis_url)
    made = RecordWorker(
        name="w-hai-phong",
        jobs=RedisJobQueue(client, redis_prefix, dead_after=5),
        database=workers_node.app[DATABASE],
        data_dir=workers_node.config.data_dir,
        secret_key=workers_node.app[SECRET_KEY],
        dead_after=5,
        capacity=2,
    )
    running = asyncio.ensure_future(made.run())
    try:
        yield made
    finally:
        made.stop()
        await asyncio.wait_for(running, 15)
        await client.aclose()


async def test_one_worker_records_two_meetings_at_once(
    workers_node: Node, worker: RecordWorker
) -> None:
    node = workers_node
    client = aioredis.from_url(node.config.redis_url or "")
    queue = RedisJobQueue(client, node.config.redis_prefix)
    await eventually(queue.workers, 5, "the worker announced")
    peers: list[Peer] = []

    def folder(room: str) -> Path:
        return node.config.data_dir / "recordings" / str(recordings[room])

    cameras: dict[str, BarcodeVideoTrack] = {}
    recordings: dict[str, int] = {}
    try:
        for room in ("phong-a", "phong-b"):
            host = Peer(node.url, f"Chủ trì {room}", invite=lambda r: node.invite(r, "host"))
            member = Peer(node.url, f"Xã {room}", invite=lambda r: node.invite(r, "member"))
            peers += [host, member]
            for peer in (host, member):
                await peer.connect()
                await peer.join(room)
            cameras[room] = BarcodeVideoTrack(fps=FPS)
            await member.publish([cameras[room]])
            recordings[room] = (await host._ok("start_recording", {}))["recording_id"]

        for room in recordings:
            await eventually(
                lambda room=room: list(folder(room).glob("s01-*-video.mkv")), 15, f"{room} video"
            )
        assert worker.capacity == 2
        both = ",".join(str(r) for r in sorted(recordings.values()))

        async def announced_busy() -> bool:
            return (await queue.workers())["w-hai-phong"]["recordings"] == both

        await eventually(announced_busy, 5, "the worker announcing both recordings")
        began = {room: camera.frames_sent for room, camera in cameras.items()}
        await eventually(
            lambda: all(c.frames_sent >= began[r] + 2 * FPS for r, c in cameras.items()),
            10,
            "2 s more of both cameras",
        )
        for host in peers[::2]:
            await host._ok("stop_recording", {})

        async def ready() -> bool:
            async with node.app[DATABASE].session() as db:
                states = [(await get_recording(db, r)).state.value for r in recordings.values()]
            return states == ["ready", "ready"]

        await eventually(ready, 60, "both recordings composed")
    finally:
        for peer in peers:
            await peer.close()
        await queue.close()
        await client.aclose()
    for room, recording_id in recordings.items():
        async with node.app[DATABASE].session() as db:
            recording = await get_recording(db, recording_id)
        tracks = [f for f in recording.files if f.kind.value == "track"]
        assert [f.participant_name for f in tracks] == [f"Xã {room}"]
        numbers = barcodes(next(folder(room).glob("s01-*-video.mkv")))
        assert len(numbers) >= 2 * FPS and numbers == sorted(numbers)
        assert [f.kind.value for f in recording.files].count("composite") == 1
    assert worker.registry.get_sample_value("giaoban_recording_jobs_total") == 2
