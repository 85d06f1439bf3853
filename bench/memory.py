"""Memory benchmark: is the node's resident memory flat over a long run with subscribers?

    .venv/bin/python bench/memory.py [--minutes 10] [--subscribers 16] [--sample-seconds 10]
                                         [--warmup 60] [--churn-every 0]

Starts a node (`python -m server.cli serve`, host candidates on 127.0.0.1 only) in its own
process, one publisher (640×360 VP8 barcode video pinned at ~800 kb/s + an Opus tone) in a
helper process and N subscribers that do not decode spread over one or two more. After a
warm-up it samples the node process's RSS (psutil) every --sample-seconds for --minutes, with
the packets it forwarded (`giaoban_forwarded_packets_total` from /metrics), and prints the RSS
at the start and end of the measured period, the maximum, the growth in %, a least-squares
slope in MiB/hour and PASS/FAIL against "within 10%". With --churn-every S, every S seconds
(warm-up included) the oldest subscriber of one helper leaves and a new one joins, so memory
kept after a leave shows up. Every figure printed comes from this run's measurements.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil
from common import (
    FORWARDED_METRIC,
    Helper,
    Server,
    machine_busy_seconds,
    media,
    node_server,
    publishing,
    run_benchmark,
    wait_publishing,
    wait_ready,
)

MIB = 1024 * 1024
HEADER = (
    f"{'time s':>7} {'RSS MiB':>8} {'vs start':>8} {'forwarded pkts':>14} {'fwd pkts/s':>10} "
    f"{'participants':>12} {'peer conns':>10} {'fds':>5} {'threads':>7} {'churns':>6}"
)


@dataclass
class Sample:
    at: float  # seconds since the start of the measured period
    rss: int
    forwarded: float | None
    participants: float | None
    peer_connections: float | None
    fds: int | None
    threads: int
    churns: int


@dataclass
class Churn:
    every: float
    next_at: float
    helpers: list[Helper]
    count: int = 0
    measured: int = 0  # of count, during the measured period
    failed: int = 0  # the new subscriber did not receive audio and video in time
    leave_seconds: list[float] = field(default_factory=list)
    ready_seconds: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def due(self, now: float) -> bool:
        return self.every > 0 and now >= self.next_at

    def run(self, measuring: bool) -> None:
        helper = self.helpers[self.count % len(self.helpers)]
        reply = helper.call({"cmd": "churn"})
        self.count += 1
        self.measured += measuring
        self.leave_seconds.append(reply["leave_s"])
        if reply["ready"]:
            self.ready_seconds.append(reply["ready_s"])
        else:
            self.failed += 1
        self.errors += reply.get("errors", [])
        # The next one is S seconds after this one was due; never more than one behind.
        self.next_at = max(self.next_at + self.every, time.monotonic())


def take_sample(node: Server, t0: float, churns: int) -> Sample:
    assert node.process is not None
    process = psutil.Process(node.process.pid)
    with process.oneshot():
        rss = process.memory_info().rss
        threads = process.num_threads()
        fds = process.num_fds() if hasattr(process, "num_fds") else None
    metrics = node.metrics()
    return Sample(
        at=time.monotonic() - t0,
        rss=rss,
        forwarded=metrics.get(FORWARDED_METRIC),
        participants=metrics.get("giaoban_participants"),
        peer_connections=metrics.get("giaoban_peer_connections"),
        fds=fds,
        threads=threads,
        churns=churns,
    )


def fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_sample(sample: Sample, start: Sample, previous: Sample | None) -> None:
    rate = None
    if previous is not None and sample.forwarded is not None and previous.forwarded is not None:
        rate = (sample.forwarded - previous.forwarded) / max(sample.at - previous.at, 1e-9)
    print(
        f"{sample.at:>7.1f} {sample.rss / MIB:>8.1f} "
        f"{100 * (sample.rss / start.rss - 1):>+7.1f}% {fmt(sample.forwarded):>14} "
        f"{fmt(rate):>10} {fmt(sample.participants):>12} {fmt(sample.peer_connections):>10} "
        f"{fmt(sample.fds):>5} {sample.threads:>7} {sample.churns:>6}",
        flush=True,
    )


def sleep_until(deadline: float, churn: Churn, node: Server, measuring: bool) -> None:
    """Sleep until `deadline`, replacing subscribers whenever churn is due."""
    while True:
        now = time.monotonic()
        if churn.due(now):
            node.check_alive()
            churn.run(measuring)
            continue
        if now >= deadline:
            return
        wake = deadline if churn.every <= 0 else min(deadline, churn.next_at)
        time.sleep(max(0.0, min(wake - now, 1.0)))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured period")
    parser.add_argument("--subscribers", type=int, default=16)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds before measuring")
    parser.add_argument(
        "--churn-every",
        type=float,
        default=0.0,
        help="seconds between one subscriber leaving and a new one joining (0: off)",
    )
    parser.add_argument(
        "--helpers", type=int, default=2, choices=(1, 2), help="subscriber processes"
    )
    parser.add_argument("--limit-percent", type=float, default=10.0, help="PASS threshold")
    parser.add_argument("--video-bitrate", type=int, default=800_000)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be in (0, 1440]")
    if not 1 <= args.subscribers <= 128:
        parser.error("--subscribers must be 1..128")
    if not 1 <= args.sample_seconds <= 3600 or args.sample_seconds > 60 * args.minutes:
        parser.error("--sample-seconds must be 1..3600 and at most the measured period")
    if args.warmup < 0 or args.churn_every < 0 or 0 < args.churn_every < 1:
        parser.error("--warmup not negative; --churn-every 0 (off) or at least 1")
    if args.churn_every and args.subscribers < args.helpers:
        parser.error("--churn-every needs at least one subscriber per helper")
    return args


def setup(args: argparse.Namespace) -> str:
    churn = f"every {args.churn_every:g} s" if args.churn_every else "off"
    return (
        f"setup: 1 publisher ({media(args.video_bitrate)}) in its own process; "
        f"{args.subscribers} subscribers (not decoding) in {args.helpers} more; "
        f"{args.warmup:g} s warm-up, then node RSS every {args.sample_seconds:g} s for "
        f"{args.minutes:g} min; churn {churn}"
    )


def run(args: argparse.Namespace, workdir: Path) -> int:
    node = node_server(workdir)
    samples: list[Sample] = []
    with publishing(node, 1 + args.helpers, args.video_bitrate, workdir, "memory") as helpers:
        wait_publishing(node, 20)
        subscribing = helpers[1:]
        for i, helper in enumerate(subscribing):
            share = args.subscribers // len(subscribing) + (i < args.subscribers % len(subscribing))
            if share:
                helper.call({"cmd": "add", "count": share})
        wait_ready(subscribing, node, args.subscribers, 20 + 0.5 * args.subscribers)
        print(f"{args.subscribers} subscribers receive audio and video; warming up", flush=True)

        churn = Churn(args.churn_every, time.monotonic() + args.churn_every, subscribing)
        sleep_until(time.monotonic() + args.warmup, churn, node, measuring=False)

        print(HEADER, flush=True)
        t0 = time.monotonic()
        busy0 = machine_busy_seconds()
        count = round(60 * args.minutes / args.sample_seconds)
        for k in range(count + 1):
            sleep_until(t0 + k * args.sample_seconds, churn, node, measuring=k > 0)
            node.check_alive()
            sample = take_sample(node, t0, churn.count)
            previous = samples[-1] if samples else None
            samples.append(sample)
            print_sample(sample, samples[0], previous)
        wall = time.monotonic() - t0
        busy = machine_busy_seconds() - busy0
        final = [h.call({"cmd": "stats"}) for h in subscribing]
        counters = node.metrics()

    start, end = samples[0], samples[-1]
    top = max(samples, key=lambda s: s.rss)
    low = min(samples, key=lambda s: s.rss)
    end_growth = 100 * (end.rss / start.rss - 1)
    max_growth = 100 * (top.rss / start.rss - 1)
    hours = [s.at / 3600 for s in samples]
    mib = [s.rss / MIB for s in samples]
    slope = statistics.linear_regression(hours, mib).slope if len(samples) >= 2 else 0.0
    passed = top.rss <= start.rss * (1 + args.limit_percent / 100)

    print(f"\nMeasured period: {end.at:.0f} s, {len(samples)} samples")
    print(f"  RSS at start: {start.rss / MIB:.1f} MiB")
    print(f"  RSS at end:   {end.rss / MIB:.1f} MiB ({end_growth:+.1f}% vs start)")
    print(f"  RSS max:      {top.rss / MIB:.1f} MiB at {top.at:.0f} s ({max_growth:+.1f}%)")
    print(f"  RSS min:      {low.rss / MIB:.1f} MiB at {low.at:.0f} s")
    print(
        f"  linear fit:   {slope:+.1f} MiB/hour "
        f"({slope * end.at / 3600:+.1f} MiB over the measured period)"
    )
    print(
        f"  {'PASS' if passed else 'FAIL'}: max RSS {max_growth:+.1f}% vs start "
        f"(limit +{args.limit_percent:g}%; end {end_growth:+.1f}%)"
    )
    if args.churn_every:
        print(
            f"  churn: {churn.count} subscribers replaced ({churn.measured} during the measured "
            f"period, {churn.count - churn.measured} during warm-up), one every "
            f"{args.churn_every:g} s; {churn.failed} replacements did not receive audio and "
            f"video within 15 s"
            + (
                f"; leave took median {1000 * statistics.median(churn.leave_seconds):.0f} ms, "
                f"joining until audio+video median "
                f"{1000 * statistics.median(churn.ready_seconds):.0f} ms"
                if churn.leave_seconds and churn.ready_seconds
                else ""
            )
        )
        if churn.errors:
            print(f"  churn client errors: {churn.errors[:5]}")
    else:
        print("  churn: off")
    ready = sum(s["ready"] for s in final)
    total = sum(s["subscribers"] for s in final)
    print(f"  subscribers receiving audio and video at the end: {ready}/{total}")
    shown = [
        f"{name.removeprefix('giaoban_').removesuffix('_total').replace('_', ' ')} "
        f"{counters[name]:.0f}"
        for name in (
            "giaoban_joins_total",
            "giaoban_leaves_total",
            FORWARDED_METRIC,
            "giaoban_dropped_packets_total",
            "giaoban_keyframe_requests_total",
        )
        if name in counters
    ]
    if shown:
        print(f"  node counters at the end (whole run): {', '.join(shown)}")
    errors = [e for s in final for e in [*s["errors"], *s.get("publisher_errors", [])]]
    if errors:
        print(f"  client errors: {errors[:5]}")
    print(
        f"  whole machine busy during the measured period: {100 * busy / wall:.0f}% "
        f"(of {100 * (os.cpu_count() or 1)}%)"
    )
    print(
        "\nColumns: time from the start of the measured period; RSS = the node process's "
        "resident set size (psutil); vs start = change from the first sample; forwarded pkts = "
        f"{FORWARDED_METRIC} on /metrics (fwd pkts/s since the previous sample); participants "
        "and peer conns = the node's gauges; fds and threads of the node process; churns = "
        "subscribers replaced so far (warm-up included). PASS means every sample's RSS is at "
        f"most {args.limit_percent:g}% above the first one."
    )
    return 0 if passed else 2


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("memory", "giaoban-bench-memory-", parse_args(argv), setup, run)


if __name__ == "__main__":
    sys.exit(main())
