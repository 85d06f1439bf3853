"""Late-joiner benchmark: how soon a new subscriber sees video after its connection is up.

    .venv/bin/python bench/late_joiner.py [--joiners 20] [--background-subscribers 8]

Starts a node (`python -m server.cli serve`, host candidates on 127.0.0.1 only) in its own
process, one publisher (640×360 VP8 barcode video pinned at ~800 kb/s + an Opus tone) in a
helper process, optionally background subscribers that do not decode (another helper process)
to load the node, then, one after another, K late joiners in a third helper process: each a
fresh aiortc Peer that decodes (connect, join, subscribe). For each it prints the time from its
down connection becoming "connected" to its first decoded video frame (target: ≤ 500 ms) and to
the first video RTP packet reaching it, all on the joiner process's monotonic clock, then the
min / median / p90 / max. Every figure printed comes from this run's measurements.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    machine_busy_seconds,
    media,
    node_server,
    publishing,
    run_benchmark,
    summary,
    wait_publishing,
    wait_ready,
)

COLUMNS = (
    f"{'joiner':>6} {'connect+join':>12} {'sub→connected':>13} {'→1st video pkt':>14} "
    f"{'→1st video frame':>16} {'→1st audio pkt':>14} {'→1st audio frame':>16}"
)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{1000 * value:.0f}"


def since_connected(sample: dict[str, Any], key: str) -> float | None:
    connected = sample.get("connected")
    value = sample.get(key)
    if connected is None or value is None:
        return None
    return value - connected


def print_sample(label: str, sample: dict[str, Any]) -> None:
    connected = sample.get("connected")
    join = sample["subscribe"] - sample["start"]
    to_connected = None if connected is None else connected - sample["subscribe"]
    line = (
        f"{label:>6} {ms(join):>12} {ms(to_connected):>13} "
        f"{ms(since_connected(sample, 'first_video_packet')):>14} "
        f"{ms(since_connected(sample, 'first_video_frame')):>16} "
        f"{ms(since_connected(sample, 'first_audio_packet')):>14} "
        f"{ms(since_connected(sample, 'first_audio_frame')):>16}"
    )
    if "timeout" in sample:
        line += "  (no decoded video frame before the timeout)"
    if sample.get("errors"):
        line += f"  errors: {sample['errors']}"
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--joiners", type=int, default=20, help="late joiners measured")
    parser.add_argument(
        "--background-subscribers", type=int, default=8, help="subscribers loading the node"
    )
    parser.add_argument(
        "--prime",
        type=int,
        default=1,
        help="joiners run first and not counted (the joiner process's first decoder/imports)",
    )
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between joiners")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds a joiner waits for its first frame"
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before the first")
    parser.add_argument("--target-ms", type=float, default=500.0)
    parser.add_argument("--video-bitrate", type=int, default=800_000)
    args = parser.parse_args(argv)
    if not 1 <= args.joiners <= 1000:
        parser.error("--joiners must be 1..1000")
    if not 0 <= args.background_subscribers <= 256:
        parser.error("--background-subscribers must be 0..256")
    if not 0 <= args.prime <= 10:
        parser.error("--prime must be 0..10")
    if args.pause < 0 or args.warmup < 0 or not 0 < args.timeout <= 120:
        parser.error("--pause/--warmup not negative, --timeout in (0, 120]")
    return args


def setup(args: argparse.Namespace) -> str:
    return (
        f"setup: 1 publisher ({media(args.video_bitrate)}) in its own process; "
        f"{args.background_subscribers} background subscribers (not decoding) in another; "
        f"{args.joiners} late joiners one after another in a third, each a fresh aiortc "
        f"Peer that decodes (connect, join, subscribe, wait for the first video and audio "
        f"frames, leave), {args.pause:g} s apart, after {args.prime} priming joiner(s) not "
        f"counted; {args.warmup:g} s warm-up"
    )


def run(args: argparse.Namespace, workdir: Path) -> int:
    print(
        "note: the decoded-frame figure includes the aiortc subscriber's own receive latency "
        "(jitter buffer + VP8 decoder); the RTP-packet figure does not (see the notes at the end)"
    )
    node = node_server(workdir)
    # 0: publisher; 1: late joiners; 2: background subscribers (if any).
    count = 3 if args.background_subscribers else 2
    with publishing(node, count, args.video_bitrate, workdir, "late") as helpers:
        joiner = helpers[1]
        wait_publishing(node, 20)
        if args.background_subscribers:
            background = helpers[2]
            background.call({"cmd": "add", "count": args.background_subscribers})
            wait_ready(
                [background],
                node,
                args.background_subscribers,
                20 + 0.5 * args.background_subscribers,
            )
        time.sleep(args.warmup)

        print(COLUMNS, flush=True)
        for index in range(args.prime):
            node.check_alive()
            sample = joiner.call(
                {"cmd": "late_join", "index": -1 - index, "timeout": args.timeout},
                timeout=args.timeout + 60,
            )
            print_sample(f"p{index + 1}", sample)
            time.sleep(args.pause)

        before = node.metrics()
        busy0, wall0 = machine_busy_seconds(), time.monotonic()
        samples: list[dict[str, Any]] = []
        for index in range(args.joiners):
            node.check_alive()
            sample = joiner.call(
                {"cmd": "late_join", "index": index, "timeout": args.timeout},
                timeout=args.timeout + 60,
            )
            samples.append(sample)
            print_sample(str(index + 1), sample)
            if index + 1 < args.joiners:
                time.sleep(args.pause)
        busy1, wall1 = machine_busy_seconds(), time.monotonic()
        after = node.metrics()
        node.check_alive()
        if args.background_subscribers:
            still = helpers[2].call({"cmd": "stats"})
            background_line = (
                f"background subscribers still receiving audio and video at the end: "
                f"{still['ready']}/{still['subscribers']}"
            )
        else:
            background_line = ""

    frames = [v for s in samples if (v := since_connected(s, "first_video_frame")) is not None]
    packets = [v for s in samples if (v := since_connected(s, "first_video_packet")) is not None]
    decode = [
        s["first_video_frame"] - s["first_video_packet"]
        for s in samples
        if s.get("first_video_frame") is not None and s.get("first_video_packet") is not None
    ]
    from_subscribe = [
        s["first_video_frame"] - s["subscribe"]
        for s in samples
        if s.get("first_video_frame") is not None
    ]
    within = sum(1 for v in frames if 1000 * v <= args.target_ms)
    missing = len(samples) - len(frames)

    print(f"\nSummary over {len(samples)} late joiners (priming joiners not counted):")
    print(f"  first decoded video frame − down connected: {summary(frames)}")
    print(
        f"  within {args.target_ms:.0f} ms: {within} of {len(samples)}"
        + (f" ({missing} without a decoded frame or a connected time)" if missing else "")
    )
    print(f"  first video RTP packet − down connected:    {summary(packets)}")
    print(f"  first decoded video frame − first video RTP packet (joiner side): {summary(decode)}")
    print(f"  first decoded video frame − subscribe request: {summary(from_subscribe)}")
    counters = {
        name.removeprefix("giaoban_").removesuffix("_total"): after[name] - before[name]
        for name in ("giaoban_keyframe_requests_total", "giaoban_dropped_packets_total")
        if name in after and name in before
    }
    if counters:
        print(
            "  node during the measured joins: "
            + ", ".join(f"{name.replace('_', ' ')} {value:.0f}" for name, value in counters.items())
        )
    if background_line:
        print(f"  {background_line}")
    print(
        f"  whole machine busy during the measured joins: "
        f"{100 * (busy1 - busy0) / (wall1 - wall0):.0f}% (of {100 * (os.cpu_count() or 1)}%)"
    )
    print(
        "\nNotes: times are on the joiner process's monotonic clock, from its down connection's "
        "connectionState becoming 'connected'. '1st video pkt' is the first video RTP packet "
        "handed to aiortc's RTCRtpReceiver in the joiner (after SRTP, before its jitter buffer "
        "and decoder); the node starts a new subscriber's video at a keyframe, so this is the "
        "start of a keyframe. '1st video frame' is the first frame aiortc's VP8 decoder returned: "
        "it adds the receiving side's own latency — the whole keyframe must arrive, aiortc's "
        "jitter buffer releases a frame only when a packet of the next frame arrives (≈ 33 ms at "
        "30 fps), and decoding runs in its decoder thread — which a browser's receive pipeline "
        "does differently. 'connect+join' = Socket.IO connect + join; 'sub→connected' = "
        "subscribe request to the down connection being connected."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("late-joiner", "giaoban-bench-late-", parse_args(argv), setup, run)


if __name__ == "__main__":
    sys.exit(main())
