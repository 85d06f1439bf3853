"""Shared pieces of the benchmarks (bench/forwarding.py, bench/late_joiner.py, bench/memory.py).

The parent side: the machine/version heading, the node (or baseline server) process, the
helper-process handle, start/stop of a server with its helpers, metrics read from /metrics and
the machine-wide busy time. The helper side: one worker that runs aiortc Peers on the parent's
commands (publish, add subscribers, stats, replace a subscriber, run a late joiner that decodes
and times its first frame and first RTP packet). Plus small statistics helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(REPO), str(BENCH)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import psutil  # noqa: E402

ROOM = "bench"
FORWARDED_METRIC = "giaoban_forwarded_packets_total"
# Every giaoban_* sample on /metrics (counters and gauges), summed over label sets.
METRIC_LINE = re.compile(r"^(giaoban_\w+?)(?:\{[^}]*\})?\s+(\S+)$", re.MULTILINE)
COMMAND_TIMEOUT = 120.0  # seconds a helper gets to answer any one command
WORKER_LIFETIME = 4 * 3600.0  # a helper exits on its own after this, whatever happens
READY_TIMEOUT = 15.0  # seconds a replacing subscriber gets to receive audio and video


# --------------------------------------------------------------------------- machine


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for package in ("aiortc", "aioice", "av", "python-socketio", "aiohttp"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} (not installed)")
    return ", ".join(parts)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), {platform.system()} {platform.release()}"


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent not idle (psutil, system-wide)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    # Once: a second SIGTERM must not cut the cleanup (the `finally` blocks) short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def media(video_bitrate: int) -> str:
    """What the publisher sends."""
    return (
        f"640×360 30 fps VP8 barcode video pinned at {video_bitrate // 1000} kb/s "
        f"+ Opus 48 kHz tone"
    )


def run_benchmark(
    name: str,
    workdir_prefix: str,
    args: argparse.Namespace,
    setup: Callable[[argparse.Namespace], str],
    run: Callable[[argparse.Namespace, Path], int],
) -> int:
    """A benchmark from its heading to its exit status: `run(args, workdir)`'s.

    Makes a terminated benchmark clean up, creates the log directory (workdir), prints the
    heading (title, machine, library versions, `setup(args)`, the log directory), then runs;
    an exception from `run` is printed as "NAME benchmark failed: …" and gives status 1.
    """
    # A terminated benchmark still stops its node and helpers (the `finally` blocks run).
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix=workdir_prefix))
    print(f"Giao Ban {name} benchmark")
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    print(setup(args))
    print(f"logs: {workdir}")
    try:
        return run(args, workdir)
    except Exception as exc:
        print(f"\n{name} benchmark failed: {exc}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    # The invitation token helpers join ROOM with (the node admits no one without one).
    join_token: str | None = None
    repo: Path = REPO  # the checkout whose code the server runs
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            self.argv,
            cwd=self.repo,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode} before /readyz:\n"
                    f"{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: /readyz not ready in {ready_timeout}s")
            time.sleep(0.1)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:])

    def cpu_seconds(self) -> float:
        assert self.process is not None
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def metrics(self) -> dict[str, float]:
        """Every `giaoban_*` sample on /metrics (counters end in _total), {} if unreachable."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
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

    def counters(self) -> dict[str, float]:
        """Every `giaoban_*_total` counter on /metrics, summed over label sets ({} if none)."""
        return {name: value for name, value in self.metrics().items() if name.endswith("_total")}

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            raise RuntimeError(f"{self.name} is not running (exit {code}):\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def local_server(name: str, argv: list[str], workdir: Path, repo: Path = REPO) -> Server:
    """`argv --host 127.0.0.1 --port P` on a free port P, not started; logs to workdir/NAME.log.

    Its environment: host candidates 127.0.0.1 only, data under workdir, no ICE servers, Redis
    or database from the caller's environment.
    """
    env = dict(os.environ)
    env.update(
        GIAOBAN_ICE_HOST_ADDRESSES="127.0.0.1",
        GIAOBAN_DATA_DIR=str(workdir / "data"),
        GIAOBAN_LOG_LEVEL="WARNING",
        PYTHONPATH=str(repo),
    )
    for variable in ("GIAOBAN_ICE_SERVERS", "REDIS_URL", "DATABASE_URL"):
        env.pop(variable, None)
    port = free_port()
    argv = [*argv, "--host", "127.0.0.1", "--port", str(port)]
    return Server(name, argv, env, workdir / f"{name}.log", port, repo=repo)


def node_server(workdir: Path, repo: Path = REPO) -> Server:
    """The node, `python -m server.cli serve` of `repo`'s code, on 127.0.0.1 (not started),
    with ROOM scheduled in its store and an invitation token for the helpers."""
    server = local_server("node", [sys.executable, "-m", "server.cli", "serve"], workdir, repo)
    server.join_token = asyncio.run(schedule_bench_room(workdir / "data"))
    return server


async def schedule_bench_room(data_dir: Path) -> str:
    """Schedule ROOM (no lobby) in the node's store under `data_dir`; a member token to it."""
    from datetime import UTC, datetime, timedelta

    from argon2 import PasswordHasher

    from server.accounts import create_account, find_account
    from server.config import Config
    from server.invitations import mint_invitation
    from server.room_records import create_room, find_room
    from server.secret_key import load_secret_key
    from server.store.db import open_database

    config = Config(data_dir=data_dir)
    database = await open_database(config)
    try:
        async with database.session() as db, db.begin():
            host = await find_account(db, "bench-host")
            if host is None:
                cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
                host = await create_account(
                    db, "bench-host", secrets.token_urlsafe(16), role="host", hasher=cheap
                )
            if await find_room(db, ROOM) is None:
                await create_room(
                    db,
                    host,
                    title="Benchmark",
                    starts_at=datetime.now(UTC),
                    duration_minutes=1440,
                    mode="discussion",
                    lobby=False,
                    slug=ROOM,
                )
    finally:
        await database.close()
    expires = datetime.now(UTC) + timedelta(days=1)
    return mint_invitation(load_secret_key(config), room=ROOM, role="member", expires_at=expires)


# --------------------------------------------------------------------------- helpers


@dataclass
class Helper:
    index: int
    process: mp.Process
    conn: Connection
    subscribers: int = 0

    def call(self, message: dict[str, Any], timeout: float = COMMAND_TIMEOUT) -> dict[str, Any]:
        self.conn.send(message)
        deadline = time.monotonic() + timeout
        while not self.conn.poll(0.2):
            if not self.process.is_alive():
                raise RuntimeError(f"helper {self.index} died (exit {self.process.exitcode})")
            if time.monotonic() > deadline:
                raise RuntimeError(f"helper {self.index}: no answer to {message} in {timeout}s")
        reply = self.conn.recv()
        if not reply.get("ok"):
            raise RuntimeError(f"helper {self.index}: {message['cmd']} failed:\n{reply['error']}")
        return reply

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.process.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(Exception):
                self.call({"cmd": "stop"}, timeout=15)
            self.process.join(10)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


def start_helpers(
    count: int,
    base_url: str,
    video_bitrate: int,
    workdir: Path,
    prefix: str,
    join_token: str | None = None,
) -> list[Helper]:
    """Start `count` helper processes running `client_worker` (logs in workdir)."""
    ctx = mp.get_context("spawn")
    helpers: list[Helper] = []
    try:
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
                    join_token,
                ),
                daemon=True,
                name=f"bench-{prefix}-{index}",
            )
            process.start()
            child_end.close()
            helpers.append(Helper(index, process, parent_end))
    except BaseException:
        stop_all(helpers, None)
        raise
    return helpers


