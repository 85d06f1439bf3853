"""Forwarding benchmark: the node's CPU cost per subscriber, against a MediaRelay baseline.

    /tmp/venv/bin/python bench/forwarding.py [--max-subscribers 64] [--duration 10]
                                             [--baseline-max 8]

Starts a node (`python -m server.cli serve`, host candidates on 127.0.0.1 only) in its own
process, then one publisher (640×360 VP8 barcode video pinned at ~800 kb/s + an Opus tone) and N
subscribers that do not decode (server.sfu.aiortc_tap.disable_decoding only counts packets),
spread over helper processes so the clients' CPU is not the node's. For N = 1, 2, 4, … it warms
up, then measures over --duration seconds the node process's CPU time (psutil user+system) and
the packets it forwarded (`giaoban_forwarded_packets_total` from /metrics, before and after; the
subscribers' received packets if the node has no such counter). Then it measures
bench/relay_baseline.py (aiortc MediaRelay: decode once, re-encode per subscriber) the same way
for N up to --baseline-max and prints the ratio of CPU seconds per subscriber. Every figure
printed comes from this run's measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

ROOM = "bench"
FORWARDED_METRIC = "giaoban_forwarded_packets_total"
COUNTER_LINE = re.compile(r"^(giaoban_\w+_total)(?:\{[^}]*\})?\s+(\S+)", re.MULTILINE)
# Node counters shown under each row (per second over the window), when the node has them.
SHOWN_COUNTERS = (
    "received_packets",
    "duplicate_packets",
    "dropped_packets",
    "retransmitted_packets",
    "keyframe_requests",
)
STEPS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
COMMAND_TIMEOUT = 120.0  # seconds a helper gets to answer any one command
WORKER_LIFETIME = 4 * 3600.0  # a helper exits on its own after this, whatever happens
SATURATED_PERCENT = 95.0


# --------------------------------------------------------------------------- helpers (clients)


def client_worker(
    conn: Connection, base_url: str, parent_pid: int, video_bitrate: int, log_path: str
) -> None:
    """Entry point of a helper process: runs publisher/subscriber Peers on command."""
    with open(log_path, "a", buffering=1) as log_file:
        sys.stdout = sys.stderr = log_file
        asyncio.run(_client_main(conn, base_url, parent_pid, video_bitrate))


async def _client_main(
    conn: Connection, base_url: str, parent_pid: int, video_bitrate: int
) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from tests.support.media import BarcodeVideoTrack, ToneAudioTrack
    from tests.support.peer import Peer, set_video_bitrate

    set_video_bitrate(video_bitrate)
    loop = asyncio.get_running_loop()
    subscribers: list[Peer] = []
    publisher: Peer | None = None
    deadline = time.monotonic() + WORKER_LIFETIME

    async def add_subscriber(index: int) -> Peer:
        peer = Peer(base_url, f"sub-{os.getpid()}-{index}")
        subscribers.append(peer)  # appended first so it is closed even if joining fails
        await peer.connect()
        await peer.join(ROOM)
        await peer.subscribe(decode=False)
        return peer

    async def stats() -> dict[str, Any]:
        ready = 0
        packets = 0
        payload_bytes = 0
        errors: list[str] = []
        for peer in subscribers:
            tracks = peer.tracks_of()
            kinds = {t.kind for t in tracks if t.packets > 0}
            if {"audio", "video"} <= kinds:
                ready += 1
            packets += sum(t.packets for t in tracks)
            payload_bytes += sum(t.bytes for t in tracks)
            errors += peer.errors[-2:]
        result: dict[str, Any] = {
            "subscribers": len(subscribers),
            "ready": ready,
            "packets": packets,
            "bytes": payload_bytes,
            "errors": errors[:10],
        }
        if publisher is not None:
            sent: dict[str, dict[str, int]] = {}
            for conn_ in publisher.up_pcs.values():
                for sender in conn_.getSenders():
                    if sender.track is None:
                        continue
                    report = await sender.getStats()
                    for stat in report.values():
                        if stat.type == "outbound-rtp":
                            sent[sender.kind] = {
                                "packets": stat.packetsSent,
                                "bytes": stat.bytesSent,
                            }
            result["published"] = sent
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
                    start = len(subscribers)
                    count = int(message["count"])
                    batch = 8
                    for first in range(start, start + count, batch):
                        last = min(first + batch, start + count)
                        await asyncio.gather(*(add_subscriber(i) for i in range(first, last)))
                    conn.send({"ok": True, "subscribers": len(subscribers)})
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


@dataclass
class Helper:
    index: int
    process: mp.Process
    conn: Connection
    subscribers: int = 0
    publishes: bool = False

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
    process: subprocess.Popen[bytes] | None = None
    _log: Any = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready_timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.process = subprocess.Popen(
            self.argv,
            cwd=REPO,
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

    def counters(self) -> dict[str, float]:
        """Every `giaoban_*_total` counter on /metrics, summed over label sets ({} if none)."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        totals: dict[str, float] = {}
        for name, value in COUNTER_LINE.findall(text):
            totals[name] = totals.get(name, 0.0) + float(value)
        return totals

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


