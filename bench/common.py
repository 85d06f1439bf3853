"""Shared pieces of bench/late_joiner.py and bench/memory.py.

The node process, the helper-process handle, the machine/version lines and the machine-wide
busy time come from bench/forwarding.py (imported, unchanged). This module adds what those two
benchmarks need beyond it: a helper-process worker that can also replace a subscriber (leave,
then a new one joins) and run a late joiner that decodes and times its first frame and first
RTP packet, plus small statistics helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import re
import signal
import statistics
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import psutil  # noqa: E402
from forwarding import (  # noqa: E402
    COMMAND_TIMEOUT,
    FORWARDED_METRIC,
    ROOM,
    WORKER_LIFETIME,
    Helper,
    Server,
    free_port,
    machine,
    machine_busy_seconds,
    versions,
)

__all__ = [
    "COMMAND_TIMEOUT",
    "FORWARDED_METRIC",
    "REPO",
    "Helper",
    "Server",
    "machine",
    "machine_busy_seconds",
    "metric_samples",
    "percentile",
    "process_rss",
    "start_helpers",
    "start_node",
    "stop_all",
    "summary",
    "versions",
    "wait_publishing",
    "wait_ready",
]

# Every giaoban_* sample on /metrics (counters and gauges), summed over label sets.
METRIC_LINE = re.compile(r"^(giaoban_\w+?)(?:\{[^}]*\})?\s+(\S+)$", re.MULTILINE)
READY_TIMEOUT = 15.0  # seconds a replacing subscriber gets to receive audio and video


# --------------------------------------------------------------------------- parent side


def start_node(workdir: Path) -> Server:
    """Start `python -m server.cli serve` on 127.0.0.1 (host candidates 127.0.0.1 only)."""
    env = dict(os.environ)
    env.update(
        GIAOBAN_ICE_HOST_ADDRESSES="127.0.0.1",
        GIAOBAN_DATA_DIR=str(workdir / "data"),
        GIAOBAN_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    for name in ("GIAOBAN_ICE_SERVERS", "REDIS_URL", "DATABASE_URL"):
        env.pop(name, None)
    port = free_port()
    node = Server(
        "node",
        [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env,
        workdir / "node.log",
        port,
    )
    node.start()
    return node


def start_helpers(
    count: int, base_url: str, video_bitrate: int, workdir: Path, prefix: str
) -> list[Helper]:
    """Start `count` helper processes running `client_worker` (logs in workdir)."""
    ctx = mp.get_context("spawn")
    helpers: list[Helper] = []
    for index in range(count):
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(
            target=client_worker,
            args=(
                child_end,
                base_url,
                os.getpid(),
                video_bitrate,
                str(workdir / f"{prefix}-helper{index}.log"),
            ),
            daemon=True,
            name=f"bench-{prefix}-{index}",
        )
        process.start()
        child_end.close()
        helpers.append(Helper(index, process, parent_end))
    return helpers


def metric_samples(server: Server) -> dict[str, float]:
    """Every `giaoban_*` sample on /metrics (counters end in _total), {} if unreachable."""
    try:
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    values: dict[str, float] = {}
    for name, value in METRIC_LINE.findall(text):
        if name.endswith("_created"):
            continue
        with contextlib.suppress(ValueError):
            values[name] = values.get(name, 0.0) + float(value)
    return values


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction 0..1) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> str:
    """min / median / p90 / max in ms of values given in seconds."""
    if not values:
        return "no samples"
    ms = [1000 * v for v in values]
    return (
        f"min {min(ms):.0f}, median {statistics.median(ms):.0f}, "
        f"p90 {percentile(ms, 0.9):.0f}, max {max(ms):.0f} ms (n={len(ms)})"
    )


# --------------------------------------------------------------------------- helper side


def client_worker(
    conn: Connection, base_url: str, parent_pid: int, video_bitrate: int, log_path: str
) -> None:
    """Entry point of a helper process: runs Peers on the parent's commands."""
    # Ctrl-C reaches the whole process group: the parent stops its helpers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(log_path, "a", buffering=1) as log_file:
        sys.stdout = sys.stderr = log_file
        asyncio.run(_client_main(conn, base_url, parent_pid, video_bitrate))