def stop_all(helpers: list[Helper], server: Server | None) -> None:
    for helper in helpers:
        with contextlib.suppress(Exception):
            helper.stop()
    if server is not None:
        server.stop()


@contextlib.contextmanager
def publishing(
    server: Server, count: int, video_bitrate: int, workdir: Path, prefix: str
) -> Iterator[list[Helper]]:
    """Start `server` and `count` helpers, helper 0 publishing; stop them all on leaving.

    Helper 0 only publishes (its encoder's pace must not suffer from subscribers).
    """
    helpers: list[Helper] = []
    try:
        server.start()
        helpers = start_helpers(
            count, server.url, video_bitrate, workdir, prefix, server.join_token
        )
        helpers[0].call({"cmd": "publish"})
        yield helpers
    finally:
        stop_all(helpers, server)


def wait_ready(
    helpers: list[Helper], server: Server, expected: int, timeout: float, label: str = ""
) -> None:
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
                f"{label}{': ' if label else ''}only {ready}/{expected} subscribers receive "
                f"audio and video after {timeout:.0f}s; errors: {errors}\n{server.log_tail()}"
            )
        server.check_alive()
        time.sleep(0.2)


def wait_publishing(node: Server, timeout: float) -> None:
    """Wait until the node has received RTP from the publisher (its received counter grows)."""
    deadline = time.monotonic() + timeout
    while node.metrics().get("giaoban_received_packets_total", 0.0) <= 0:
        node.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the node received no RTP in {timeout:.0f}s\n{node.log_tail()}")
        time.sleep(0.2)


# --------------------------------------------------------------------------- statistics


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
    conn: Connection,
    base_url: str,
    parent_pid: int,
    video_bitrate: int,
    log_path: str,
    join_token: str | None = None,
) -> None:
    """Entry point of a helper process: runs Peers on the parent's commands."""
    # Ctrl-C reaches the whole process group: the parent stops its helpers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with open(log_path, "a", buffering=1) as log_file:
        sys.stdout = sys.stderr = log_file
        asyncio.run(_client_main(conn, base_url, parent_pid, video_bitrate, join_token))


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


async def _published(publisher: Any) -> dict[str, dict[str, int]]:
    """RTP packets and bytes the publisher has sent so far, per kind (its outbound-rtp stats)."""
    sent: dict[str, dict[str, int]] = {}
    for conn in publisher.up_pcs.values():
        for sender in conn.getSenders():
            if sender.track is None:
                continue
            report = await sender.getStats()
            for stat in report.values():
                if stat.type == "outbound-rtp":
                    sent[sender.kind] = {"packets": stat.packetsSent, "bytes": stat.bytesSent}
    return sent


async def _client_main(
    conn: Connection,
    base_url: str,
    parent_pid: int,
    video_bitrate: int,
    join_token: str | None,
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
        await peer.join(ROOM, join_token)
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
            await peer.join(ROOM, join_token)
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
        """What the subscribers received so far; with the publisher's sent packets and bytes."""
        tracks = [t for peer in subscribers for t in peer.tracks_of()]
        errors = [e for peer in subscribers for e in peer.errors[-2:]]
        result: dict[str, Any] = {
            "subscribers": len(subscribers),
            "ready": sum(1 for peer in subscribers if is_ready(peer)),
            "packets": sum(t.packets for t in tracks),
            "bytes": sum(t.bytes for t in tracks),
            "errors": errors[:10],
        }
        if publisher is not None:
            result["published"] = await _published(publisher)
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
                    await publisher.join(ROOM, join_token)
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
