"""A node whose forwarding loop is the Python one (GIAOBAN_FORWARDING_LOOP=python, as where
server/sfu/_fanout.c could not be built) forwards a meeting as the C loop does: complete frames,
in order, at the sent size; /metrics says which loop runs."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.recorded import meeting
from tests.support.frames import check_frames
from tests.support.node_process import NodeProcess


@pytest.fixture
def python_loop_node(data_dir: Path) -> Iterator[NodeProcess]:
    node = NodeProcess("node-py", "01", data_dir, env={"GIAOBAN_FORWARDING_LOOP": "python"})
    node.start()
    try:
        yield node
    finally:
        node.stop()


def forwarding_loop(node: NodeProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"{node.url}/metrics", timeout=5) as response:
        text = response.read().decode()
    loops = {}
    for line in text.splitlines():
        if line.startswith("giaoban_forwarding_loop{"):
            labels, value = line.rsplit(" ", 1)
            loops[labels.split('"')[1]] = float(value)
    return loops


async def test_a_node_on_the_python_loop_forwards_every_frame(
    python_loop_node: NodeProcess, data_dir: Path
) -> None:
    assert forwarding_loop(python_loop_node) == {"c": 0.0, "python": 1.0}
    host, member, _ = await meeting(python_loop_node, data_dir)
    try:
        await host.subscribe()

        def video():  # type: ignore[no-untyped-def]
            tracks = host.tracks_of("video")
            return tracks[0] if tracks else None

        await host.wait_for(
            lambda: video() is not None and len(video().frames) >= 60, 20, "60 frames at the host"
        )
        report = check_frames(video().frames)
        assert report.unreadable == 0, report.summary()
        assert report.increasing and report.missing == 0, report.summary()
        assert report.sizes == {(640, 360)}, report.summary()
    finally:
        await host.close()
        await member.close()
    assert "forwarding loop: python" in python_loop_node.log_path.read_text()