def _timed_peer_class() -> type:
    from tests.support.peer import Peer

    class TimedPeer(Peer):
        """A Peer that decodes and also notes when the first RTP packet of each kind arrived.

        The note is taken in front of aiortc's RTCRtpReceiver._handle_rtp_packet (what the
        DTLS transport calls for every decrypted packet), so it is the packet's arrival in
        this process, before aiortc's jitter buffer and decoder thread.
        """

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.first_packet_at: dict[str, float] = {}

        def _attach_receiver(self, transceiver: Any) -> None:
            if self.decode:
                receiver = transceiver.receiver
                kind = transceiver.kind
                original = receiver._handle_rtp_packet

                async def handle_rtp_packet(packet: Any, arrival_time_ms: int) -> None:
                    if kind not in self.first_packet_at:
                        self.first_packet_at[kind] = time.monotonic()
                    await original(packet, arrival_time_ms=arrival_time_ms)

                receiver._handle_rtp_packet = handle_rtp_packet
            super()._attach_receiver(transceiver)

    return TimedPeer


async def _client_main(
    conn: Connection, base_url: str, parent_pid: int, video_bitrate: int
) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tests.support.media import BarcodeVideoTrack, ToneAudioTrack
    from tests.support.peer import Peer, set_video_bitrate

    set_video_bitrate(video_bitrate)
    timed_peer = _timed_peer_class()
    loop = asyncio.get_running_loop()
    subscribers: list[Peer] = []
    publisher: Peer | None = None
    deadline = time.monotonic() + WORKER_LIFETIME
    serial = 0

    def is_ready(peer: Peer) -> bool:
        return {t.kind for t in peer.tracks_of() if t.packets > 0} >= {"audio", "video"}

    async def add_subscriber() -> Peer:
        nonlocal serial
        serial += 1
        peer = Peer(base_url, f"sub-{os.getpid()}-{serial}")
        subscribers.append(peer)  # appended first so it is closed even if joining fails
        await peer.connect()
        await peer.join(ROOM)
        await peer.subscribe(decode=False)
        return peer

    async def churn() -> dict[str, Any]:
        """The oldest subscriber leaves; a new one joins and must receive audio and video."""
        if not subscribers:
            raise RuntimeError("no subscriber to replace")
        leaving = subscribers.pop(0)
        t0 = time.monotonic()
        await asyncio.wait_for(leaving.close(), 10)  # sends leave, closes its connections
        t1 = time.monotonic()
        peer = await add_subscriber()
        ready = True
        try:
            await peer.wait_for(lambda: is_ready(peer), READY_TIMEOUT, "audio and video")
        except AssertionError:
            ready = False
        return {
            "subscribers": len(subscribers),
            "leave_s": t1 - t0,
            "ready": ready,
            "ready_s": time.monotonic() - t1,
            "errors": leaving.errors[-2:] + peer.errors[-2:],
        }

    async def late_join(index: int, timeout: float) -> dict[str, Any]:
        """A fresh decoding subscriber: connect, join, subscribe; time its first frames."""
        peer = timed_peer(base_url, f"late-{os.getpid()}-{index}")
        result: dict[str, Any] = {"ok": True}
        try:
            t0 = time.monotonic()
            await peer.connect()
            await peer.join(ROOM)
            t_subscribe = time.monotonic()
            await peer.subscribe(decode=True)

            def first_video_frame() -> bool:
                return any(t.first_frame_at is not None for t in peer.tracks_of("video"))

            try:
                await peer.wait_for(first_video_frame, timeout, "first decoded video frame")
            except AssertionError as exc:
                result["timeout"] = str(exc)
            else:
                # Audio is not part of the target; give its first frame a moment to show.
                with contextlib.suppress(AssertionError):
                    await peer.wait_for(
                        lambda: any(t.first_frame_at for t in peer.tracks_of("audio")),
                        min(2.0, timeout),
                        "first decoded audio frame",
                    )
            video = [t.first_frame_at for t in peer.tracks_of("video") if t.first_frame_at]
            audio = [t.first_frame_at for t in peer.tracks_of("audio") if t.first_frame_at]
            result.update(
                start=t0,
                subscribe=t_subscribe,
                connected=peer.down_connected_at,
                first_video_frame=min(video) if video else None,
                first_audio_frame=min(audio) if audio else None,
                first_video_packet=peer.first_packet_at.get("video"),
                first_audio_packet=peer.first_packet_at.get("audio"),
                errors=peer.errors[-3:],
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 5)
        return result

    async def stats() -> dict[str, Any]:
        errors: list[str] = []
        for peer in subscribers:
            errors += peer.errors[-2:]
        result: dict[str, Any] = {
            "subscribers": len(subscribers),
            "ready": sum(1 for peer in subscribers if is_ready(peer)),
            "packets": sum(t.packets for peer in subscribers for t in peer.tracks_of()),
            "errors": errors[:10],
        }
        if publisher is not None:
            result["publisher_errors"] = publisher.errors[-5:]
        return result

    try:
        while time.monotonic() < deadline:
            if not psutil.pid_exists(parent_pid) or os.getppid() != parent_pid:
                return
            has_message = await loop.run_in_executor(None, conn.poll, 0.5)
            if not has_message:
                continue
            message = conn.recv()
            command = message.get("cmd")
            try:
                if command == "stop":
                    conn.send({"ok": True})
                    return
                if command == "publish":
                    publisher = Peer(base_url, f"publisher-{os.getpid()}")
                    await publisher.connect()
                    await publisher.join(ROOM)
                    result = await publisher.publish([BarcodeVideoTrack(), ToneAudioTrack()])
                    conn.send({"ok": True, "tracks": result.get("tracks", [])})
                elif command == "add":
                    count = int(message["count"])
                    for first in range(0, count, 8):
                        batch = min(8, count - first)
                        await asyncio.gather(*(add_subscriber() for _ in range(batch)))
                    conn.send({"ok": True, "subscribers": len(subscribers)})
                elif command == "churn":
                    conn.send({"ok": True, **(await churn())})
                elif command == "late_join":
                    reply = await late_join(int(message["index"]), float(message["timeout"]))
                    conn.send(reply)
                elif command == "stats":
                    conn.send({"ok": True, **(await stats())})
                else:
                    conn.send({"ok": False, "error": f"unknown command {command!r}"})
            except Exception:
                conn.send({"ok": False, "error": traceback.format_exc()})
    finally:
        peers = [*subscribers, *([publisher] if publisher else [])]
        for peer in peers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.close(), 5)


