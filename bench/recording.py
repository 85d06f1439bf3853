"""Recording benchmark: the recorder's CPU per stream against transcoding, and compose time.

    .venv/bin/python bench/recording.py [--streams 4] [--seconds 20] [--meeting-minutes 10]

(1) Remux cost. Real RTP is made ahead of time (not measured) with aiortc's own encoders, as
a browser-like publisher sends it: 640×360 30 fps VP8 barcode video pinned at ~800 kb/s and a
48 kHz Opus tone (aiortc's OpusEncoder, 96 kb/s), `--seconds` long. The same packets are fed
to `--streams` `TrackWriter`s per kind, as fast as they go, and the process's CPU time
(user + system, all threads) gives CPU seconds per stream-second. Baseline in the same run:
the same frames (already assembled from the packets, which favours the baseline) decoded and
re-encoded into Matroska: VP8 with libvpx at the same bitrate and aiortc's real-time settings,
Opus decoded and re-encoded with libopus at 96 kb/s. Prints both and the ratio (target ≥ 10).

(2) Compose time. A `--meeting-minutes` two-participant meeting (video + audio each, the
second joining 2 s late) is written through `TrackWriter` by looping the packets above with
continuing sequence numbers and timestamps, then `recording.compose.compose` makes the
1280×720 15 fps H.264 + AAC composite; prints wall and CPU time, the realtime factor and the
peak memory of the process.
"""

from __future__ import annotations

import argparse
import fractions
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, run_benchmark

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import av
import numpy as np
from aiortc.codecs import depayload, get_encoder
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from recording.compose import ComposeInput, compose
from recording.track_writer import TrackWriter
from tests.support.media import VIDEO_TIME_BASE, BarcodeFrames

FPS = 30
WIDTH, HEIGHT = 640, 360
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms
OPUS_BIT_RATE = 96_000  # aiortc's OpusEncoder
VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48_000, payloadType=111, channels=2)
TARGET_RATIO = 10.0


@dataclass
class Stream:
    """One track's RTP packets, frame by frame, and how to loop them."""

    kind: str
    frames: list[list[RtpPacket]]
    span: int  # RTP timestamp units covered, so a loop continues seamlessly
    seconds: float

    def packets(self, loops: int = 1, ssrc: int = 1) -> Iterator[RtpPacket]:
        """Every packet, `loops` times over, sequence numbers and timestamps continuing."""
        count = sum(len(frame) for frame in self.frames)
        for loop in range(loops):
            for frame in self.frames:
                for packet in frame:
                    yield RtpPacket(
                        payload_type=packet.payload_type,
                        marker=packet.marker,
                        sequence_number=(packet.sequence_number + loop * count) % (1 << 16),
                        timestamp=(packet.timestamp + loop * self.span) % (1 << 32),
                        ssrc=ssrc,
                        payload=packet.payload,
                    )

    def bitrate(self) -> float:
        return sum(len(p.payload) for f in self.frames for p in f) * 8 / self.seconds


def packetize(payloads: list[bytes], timestamp: int, sequence: int, pt: int) -> list[RtpPacket]:
    """RTP packets of one encoded frame, marker on the last (RFC 7741 §4.1)."""
    return [
        RtpPacket(
            payload_type=pt,
            marker=int(i == len(payloads) - 1),
            sequence_number=(sequence + i) % (1 << 16),
            timestamp=timestamp % (1 << 32),
            payload=payload,
        )
        for i, payload in enumerate(payloads)
    ]