# --------------------------------------------------------------------------- measuring


@dataclass
class Row:
    subscribers: int
    wall: float
    cpu: float  # node CPU seconds during the window
    packets: float  # forwarded (or subscriber-received) packets during the window
    received: float  # subscriber-received packets during the window
    client_cpu: list[float]  # each helper's CPU seconds during the window
    published_pps: float  # packets/s the publisher sent (video + audio)
    published_kbps: float
    source: str  # where `packets` came from
    node_counters: dict[str, float] = field(default_factory=dict)  # per second
    udp_drops: float | None = None  # machine-wide UDP receive-buffer drops per second
    machine_cpu: float | None = None  # CPU seconds the whole machine was busy

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu / self.wall

    @property
    def pps(self) -> float:
        return self.packets / self.wall

    @property
    def us_per_packet(self) -> float:
        return 1e6 * self.cpu / self.packets if self.packets else float("nan")

    @property
    def cpu_per_subscriber(self) -> float:
        return self.cpu / self.wall / self.subscribers

    @property
    def client_percent(self) -> str:
        return "+".join(f"{100 * c / self.wall:.0f}" for c in self.client_cpu)


@dataclass
class Series:
    name: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent not idle (psutil, system-wide)."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    return sum(times) - idle - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)


def udp_receive_drops() -> int | None:
    """Machine-wide count of UDP datagrams dropped for a full receive buffer (Linux)."""
    try:
        lines = [
            line.split()
            for line in Path("/proc/net/snmp").read_text().splitlines()
            if line.startswith("Udp:")
        ]
        header, values = lines[0], lines[1]
        return int(values[header.index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


def helpers_stats(helpers: list[Helper]) -> list[dict[str, Any]]:
    return [h.call({"cmd": "stats"}) for h in helpers]


def published_totals(stats: list[dict[str, Any]]) -> tuple[int, int]:
    packets = bytes_ = 0
    for s in stats:
        for kind in s.get("published", {}).values():
            packets += kind["packets"]
            bytes_ += kind["bytes"]
    return packets, bytes_


def run_series(
    name: str,
    server: Server,
    steps: list[int],
    args: argparse.Namespace,
    workdir: Path,
    use_metrics: bool,
) -> Series:
    series = Series(name)
    ctx = mp.get_context("spawn")
    helpers: list[Helper] = []
    try:
        server.start()
        # Process 0 only publishes (its encoder's pace must not suffer from subscribers);
        # processes 1..--helpers only subscribe.
        for index in range(args.helpers + 1):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(
                target=client_worker,
                args=(
                    child_end,
                    server.url,
                    os.getpid(),
                    args.video_bitrate,
                    str(workdir / f"{name}-helper{index}.log"),
                ),
                daemon=True,
                name=f"bench-helper-{index}",
            )
            process.start()
            child_end.close()
            helpers.append(Helper(index, process, parent_end))
        helpers[0].call({"cmd": "publish"})
        helpers[0].publishes = True

        for n in steps:
            server.check_alive()
            subscribing = helpers[1:]
            while sum(h.subscribers for h in subscribing) < n:
                target = min(subscribing, key=lambda h: h.subscribers)
                missing = n - sum(h.subscribers for h in subscribing)
                share = max(1, missing // len(subscribing))
                reply = target.call({"cmd": "add", "count": share})
                target.subscribers = reply["subscribers"]

            ready_deadline = time.monotonic() + args.ready_timeout + n
            while True:
                stats = helpers_stats(helpers)
                ready = sum(s["ready"] for s in stats)
                if ready >= n:
                    break
                if time.monotonic() > ready_deadline:
                    errors = [e for s in stats for e in s["errors"]]
                    raise RuntimeError(
                        f"{name}: only {ready}/{n} subscribers receive audio and video after "
                        f"{args.ready_timeout + n:.0f}s; errors: {errors}\n{server.log_tail()}"
                    )
                server.check_alive()
                time.sleep(0.2)
            time.sleep(args.warmup)

            before_stats = helpers_stats(helpers)
            before_counters = server.counters() if use_metrics else {}
            before_cpu = server.cpu_seconds()
            before_client = [h.cpu_seconds() for h in helpers]
            before_udp = udp_receive_drops()
            before_machine = machine_busy_seconds()
            t0 = time.monotonic()
            time.sleep(args.duration)
            after_cpu = server.cpu_seconds()
            t1 = time.monotonic()
            after_udp = udp_receive_drops()
            after_machine = machine_busy_seconds()
            after_client = [h.cpu_seconds() for h in helpers]
            after_counters = server.counters() if use_metrics else {}
            before_metric = before_counters.get(FORWARDED_METRIC)
            after_metric = after_counters.get(FORWARDED_METRIC)
            after_stats = helpers_stats(helpers)
            server.check_alive()

            received = sum(s["packets"] for s in after_stats) - sum(
                s["packets"] for s in before_stats
            )
            if before_metric is not None and after_metric is not None:
                packets = after_metric - before_metric
                source = FORWARDED_METRIC
            else:
                packets = received
                source = "subscriber-received packets"
                note = f"{name}: packets/s are subscriber-received packets"
                if use_metrics:
                    note += f" ({FORWARDED_METRIC} not found on /metrics)"
                if note not in series.notes:
                    series.notes.append(note)
            pub0 = published_totals(before_stats)
            pub1 = published_totals(after_stats)
            wall = t1 - t0
            row = Row(
                subscribers=n,
                wall=wall,
                cpu=after_cpu - before_cpu,
                packets=packets,
                received=received,
                client_cpu=[b - a for a, b in zip(before_client, after_client, strict=True)],
                udp_drops=(
                    (after_udp - before_udp) / (t1 - t0)
                    if after_udp is not None and before_udp is not None
                    else None
                ),
                machine_cpu=after_machine - before_machine,
                node_counters={
                    name: (after_counters[name] - before_counters[name]) / (t1 - t0)
                    for name in after_counters
                    if name in before_counters
                },
                published_pps=(pub1[0] - pub0[0]) / wall,
                published_kbps=(pub1[1] - pub0[1]) * 8 / wall / 1000,
                source=source,
            )
            series.rows.append(row)
            print_row(name, row)
            errors = [
                e for s in after_stats for e in [*s["errors"], *s.get("publisher_errors", [])]
            ]
            if errors:
                series.notes.append(f"{name} N={n}: client errors {errors[:3]}")
    finally:
        for helper in helpers:
            helper.stop()
        server.stop()
    return series


# --------------------------------------------------------------------------- output


HEADER = (
    f"{'N':>4} {'server CPU %':>12} {'pkts/s':>9} {'µs/pkt':>8} {'CPU s/sub/s':>12} "
    f"{'recv pkts/s':>11} {'recv/sub':>8} {'pub kb/s':>9} {'pub pkts/s':>10} "
    f"{'clients CPU %':>13}"
)


def print_row(name: str, row: Row) -> None:
    mark = "  (saturated)" if row.cpu_percent >= SATURATED_PERCENT else ""
    print(
        f"{row.subscribers:>4} {row.cpu_percent:>12.1f} {row.pps:>9.0f} {row.us_per_packet:>8.1f} "
        f"{row.cpu_per_subscriber:>12.5f} {row.received / row.wall:>11.0f} "
        f"{row.received / row.wall / row.subscribers:>8.0f} {row.published_kbps:>9.0f} "
        f"{row.published_pps:>10.0f} {row.client_percent:>13}"
        f"{mark}",
        flush=True,
    )
    shown = [
        f"{name.replace('_', ' ')} {row.node_counters[f'giaoban_{name}_total']:.1f}"
        for name in SHOWN_COUNTERS
        if f"giaoban_{name}_total" in row.node_counters
    ]
    if row.udp_drops is not None:
        shown.append(f"UDP receive-buffer drops (whole machine) {row.udp_drops:.1f}")
    if row.machine_cpu is not None:
        shown.append(
            f"whole machine busy {100 * row.machine_cpu / row.wall:.0f}% "
            f"(of {100 * (os.cpu_count() or 1)}%)"
        )
    if shown:
        print(f"{'':>4} per second: {', '.join(shown)}", flush=True)


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


def print_comparison(forwarding: Series, baseline: Series) -> None:
    print("\nCPU seconds per subscriber per second, baseline ÷ forwarding (measured above):")
    fwd = {r.subscribers: r for r in forwarding.rows}
    any_match = False
    for row in baseline.rows:
        match = fwd.get(row.subscribers)
        if match is None or match.cpu_per_subscriber <= 0:
            continue
        any_match = True
        ratio = row.cpu_per_subscriber / match.cpu_per_subscriber
        print(
            f"  N={row.subscribers:>3}: baseline {row.cpu_per_subscriber:.5f} / forwarding "
            f"{match.cpu_per_subscriber:.5f} = {ratio:.1f}×"
        )
    if not any_match:
        print("  (no N measured in both series)")
    if forwarding.rows and baseline.rows:
        top = max(forwarding.rows, key=lambda r: r.subscribers)
        best = min(baseline.rows, key=lambda r: r.cpu_per_subscriber)
        if top.cpu_per_subscriber > 0:
            print(
                f"  forwarding at N={top.subscribers} ({top.cpu_per_subscriber:.5f}) vs the "
                f"baseline's best, N={best.subscribers} ({best.cpu_per_subscriber:.5f}): "
                f"{best.cpu_per_subscriber / top.cpu_per_subscriber:.1f}×"
            )

    print("Server CPU µs per packet delivered, baseline ÷ forwarding (same N):")
    for row in baseline.rows:
        match = fwd.get(row.subscribers)
        if match is None or not match.packets or not row.packets:
            continue
        print(
            f"  N={row.subscribers:>3}: baseline {row.us_per_packet:.1f} / forwarding "
            f"{match.us_per_packet:.1f} = {row.us_per_packet / match.us_per_packet:.1f}×"
        )


def print_series(series: Series) -> None:
    for note in series.notes:
        print(f"  note: {note}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-subscribers", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per N")
    parser.add_argument("--baseline-max", type=int, default=8, help="0 skips the baseline")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument(
        "--helpers", type=int, default=2, choices=(1, 2, 3, 4), help="subscriber processes"
    )
    parser.add_argument("--video-bitrate", type=int, default=800_000)
    parser.add_argument(
        "--ready-timeout", type=float, default=20.0, help="seconds (+1 per subscriber)"
    )
    parser.add_argument(
        "--only", choices=("forwarding", "baseline"), help="run one series (default: both)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.max_subscribers <= STEPS[-1]:
        parser.error(f"--max-subscribers must be 1..{STEPS[-1]}")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive, --warmup not negative")
    return args


def steps_up_to(limit: int) -> list[int]:
    steps = [n for n in STEPS if n <= limit]
    if steps[-1] != limit:
        steps.append(limit)
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A terminated benchmark still stops its node and helpers (the `finally` blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="giaoban-bench-"))
    env = dict(os.environ)
    env.update(
        GIAOBAN_ICE_HOST_ADDRESSES="127.0.0.1",
        GIAOBAN_DATA_DIR=str(workdir / "data"),
        GIAOBAN_LOG_LEVEL="WARNING",
        PYTHONPATH=str(REPO),
    )
    env.pop("GIAOBAN_ICE_SERVERS", None)
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)

    print("Giao Ban forwarding benchmark")
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    print(
        f"publisher: 1 × 640×360 30 fps VP8 barcode video pinned at "
        f"{args.video_bitrate // 1000} kb/s + Opus 48 kHz tone; subscribers do not decode; "
        f"publisher in its own process, subscribers in {args.helpers}; {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured per N"
    )
    print(f"logs: {workdir}")

    node_port = free_port()
    node = Server(
        "node",
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(node_port),
        ],
        env,
        workdir / "node.log",
        node_port,
    )
    forwarding = Series("forwarding")
    if args.only != "baseline":
        print("\nForwarding (giaoban serve, RTP forwarding):")
        print(HEADER, flush=True)
        try:
            forwarding = run_series(
                "forwarding", node, steps_up_to(args.max_subscribers), args, workdir, True
            )
        except Exception as exc:
            print(f"\nforwarding benchmark failed: {exc}", file=sys.stderr)
            return 1
        print_series(forwarding)

    if args.baseline_max <= 0 or args.only == "forwarding":
        return 0
    baseline_port = free_port()
    baseline_server = Server(
        "relay_baseline",
        [
            sys.executable,
            str(REPO / "bench" / "relay_baseline.py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(baseline_port),
        ],
        env,
        workdir / "relay_baseline.log",
        baseline_port,
    )
    print("\nBaseline (bench/relay_baseline.py, aiortc MediaRelay: decode once, encode per sub):")
    print(HEADER, flush=True)
    try:
        baseline = run_series(
            "baseline", baseline_server, steps_up_to(args.baseline_max), args, workdir, False
        )
    except Exception as exc:
        print(f"\nbaseline benchmark failed: {exc}", file=sys.stderr)
        return 1
    print_series(baseline)
    print_comparison(forwarding, baseline)
    print(
        "\nColumns: server CPU % = the node (or baseline) process, % of one core; "
        "pkts/s = forwarded per second (baseline: received by the subscribers); "
        "µs/pkt = server CPU per packet; CPU s/sub/s = server CPU seconds per subscriber per "
        "second; recv pkts/s = received by all subscribers; pub = what the publisher sent; "
        "clients CPU % = the publisher's process then each subscriber process, % of one core; "
        "recv/sub = packets/s each subscriber received on average (the baseline's re-encoders send "
        "fewer when they fall behind); 'per second' lines: the node's own counters from "
        "/metrics, kernel UDP drops and how busy the whole machine was (other work on a shared "
        "machine skews the figures)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