def wait_ready(helpers: list[Helper], node: Server, expected: int, timeout: float) -> None:
    """Wait until `expected` subscribers of `helpers` receive audio and video."""
    deadline = time.monotonic() + timeout
    while True:
        stats = [h.call({"cmd": "stats"}) for h in helpers]
        ready = sum(s["ready"] for s in stats)
        if ready >= expected:
            return
        if time.monotonic() > deadline:
            errors = [e for s in stats for e in s["errors"]]
            raise RuntimeError(
                f"only {ready}/{expected} subscribers receive audio and video after "
                f"{timeout:.0f}s; errors: {errors}\n{node.log_tail()}"
            )
        node.check_alive()
        time.sleep(0.2)


def wait_publishing(node: Server, timeout: float) -> None:
    """Wait until the node has received RTP from the publisher (its received counter grows)."""
    deadline = time.monotonic() + timeout
    while metric_samples(node).get("giaoban_received_packets_total", 0.0) <= 0:
        node.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node received no RTP in {timeout:.0f}s\n{node.log_tail()}")
        time.sleep(0.2)


def stop_all(helpers: list[Helper], node: Server | None) -> None:
    for helper in helpers:
        with contextlib.suppress(Exception):
            helper.stop()
    if node is not None:
        node.stop()


def process_rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss
