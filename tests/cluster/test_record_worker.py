"""`giaoban record` workers as real processes beside a node with GIAOBAN_RECORDER=workers: one
job is recorded by exactly one worker as a hidden participant; a worker killed mid-recording
leaves a playable file, the catalogue says interrupted, and the worker restarted goes on with
the same recording as a new segment."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.recorded import FPS, barcodes, catalogue, meeting, tokens
from tests.support.node_process import NodeProcess, WorkerProcess
from tests.support.peer import Peer
from tests.support.redis_server import RedisServer, unique_prefix

DEAD_AFTER = 2.0  # seconds before a silent worker's job goes to another


@pytest.fixture
def redis(cluster_redis: RedisServer) -> RedisServer:
    return cluster_redis


@pytest.fixture
def processes() -> Iterator[list[NodeProcess]]:
    started: list[NodeProcess] = []
    yield started
    for process in started:
        process.stop()


def start_node(data_dir: Path, redis: RedisServer, prefix: str, started: list) -> NodeProcess:
    node = NodeProcess(
        "node-ghi",
        "01",
        data_dir,
        redis.url,
        prefix,
        env={"GIAOBAN_RECORDER": "workers", "GIAOBAN_RECORDER_DEAD_AFTER": str(DEAD_AFTER)},
    )
    started.append(node)
    node.start()
    return node


def start_worker(
    name: str, data_dir: Path, redis: RedisServer, prefix: str, started: list
) -> WorkerProcess:
    worker = WorkerProcess(name, data_dir, redis.url, prefix, DEAD_AFTER)
    started.append(worker)
    worker.start()
    return worker


async def wait_state(peer: Peer, data_dir: Path, recording_id: int, state: str, timeout: float):  # type: ignore[no-untyped-def]
    async def reached() -> bool:
        return (await catalogue(data_dir, recording_id)).state.value == state

    await peer.wait_for(reached, timeout, f"recording {recording_id} {state}")
    return await catalogue(data_dir, recording_id)


def video_files(folder: Path, segment: int) -> list[Path]:
    return sorted(folder.glob(f"s{segment:02d}-*-video.mkv"))


async def test_two_workers_and_one_job_make_one_recording_by_a_hidden_recorder(
    data_dir: Path, redis: RedisServer, processes: list[NodeProcess]
) -> None:
    prefix = unique_prefix("rec")
    node = start_node(data_dir, redis, prefix, processes)
    workers = [start_worker(n, data_dir, redis, prefix, processes) for n in ("w-mot", "w-hai")]
    host, member, camera = await meeting(node, data_dir)
    try:
        recording_id = (await host._ok("start_recording", {}))["recording_id"]
        folder = data_dir / "recordings" / str(recording_id)
        await member.wait_for(lambda: video_files(folder, 1), 20, "a worker writing video")
        began = camera.frames_sent
        await member.wait_for(lambda: camera.frames_sent >= began + 3 * FPS, 10, "3 s of video")
        # Hidden: nobody was told of the recorder, nor lists it.
        for peer in (host, member):
            joins = [p["name"] for e, p in peer.events if e == "participant_joined"]
            assert joins == (["Xã Nam"] if peer is host else []), joins
        late = Peer(node.url, "Xã Muộn")
        await late.connect()
        joined = await late.join("ghi-hinh", tokens(data_dir)[1])
        assert [p["name"] for p in joined["participants"]] == ["Chủ trì", "Xã Nam"]
        assert joined["recording"] is True
        await late.close()
        await host._ok("stop_recording", {})
        done = await wait_state(host, data_dir, recording_id, "ready", 90)
    finally:
        await host.close()
        await member.close()

    taken = [w.metric("giaoban_recording_jobs_total") for w in workers]
    assert sorted(taken) == [0.0, 1.0], taken
    assert done.segments == 1
    assert len(video_files(folder, 1)) == 1
    tracks = [f for f in done.files if f.kind.value == "track"]
    assert [f.media_kind.value for f in tracks] == ["video"]
    assert tracks[0].participant_name == "Xã Nam" and tracks[0].sha256
    numbers = barcodes(video_files(folder, 1)[0])
    assert len(numbers) >= 2 * FPS and numbers == sorted(numbers)
    assert [f.kind.value for f in done.files].count("composite") == 1


async def test_a_killed_worker_leaves_a_playable_file_and_its_restart_resumes(
    data_dir: Path, redis: RedisServer, processes: list[NodeProcess]
) -> None:
    prefix = unique_prefix("rec")
    node = start_node(data_dir, redis, prefix, processes)
    worker = start_worker("w-ba", data_dir, redis, prefix, processes)
    host, member, camera = await meeting(node, data_dir)
    try:
        recording_id = (await host._ok("start_recording", {}))["recording_id"]
        folder = data_dir / "recordings" / str(recording_id)
        await member.wait_for(lambda: video_files(folder, 1), 20, "the worker writing video")
        began = camera.frames_sent
        await member.wait_for(lambda: camera.frames_sent >= began + 4 * FPS, 10, "4 s of video")
        sent_at_kill = camera.frames_sent
        worker.kill()
        killed_at = time.monotonic()

        # What reached the disk plays, up to a few seconds before the kill.
        numbers = barcodes(video_files(folder, 1)[0])
        assert numbers and numbers == sorted(numbers)
        assert numbers[-1] >= sent_at_kill - 3 * FPS, (numbers[-1], sent_at_kill)

        # The node saw its recorder go: interrupted, never dropped; the meeting goes on.
        cut = await wait_state(host, data_dir, recording_id, "interrupted", 15)
        assert "recorder" in (cut.failure_reason or "")
        assert time.monotonic() - killed_at < 15

        # Restarted under its name, the worker takes its job back: segment 2.
        worker.start()
        await member.wait_for(lambda: video_files(folder, 2), 30, "segment 2 being written")
        resumed = await catalogue(data_dir, recording_id)
        assert resumed.state.value == "recording" and resumed.segments == 2
        first = [f for f in resumed.files if f.segment == 1]
        assert first and all(f.sha256 and f.closed_at for f in first)
        began = camera.frames_sent
        await member.wait_for(lambda: camera.frames_sent >= began + 2 * FPS, 10, "2 s more")
        await host._ok("stop_recording", {})
        done = await wait_state(host, data_dir, recording_id, "ready", 90)
    finally:
        await host.close()
        await member.close()
    assert done.segments == 2
    second = barcodes(video_files(folder, 2)[0])
    assert second and second[0] > numbers[-1], "segment 2 holds the later video"
    assert worker.metric("giaoban_recordings_total") >= 1  # resumed, then ready
