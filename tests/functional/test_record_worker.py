"""A `RecordWorker` in this process against a node with GIAOBAN_RECORDER=workers: one worker
records two meetings at the same time, each into its own recording, and composes both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
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


@dataclass
class RunningWorker:
    worker: RecordWorker
    task: asyncio.Task[None]
    client: aioredis.Redis

    async def stop(self) -> None:
        """SIGTERM's path: stop taking jobs, close what is being written, leave."""
        self.worker.stop()
        await asyncio.wait_for(self.task, 15)
        await self.client.aclose()


@pytest.fixture
async def start_worker(
    workers_node: Node, redis_url: str, redis_prefix: str
) -> AsyncIterator[Callable[..., Awaitable[RunningWorker]]]:
    """`await start_worker(name, capacity)`: a RecordWorker running in this process."""
    started: list[RunningWorker] = []

    async def start(name: str = "w-hai-phong", capacity: int = 2) -> RunningWorker:
        client = aioredis.from_url(redis_url)
        worker = RecordWorker(
            name=name,
            jobs=RedisJobQueue(client, redis_prefix, dead_after=5),
            database=workers_node.app[DATABASE],
            data_dir=workers_node.config.data_dir,
            secret_key=workers_node.app[SECRET_KEY],
            dead_after=5,
            capacity=capacity,
        )
        running = RunningWorker(worker, asyncio.ensure_future(worker.run()), client)
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()


@pytest.fixture
async def worker(start_worker: Callable[..., Awaitable[RunningWorker]]) -> RecordWorker:
    return (await start_worker()).worker


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


async def test_a_stopped_worker_closes_its_files_and_its_restart_goes_on(
    workers_node: Node, start_worker: Callable[..., Awaitable[RunningWorker]]
) -> None:
    node = workers_node
    first = await start_worker("w-mot")
    host = Peer(node.url, "Chủ trì", invite=lambda r: node.invite(r, "host"))
    member = Peer(node.url, "Xã Đông", invite=lambda r: node.invite(r, "member"))
    camera = BarcodeVideoTrack(fps=FPS)
    try:
        for peer in (host, member):
            await peer.connect()
            await peer.join("phong-c")
        await member.publish([camera])
        client = aioredis.from_url(node.config.redis_url or "")
        queue = RedisJobQueue(client, node.config.redis_prefix)
        try:
            await eventually(queue.workers, 5, "the worker announced")
        finally:
            await queue.close()
            await client.aclose()
        recording_id = (await host._ok("start_recording", {}))["recording_id"]
        folder = node.config.data_dir / "recordings" / str(recording_id)
        await eventually(lambda: list(folder.glob("s01-*-video.mkv")), 15, "segment 1 written")
        began = camera.frames_sent
        await eventually(lambda: camera.frames_sent >= began + 2 * FPS, 10, "2 s of video")

        await first.stop()

        async def state() -> str:
            async with node.app[DATABASE].session() as db:
                return (await get_recording(db, recording_id)).state.value

        assert await state() == "interrupted"  # the node saw its recorder go
        async with node.app[DATABASE].session() as db:
            cut = await get_recording(db, recording_id)
        # Closed by the worker itself: size, checksum and duration, a file that plays whole.
        (closed,) = [f for f in cut.files if f.segment == 1]
        assert closed.sha256 and closed.closed_at and (closed.duration_seconds or 0) >= 2

        await start_worker("w-mot")  # the same name: its held job comes back at once
        await eventually(lambda: list(folder.glob("s02-*-video.mkv")), 15, "segment 2 written")
        assert await state() == "recording"
        began = camera.frames_sent
        await eventually(lambda: camera.frames_sent >= began + FPS, 10, "1 s more")
        await host._ok("stop_recording", {})

        async def ready() -> bool:
            return await state() == "ready"

        await eventually(ready, 60, "the recording composed")
    finally:
        await host.close()
        await member.close()
    first_numbers = barcodes(next(folder.glob("s01-*-video.mkv")))
    second_numbers = barcodes(next(folder.glob("s02-*-video.mkv")))
    assert first_numbers and second_numbers and second_numbers[0] > first_numbers[-1]


async def test_a_second_job_of_a_recording_waits_and_records_nothing_twice(
    workers_node: Node, worker: RecordWorker, redis_url: str, redis_prefix: str
) -> None:
    """A job queued again for a recording already being recorded (a node restarted after
    Redis lost its jobs, racing the live one) never records it a second time."""
    from recording.jobs import RecordingJob

    node = workers_node
    client = aioredis.from_url(redis_url)
    queue = RedisJobQueue(client, redis_prefix)
    host = Peer(node.url, "Chủ trì", invite=lambda r: node.invite(r, "host"))
    member = Peer(node.url, "Xã Bắc", invite=lambda r: node.invite(r, "member"))
    camera = BarcodeVideoTrack(fps=FPS)
    try:
        await eventually(queue.workers, 5, "the worker announced")
        for peer in (host, member):
            await peer.connect()
            await peer.join("phong-d")
        await member.publish([camera])
        recording_id = (await host._ok("start_recording", {}))["recording_id"]
        folder = node.config.data_dir / "recordings" / str(recording_id)
        await eventually(lambda: list(folder.glob("s01-*-video.mkv")), 15, "video written")
        await queue.put(RecordingJob(recording_id, "phong-d", node.config.base_url))

        async def both_taken() -> bool:
            pending = await client.xpending(queue.key, queue.group)
            return pending["pending"] == 2

        await eventually(both_taken, 10, "the worker holding both jobs")
        began = camera.frames_sent
        await eventually(lambda: camera.frames_sent >= began + FPS, 10, "1 s more")
        await host._ok("stop_recording", {})

        async def all_done() -> bool:
            return await queue.pending() == 0

        await eventually(all_done, 60, "both jobs done")
    finally:
        await host.close()
        await member.close()
        await queue.close()
        await client.aclose()
    async with node.app[DATABASE].session() as db:
        recording = await get_recording(db, recording_id)
    assert recording.state.value == "ready" and recording.segments == 1
    assert [f.kind.value for f in recording.files] == ["track", "composite"]
    assert worker.registry.get_sample_value("giaoban_recording_jobs_total") == 2
