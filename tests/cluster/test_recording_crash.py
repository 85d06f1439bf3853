"""A node killed with SIGKILL while recording: what reached the disk plays, the catalogue says
interrupted, and the recording goes on as a new segment when the meeting is back."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.recorded import FPS, barcodes, catalogue, meeting
from tests.support.node_process import NodeProcess


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
