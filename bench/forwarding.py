"""Forwarding benchmark: the node's CPU cost per subscriber, against a MediaRelay baseline.

    .venv/bin/python bench/forwarding.py [--max-subscribers 64] [--duration 10]
                                             [--baseline-max 8]

Starts a node (`python -m server.cli serve`, host candidates on 127.0.0.1 only) in its own
process, then one publisher (640×360 VP8 barcode video pinned at ~800 kb/s + an Opus tone) and N
subscribers that do not decode (server.sfu.aiortc_tap.disable_decoding only counts packets),
spread over helper processes so the clients' CPU is not the node's. For N = 1, 2, 4, … it warms
up, then measures over --duration seconds the node process's CPU time (psutil user+system) and
the packets it forwarded (`giaoban_forwarded_packets_total` from /metrics, before and after; the
subscribers' received packets if the node has no such counter). Then it measures
bench/relay_baseline.py (aiortc MediaRelay: decode once, re-encode per subscriber) the same way
for N up to --baseline-max and prints the ratio of CPU seconds per subscriber. Between the two
it measures the floor under the forwarding figure at the largest N (bench/sendto_floor.py: as
many sockets, the same packet rate and mean packet size, SRTP protect + sendto and nothing
else). Every figure printed comes from this run's measurements.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH,
    FORWARDED_METRIC,
    Helper,
    Server,
    local_server,
    machine_busy_seconds,
    media,
    node_server,
    publishing,
    run_benchmark,
    wait_ready,
)

# Node counters shown under each row (per second over the window), when the node has them.
SHOWN_COUNTERS = (
    "received_packets",
    "duplicate_packets",
    "dropped_packets",
    "retransmitted_packets",
    "keyframe_requests",
)
STEPS = [1, 2, 4, 8, 16, 32, 64, 128, 256]
SATURATED_PERCENT = 95.0


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
    # Helper 0 only publishes; helpers 1..--helpers only subscribe.
    with publishing(server, args.helpers + 1, args.video_bitrate, workdir, name) as helpers:
        subscribing = helpers[1:]
        for n in steps:
            server.check_alive()
            while sum(h.subscribers for h in subscribing) < n:
                target = min(subscribing, key=lambda h: h.subscribers)
                missing = n - sum(h.subscribers for h in subscribing)
                share = max(1, missing // len(subscribing))
                reply = target.call({"cmd": "add", "count": share})
                target.subscribers = reply["subscribers"]

            wait_ready(subscribing, server, n, args.ready_timeout + n, name)
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


def print_floor(row: Row, seconds: float) -> None:
    """The same-run floor under the forwarding figure at the largest N (bench/sendto_floor.py)."""
    import sendto_floor

    forwarded_bytes = row.node_counters.get("giaoban_forwarded_bytes_total")
    size = round(forwarded_bytes / row.pps) if forwarded_bytes and row.pps else 700
    rate = row.published_pps or 141.0
    print(
        f"\nFloor (bench/sendto_floor.py, no node): {row.subscribers} sockets to receivers in two "
        f"processes, {rate:.0f} rounds/s, {size} B (the N, packet rate and mean forwarded size "
        "above):",
        flush=True,
    )
    floor = sendto_floor.measure(row.subscribers, rate, size, max(seconds, 4.0))
    print(f"  sendto alone:            {floor.sendto_us:6.1f} µs per datagram")
    print(f"  SRTP protect + sendto:   {floor.srtp_sendto_us:6.1f} µs per datagram")
    print(
        f"  forwarding at N={row.subscribers}: {row.us_per_packet:.1f} µs per packet, "
        f"{row.us_per_packet - floor.srtp_sendto_us:.1f} µs above the floor (receiving, RTCP, "
        "rewriting, Python)",
        flush=True,
    )


def print_series(series: Series) -> None:
    for note in series.notes:
        print(f"  note: {note}")


def print_legend() -> None:
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


def measure_series(
    name: str,
    heading: str,
    server: Server,
    limit: int,
    args: argparse.Namespace,
    workdir: Path,
    use_metrics: bool,
) -> Series | None:
    """Print the series' heading and rows, then its notes; None (reported) if it failed."""
    print(f"\n{heading}")
    print(HEADER, flush=True)
    try:
        series = run_series(name, server, steps_up_to(limit), args, workdir, use_metrics)
    except Exception as exc:
        print(f"\n{name} benchmark failed: {exc}", file=sys.stderr)
        return None
    print_series(series)
    return series


def setup(args: argparse.Namespace) -> str:
    return (
        f"publisher: 1 × {media(args.video_bitrate)}; subscribers do not decode; "
        f"publisher in its own process, subscribers in {args.helpers}; {args.warmup:g} s warm-up, "
        f"{args.duration:g} s measured per N"
    )


def run(args: argparse.Namespace, workdir: Path) -> int:
    forwarding: Series | None = Series("forwarding")
    if args.only != "baseline":
        forwarding = measure_series(
            "forwarding",
            "Forwarding (giaoban serve, RTP forwarding):",
            node_server(workdir),
            args.max_subscribers,
            args,
            workdir,
            use_metrics=True,
        )
    if forwarding is None:
        return 1
    if forwarding.rows:
        print_floor(forwarding.rows[-1], args.duration)
    if args.baseline_max <= 0 or args.only == "forwarding":
        return 0
    baseline_server = local_server(
        "relay_baseline", [sys.executable, str(BENCH / "relay_baseline.py")], workdir
    )
    baseline = measure_series(
        "baseline",
        "Baseline (bench/relay_baseline.py, aiortc MediaRelay: decode once, encode per sub):",
        baseline_server,
        args.baseline_max,
        args,
        workdir,
        use_metrics=False,  # no /metrics: its packets are what its subscribers received
    )
    if baseline is None:
        return 1
    print_comparison(forwarding, baseline)
    print_legend()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("forwarding", "giaoban-bench-", parse_args(argv), setup, run)


if __name__ == "__main__":
    sys.exit(main())