def make_video(seconds: float, bitrate: int) -> Stream:
    encoder = get_encoder(VP8)
    assert isinstance(encoder, Vp8Encoder)
    encoder.target_bitrate = bitrate
    maker = BarcodeFrames(WIDTH, HEIGHT)
    frames, sequence = [], 0
    count = round(seconds * FPS)
    for number in range(count):
        frame = maker.frame(number)
        frame.pts, frame.time_base = number * 90_000 // FPS, VIDEO_TIME_BASE
        payloads, timestamp = encoder.encode(frame, force_keyframe=number == 0)
        frames.append(packetize(payloads, timestamp, sequence, VP8.payloadType))
        sequence += len(payloads)
    return Stream("video", frames, count * 90_000 // FPS, seconds)


def make_audio(seconds: float, frequency: float = 440.0) -> Stream:
    encoder = get_encoder(OPUS)
    frames, sequence = [], 0
    count = round(seconds * AUDIO_RATE / AUDIO_SAMPLES)
    for index in range(count):
        n = np.arange(index * AUDIO_SAMPLES, (index + 1) * AUDIO_SAMPLES)
        wave = (np.sin(2 * math.pi * frequency * n / AUDIO_RATE) * 9000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts, frame.time_base = index * AUDIO_SAMPLES, fractions.Fraction(1, AUDIO_RATE)
        payloads, timestamp = encoder.encode(frame)
        if payloads:
            frames.append(packetize(payloads, timestamp, sequence, OPUS.payloadType))
            sequence += len(payloads)
    return Stream("audio", frames, len(frames) * AUDIO_SAMPLES, len(frames) * 0.02)


def cpu_seconds() -> float:
    """CPU time of this process, all threads (encoder and decoder threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measured(action: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) that `action` took."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    action()
    return cpu_seconds() - cpu, time.perf_counter() - wall


def remux(stream: Stream, count: int, directory: Path) -> None:
    """What the recorder does: `count` TrackWriters, packets interleaved as they arrive."""
    codec = VP8 if stream.kind == "video" else OPUS
    writers = [
        TrackWriter(
            directory / f"remux-{stream.kind}-{i}.mkv",
            kind=stream.kind,
            mime_type=codec.mimeType,
            clock_rate=codec.clockRate,
            channels=2,
        )
        for i in range(count)
    ]
    for frame in stream.frames:
        for writer in writers:
            for packet in frame:
                writer.write_packet(packet)
    for writer in writers:
        result = writer.close()
        if result.frames < len(stream.frames) * 0.99:
            raise RuntimeError(f"remux wrote {result.frames} of {len(stream.frames)} frames")


def transcode(stream: Stream, count: int, directory: Path) -> None:
    """The baseline: decode each assembled frame and re-encode it into Matroska."""
    codec = VP8 if stream.kind == "video" else OPUS
    data = [b"".join(depayload(codec, p.payload) for p in frame) for frame in stream.frames]
    for i in range(count):
        path = directory / f"transcode-{stream.kind}-{i}.mkv"
        with av.open(str(path), "w", format="matroska") as container:
            if stream.kind == "video":
                decoder = av.CodecContext.create("libvpx", "r")
                out = container.add_stream("libvpx", rate=FPS)
                out.width, out.height, out.pix_fmt = WIDTH, HEIGHT, "yuv420p"
                out.bit_rate = round(stream.bitrate())
                # aiortc's real-time VP8 settings (aiortc/codecs/vpx.py), CBR at the bitrate.
                out.codec_context.options = {
                    "cpu-used": "-6",
                    "deadline": "realtime",
                    "lag-in-frames": "0",
                    "minrate": str(out.bit_rate),
                    "maxrate": str(out.bit_rate),
                    "bufsize": str(out.bit_rate),
                    "static-thresh": "1",
                }
                out.codec_context.thread_count = number_of_threads(WIDTH * HEIGHT, 2)
                time_base, step = fractions.Fraction(1, FPS), 1
            else:
                decoder = av.CodecContext.create("libopus", "r")
                decoder.sample_rate, decoder.layout = AUDIO_RATE, "stereo"
                out = container.add_stream("libopus", rate=AUDIO_RATE)
                out.layout = "stereo"
                out.bit_rate = OPUS_BIT_RATE
                out.codec_context.options = {"application": "voip"}
                time_base, step = fractions.Fraction(1, AUDIO_RATE), AUDIO_SAMPLES
            for index, frame_data in enumerate(data):
                for decoded in decoder.decode(av.Packet(frame_data)):
                    decoded.pts, decoded.time_base = index * step, time_base
                    container.mux(out.encode(decoded))
            container.mux(out.encode(None))


def remux_section(args: argparse.Namespace, workdir: Path) -> None:
    print(f"\n(1) recorder cost: {args.streams} streams per kind, {args.seconds:g} s each")
    started = time.perf_counter()
    video = make_video(args.seconds, args.video_bitrate)
    audio = make_audio(args.seconds)
    print(
        f"media made in {time.perf_counter() - started:.1f} s (not measured): VP8 "
        f"{video.bitrate() / 1000:.0f} kb/s, {sum(map(len, video.frames))} packets; Opus "
        f"{audio.bitrate() / 1000:.0f} kb/s, {sum(map(len, audio.frames))} packets"
    )
    print(
        f"{'kind':<6} {'remux CPU s':>11} {'per stream-s':>13} {'transcode CPU s':>15} "
        f"{'per stream-s':>13} {'ratio':>7}"
    )
    totals = {"remux": 0.0, "transcode": 0.0}
    for stream in (video, audio):
        directory = workdir / f"remux-{stream.kind}"
        directory.mkdir()
        stream_seconds = args.streams * stream.seconds
        remux_cpu, _ = measured(lambda s=stream, d=directory: remux(s, args.streams, d))
        transcode_cpu, _ = measured(lambda s=stream, d=directory: transcode(s, args.streams, d))
        totals["remux"] += remux_cpu / stream_seconds
        totals["transcode"] += transcode_cpu / stream_seconds
        print(
            f"{stream.kind:<6} {remux_cpu:>11.3f} {remux_cpu / stream_seconds * 1000:>10.2f} ms "
            f"{transcode_cpu:>15.2f} {transcode_cpu / stream_seconds * 1000:>10.2f} ms "
            f"{transcode_cpu / max(remux_cpu, 1e-9):>6.0f}×"
        )
        shutil.rmtree(directory)
    ratio = totals["transcode"] / max(totals["remux"], 1e-9)
    print(
        f"per participant (video + audio): remux {totals['remux'] * 1000:.2f} ms CPU per "
        f"second recorded ({totals['remux'] * 100:.2f} % of a core), transcode "
        f"{totals['transcode'] * 1000:.1f} ms ({totals['transcode'] * 100:.1f} % of a core); "
        f"transcode ÷ remux = {ratio:.0f}× (target ≥ {TARGET_RATIO:g}×: "
        f"{'PASS' if ratio >= TARGET_RATIO else 'FAIL'})"
    )


def write_track(stream: Stream, loops: int, path: Path, ssrc: int) -> Path:
    codec = VP8 if stream.kind == "video" else OPUS
    writer = TrackWriter(
        path, kind=stream.kind, mime_type=codec.mimeType, clock_rate=codec.clockRate
    )
    for packet in stream.packets(loops, ssrc):
        writer.write_packet(packet)
    writer.close()
    return path


def compose_section(args: argparse.Namespace, workdir: Path) -> None:
    minutes = args.meeting_minutes
    print(f"\n(2) compose: a {minutes:g}-minute meeting of 2 participants (video + audio each)")
    started = time.perf_counter()
    loop_seconds = 10.0
    loops = max(1, round(minutes * 60 / loop_seconds))
    video = make_video(loop_seconds, args.video_bitrate)
    inputs = []
    for index, (name, start) in enumerate((("A", 0.0), ("B", 2.0))):
        audio = make_audio(loop_seconds, frequency=440.0 * (index + 1))
        inputs.append(
            ComposeInput(
                write_track(video, loops, workdir / f"{name}-v.mkv", 10 + index),
                "video",
                start,
                name,
            )
        )
        inputs.append(
            ComposeInput(
                write_track(audio, loops, workdir / f"{name}-a.mkv", 20 + index),
                "audio",
                start,
                name,
            )
        )
    size = sum(item.path.stat().st_size for item in inputs)
    print(
        f"inputs made in {time.perf_counter() - started:.1f} s (not measured; {loops} loops "
        f"of {loop_seconds:g} s through TrackWriter): {size / 1e6:.1f} MB"
    )
    output = workdir / "composite.mp4"
    calls: list[float] = []
    result = None

    def run() -> None:
        nonlocal result
        result = compose(inputs, output, progress=calls.append)

    cpu, wall = measured(run)
    assert result is not None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"composite: {result.duration:.1f} s, {result.frames} frames 1280×720 at 15 fps, "
        f"{result.size / 1e6:.1f} MB, up to {result.max_tiles} tiles, "
        f"{len(calls)} progress calls"
    )
    print(
        f"compose time: wall {wall:.1f} s, CPU {cpu:.1f} s (all threads), realtime factor "
        f"{result.duration / wall:.1f}× (media seconds per wall second), "
        f"CPU per media second {cpu / result.duration * 1000:.0f} ms; "
        f"peak RSS of this process {peak:.0f} MiB"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=4, help="streams per kind in (1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="media per stream in (1)")
    parser.add_argument("--meeting-minutes", type=float, default=10.0, help="length in (2)")
    parser.add_argument("--video-bitrate", type=int, default=800_000)
    parser.add_argument("--only", choices=("remux", "compose"), help="run one section")
    parser.add_argument("--keep", action="store_true", help="keep the media files")
    args = parser.parse_args(argv)
    if args.streams < 1 or args.seconds <= 0 or args.meeting_minutes <= 0:
        parser.error("--streams ≥ 1, --seconds and --meeting-minutes > 0")
    return args


def setup(args: argparse.Namespace) -> str:
    return (
        f"setup: (1) {args.streams} VP8 640×360 30 fps streams at "
        f"{args.video_bitrate // 1000} kb/s + {args.streams} Opus streams, {args.seconds:g} s "
        f"each, through TrackWriter vs decode + re-encode; (2) compose a "
        f"{args.meeting_minutes:g}-minute two-participant meeting to 1280×720 15 fps MP4"
    )


def run(args: argparse.Namespace, workdir: Path) -> int:
    try:
        if args.only in (None, "remux"):
            remux_section(args, workdir)
        if args.only in (None, "compose"):
            compose_section(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("recording", "giaoban-bench-recording-", parse_args(argv), setup, run)


if __name__ == "__main__":
    sys.exit(main())
