"""TrackWriter: real RTP from aiortc's encoders in, Matroska/WebM files checked with PyAV."""

from __future__ import annotations

import fractions
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

from recording.track_writer import (
    TrackWriter,
    _h264_size,
    _opus_duration,
    _opus_head,
    _Unwrapper,
    _vp8_size,
)
from tests.support.media import VIDEO_TIME_BASE, BarcodeFrames, read_barcode

FPS = 30
SECONDS = 5
AUDIO_RATE = 48_000
AUDIO_SAMPLES = 960  # 20 ms


@dataclass
class RtpSource:
    """Encodes frames with aiortc's encoder and wraps them in RTP as a publisher would.

    Sequence numbers and timestamps start close to their wrap so every test crosses it."""

    mime_type: str
    clock_rate: int
    payload_type: int = 96
    channels: int | None = None
    seq_start: int = 65_500
    ts_start: int = (1 << 32) - 90_000  # wraps after one second of video
    ssrc: int = 0x1234_5678

    def __post_init__(self) -> None:
        codec = RTCRtpCodecParameters(
            mimeType=self.mime_type,
            clockRate=self.clock_rate,
            payloadType=self.payload_type,
            channels=self.channels,
        )
        self.encoder = get_encoder(codec)
        self.sequence = self.seq_start

    def packets(
        self, frame: av.VideoFrame | av.AudioFrame, keyframe: bool = False
    ) -> list[RtpPacket]:
        """The RTP packets of one encoded frame (marker on the last, RFC 3551 §4.1 / 7741 §4.1)."""
        payloads, timestamp = self.encoder.encode(frame, force_keyframe=keyframe)
        if not payloads:
            return []
        out = []
        for i, payload in enumerate(payloads):
            out.append(
                RtpPacket(
                    payload_type=self.payload_type,
                    marker=int(i == len(payloads) - 1),
                    sequence_number=self.sequence,
                    timestamp=(timestamp + self.ts_start) % (1 << 32),
                    ssrc=self.ssrc,
                    payload=payload,
                )
            )
            self.sequence = (self.sequence + 1) % (1 << 16)
        return out


def video_frames(count: int, width: int = 640, height: int = 360) -> list[av.VideoFrame]:
    """`count` barcode frames numbered 0.. at FPS, in the 90 kHz time base."""
    maker = BarcodeFrames(width, height)
    frames = []
    for number in range(count):
        frame = maker.frame(number)
        frame.pts = number * 90_000 // FPS
        frame.time_base = VIDEO_TIME_BASE
        frames.append(frame)
    return frames


def tone_frames(count: int) -> list[av.AudioFrame]:
    """`count` 20 ms frames of a 440 Hz mono tone."""
    frames = []
    for i in range(count):
        n = np.arange(i * AUDIO_SAMPLES, (i + 1) * AUDIO_SAMPLES)
        wave = (np.sin(2 * math.pi * 440 * n / AUDIO_RATE) * 8000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = i * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        frames.append(frame)
    return frames


def vp8_stream(count: int, keyframes: tuple[int, ...] = (), **size: int) -> list[list[RtpPacket]]:
    source = RtpSource("video/VP8", 90_000)
    return [source.packets(f, i in keyframes) for i, f in enumerate(video_frames(count, **size))]


def read_video(path: Path) -> tuple[av.container.InputContainer, list[int | None]]:
    """The opened file and the barcode of every decoded frame.

    A frame the decoder refuses (FFmpeg's VP8 decoder does after a lost reference frame) is
    skipped, as a player skips it."""
    container = av.open(str(path))
    decoder = container.streams.video[0].codec_context
    numbers = []
    for packet in container.demux(video=0):
        try:
            numbers += [read_barcode(frame) for frame in decoder.decode(packet)]
        except av.error.InvalidDataError:
            continue
    return container, numbers


def write_all(writer: TrackWriter, packets: list[RtpPacket]) -> None:
    for packet in packets:
        writer.write_packet(packet)


# ---------------------------------------------------------------------------- whole streams


def test_vp8_five_seconds(tmp_path: Path) -> None:
    path = tmp_path / "camera.webm"
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    write_all(writer, [p for frame in vp8_stream(FPS * SECONDS) for p in frame])
    result = writer.close()

    assert result.frames == FPS * SECONDS
    assert result.keyframes == 1
    assert result.packets_lost == result.packets_late == result.malformed == 0
    assert abs(result.duration - SECONDS) < 0.1
    assert result.bytes == path.stat().st_size > 0
    assert result.first_rtp_timestamp == (1 << 32) - 90_000
    assert result.last_rtp_timestamp == (FPS * SECONDS - 1) * 3000 - 90_000
    container, numbers = read_video(path)
    stream = container.streams.video[0]
    assert container.format.name == "matroska,webm"
    assert stream.codec_context.name == "vp8"
    assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
    assert container.duration is not None
    assert abs(container.duration / av.time_base - SECONDS) < 0.1
    assert numbers == list(range(FPS * SECONDS))


def test_h264_five_seconds(tmp_path: Path) -> None:
    path = tmp_path / "camera.mkv"
    source = RtpSource("video/H264", 90_000, payload_type=102)
    writer = TrackWriter(path, kind="video", mime_type="video/H264", clock_rate=90_000)
    for frame in video_frames(FPS * SECONDS):
        write_all(writer, source.packets(frame))
    result = writer.close()

    assert result.frames == FPS * SECONDS
    assert result.malformed == 0
    assert abs(result.duration - SECONDS) < 0.1
    container, numbers = read_video(path)
    stream = container.streams.video[0]
    assert stream.codec_context.name == "h264"
    assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
    assert container.duration is not None
    assert abs(container.duration / av.time_base - SECONDS) < 0.1
    assert numbers == list(range(FPS * SECONDS))


def test_opus_five_seconds(tmp_path: Path) -> None:
    path = tmp_path / "microphone.webm"
    source = RtpSource(
        "audio/opus", AUDIO_RATE, payload_type=111, channels=2, ts_start=(1 << 32) - AUDIO_RATE
    )
    writer = TrackWriter(path, kind="audio", mime_type="audio/opus", clock_rate=AUDIO_RATE)
    for frame in tone_frames(SECONDS * 50):
        write_all(writer, source.packets(frame))
    result = writer.close()

    assert result.frames == SECONDS * 50
    assert result.malformed == result.packets_lost == 0
    assert abs(result.duration - SECONDS) < 0.1
    container = av.open(str(path))
    stream = container.streams.audio[0]
    assert stream.codec_context.name == "opus"
    assert stream.codec_context.sample_rate == AUDIO_RATE
    assert stream.codec_context.channels == 2
    assert stream.codec_context.extradata == _opus_head(2)
    samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples / AUDIO_RATE - SECONDS) < 0.1


# ---------------------------------------------------------------------------- what an SFU sees


def shuffled(packets: list[RtpPacket], window: int, rng: random.Random) -> list[RtpPacket]:
    """Packets reordered within consecutive windows of `window`."""
    out: list[RtpPacket] = []
    for start in range(0, len(packets), window):
        chunk = packets[start : start + window]
        rng.shuffle(chunk)
        out.extend(chunk)
    return out


def test_vp8_reordered_duplicated_and_lost(tmp_path: Path) -> None:
    rng = random.Random(5)
    frames = vp8_stream(FPS * SECONDS, keyframes=(90,))
    packets = [p for frame in frames[:90] for p in frame]
    # Lose four packets (two of them adjacent) in the three seconds before a keyframe.
    n = len(packets)
    lost = {packets[i].sequence_number for i in (n // 4, n // 4 + 1, n // 2, 3 * n // 4)}
    sent = [p for p in packets if p.sequence_number not in lost]
    sent += [sent[i] for i in (10, 150, 151)]  # duplicates, as a retransmission race leaves
    later = [p for frame in frames[90:] for p in frame]
    sent = shuffled(sent, 6, rng) + shuffled(later, 6, rng)

    path = tmp_path / "camera.webm"
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    write_all(writer, sent)
    result = writer.close()

    assert result.packets_lost == len(lost)
    assert result.packets_late == 3
    # A frame that lost only some of its packets is counted; one that lost all is just gone.
    hit = {p.timestamp for p in packets if p.sequence_number in lost}
    assert 1 <= result.frames_incomplete <= len(hit)
    assert result.frames == FPS * SECONDS - len(hit)
    assert result.malformed == 0
    container, numbers = read_video(path)
    assert container.streams.video[0].codec_context.name == "vp8"
    # Up to the first loss every frame is intact; then the decoder conceals (a damaged frame
    # may show an older barcode) but never goes back in time.
    first_hit = min(i for i, f in enumerate(frames) if any(p.sequence_number in lost for p in f))
    assert numbers[:first_hit] == list(range(first_hit))
    readable = [n for n in numbers if n is not None]
    assert readable == sorted(readable)
    # From the keyframe after the losses on, every frame is there and intact.
    assert numbers[-60:] == list(range(90, FPS * SECONDS))
    assert not writer.wants_keyframe


def test_opus_reordered_and_lost(tmp_path: Path) -> None:
    rng = random.Random(7)
    source = RtpSource("audio/opus", AUDIO_RATE, payload_type=111, channels=2)
    packets = [p for frame in tone_frames(SECONDS * 50) for p in source.packets(frame)]
    lost = {packets[i].sequence_number for i in (17, 60, 61, 200)}
    sent = shuffled([p for p in packets if p.sequence_number not in lost], 4, rng)

    path = tmp_path / "microphone.mkv"
    writer = TrackWriter(path, kind="audio", mime_type="audio/opus", clock_rate=AUDIO_RATE)
    write_all(writer, sent)
    result = writer.close()

    assert result.frames == SECONDS * 50 - len(lost)
    assert result.packets_lost == len(lost)
    assert result.frames_incomplete == 0
    container = av.open(str(path))
    samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples / AUDIO_RATE - (SECONDS - 0.08)) < 0.1


def test_video_waits_for_a_keyframe(tmp_path: Path) -> None:
    frames = vp8_stream(60, keyframes=(20,))
    path = tmp_path / "camera.webm"
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    write_all(writer, [p for frame in frames[5:20] for p in frame])  # joined after frame 0
    assert not path.exists()  # nothing to write before a keyframe
    write_all(writer, [p for frame in frames[20:] for p in frame])
    result = writer.close()

    assert result.frames_before_keyframe == 15
    assert result.frames == 40
    _container, numbers = read_video(path)
    assert numbers == list(range(20, 60))


def renumbered(packets: list[RtpPacket], start: int) -> list[RtpPacket]:
    """The same packets with consecutive sequence numbers from `start`."""
    for i, packet in enumerate(packets):
        packet.sequence_number = (start + i) % (1 << 16)
    return packets


def test_padding_packets_are_not_loss(tmp_path: Path) -> None:
    frames = vp8_stream(30)
    packets: list[RtpPacket] = []
    for i, frame in enumerate(frames):
        packets += frame
        if i % 5 == 4:  # a bandwidth probe between frames: padding only (RFC 3550 §5.1)
            packets.append(RtpPacket(96, 0, 0, frame[-1].timestamp, frame[-1].ssrc, b""))
    path = tmp_path / "camera.webm"
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    write_all(writer, renumbered(packets, 65_000))
    result = writer.close()

    assert (result.frames, result.packets_lost, result.frames_incomplete) == (30, 0, 0)
    assert read_video(path)[1] == list(range(30))


def test_a_pause_keeps_its_place_in_time(tmp_path: Path) -> None:
    """Packets withheld for ten seconds (a muted track) leave a gap, not a jump cut."""
    source = RtpSource("video/VP8", 90_000)
    frames = video_frames(30 * 12)
    before = [p for f in frames[:30] for p in source.packets(f)]
    for f in frames[30:330]:  # encoded and sent by the publisher, withheld by the SFU
        source.packets(f)
    after = [p for f in frames[330:] for p in source.packets(f)]
    path = tmp_path / "camera.webm"
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    write_all(writer, before)
    assert not writer.wants_keyframe
    write_all(writer, after)
    assert writer.wants_keyframe  # the frames after the pause reference withheld ones
    result = writer.close()

    assert result.frames == 60
    assert result.packets_lost == after[0].sequence_number - before[-1].sequence_number - 1
    assert abs(result.duration - 12) < 0.1
    container = av.open(str(path))
    pts = [float(p.pts * p.time_base) for p in container.demux(video=0) if p.pts is not None]
    assert abs(pts[30] - pts[29] - 10 - 1 / FPS) < 0.01


def test_malformed_packets_are_counted_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = RtpSource("video/H264", 90_000, payload_type=102)
    frames = video_frames(30)
    packets = [p for frame in frames for p in source.packets(frame)]
    last = packets[-1]

    def junk(offset: int, payload: bytes) -> RtpPacket:
        return RtpPacket(
            payload_type=102,
            marker=1,
            sequence_number=(last.sequence_number + offset) % (1 << 16),
            timestamp=(last.timestamp + 3000 * offset) % (1 << 32),
            ssrc=last.ssrc,
            payload=payload,
        )

    bad = [junk(1, b"\x1e\x00\x00"), junk(2, b"\x01"), junk(3, b"\x18\x00\x09\x67")]
    path = tmp_path / "camera.mkv"
    writer = TrackWriter(path, kind="video", mime_type="video/H264", clock_rate=90_000)
    with caplog.at_level(logging.WARNING, logger="recording.track_writer"):
        write_all(writer, packets + bad + bad)  # the second time they are late duplicates
    result = writer.close()

    assert result.frames == 30
    assert result.malformed == 3
    assert result.packets_late == 3
    assert len([r for r in caplog.records if "problem" in r.getMessage()]) == 1
    assert writer.close() == result  # idempotent
    writer.write_packet(packets[0])  # after close: ignored
    assert writer.result() == result


def test_sender_restart_keeps_time_going_forward(tmp_path: Path) -> None:
    first = vp8_stream(30)
    again = RtpSource("video/VP8", 90_000, seq_start=12_000, ts_start=777)
    second = [again.packets(f) for f in video_frames(30)]
    path = tmp_path / "camera.webm"
    writer = TrackWriter(path, kind="video", mime_type="video/VP8", clock_rate=90_000)
    write_all(writer, [p for frame in first + second for p in frame])
    result = writer.close()

    assert result.frames == 60
    assert abs(result.duration - 2.0) < 0.1
    container = av.open(str(path))
    pts = [packet.pts for packet in container.demux(video=0) if packet.pts is not None]
    assert pts == sorted(pts) and len(set(pts)) == 60


def test_unknown_codec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot record"):
        TrackWriter(tmp_path / "x.mkv", kind="video", mime_type="video/AV1", clock_rate=90_000)


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([65_534, 65_535, 0, 1], [65_534, 65_535, 65_536, 65_537]),
        ([0, 65_535, 1], [0, -1, 1]),  # a packet from before the first one
        ([100, 30_000, 60_000, 10_000], [100, 30_000, 60_000, 75_536]),
    ],
)
def test_sequence_unwrapping(values: list[int], expected: list[int]) -> None:
    unwrapper = _Unwrapper(16)
    assert [unwrapper.unwrap(v) for v in values] == expected


def test_timestamp_unwrapping() -> None:
    unwrapper = _Unwrapper(32)
    top = (1 << 32) - 1500
    assert [unwrapper.unwrap(v) for v in (top, 1500, top)] == [top, (1 << 32) + 1500, top]


@pytest.mark.parametrize(
    ("packet", "samples"),
    [
        (bytes([0x78 | 0x00]), 960),  # CELT 20 ms, one frame
        (bytes([(1 << 3) | 0x01]), 1920),  # SILK 20 ms, two frames
        (bytes([(12 << 3) | 0x00]), 480),  # hybrid 10 ms
        (bytes([(16 << 3) | 0x03, 0x03]), 360),  # CELT 2.5 ms × 3
        (b"", 0),
    ],
)
def test_opus_duration(packet: bytes, samples: int) -> None:
    assert _opus_duration(packet) == samples


@pytest.mark.parametrize(("width", "height"), [(640, 360), (320, 240), (1280, 720)])
def test_picture_size_from_keyframes(width: int, height: int) -> None:
    frame = video_frames(1, width, height)[0]
    from aiortc.codecs import depayload

    for mime, pt in (("video/VP8", 96), ("video/H264", 102)):
        source = RtpSource(mime, 90_000, payload_type=pt)
        codec = RTCRtpCodecParameters(mimeType=mime, clockRate=90_000, payloadType=pt)
        data = b"".join(depayload(codec, p.payload) for p in source.packets(frame))
        size = _vp8_size(data) if mime == "video/VP8" else _h264_size(data)
        assert size == (width, height), mime


def test_fsync_goes_elsewhere_with_a_descriptor_of_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `fsync` given, the writer never fsyncs while writing: it hands over a duplicate of
    its file's descriptor (the recorder fsyncs it in a thread), about once per FSYNC_INTERVAL."""
    import os
    import time as real_time

    from recording import track_writer

    clock = [real_time.monotonic()]
    monkeypatch.setattr(track_writer.time, "monotonic", lambda: clock[0])
    on_the_loop: list[int] = []
    monkeypatch.setattr(track_writer.os, "fsync", on_the_loop.append)
    handed: list[tuple[int, int]] = []

    def elsewhere(fd: int) -> None:
        handed.append((os.fstat(fd).st_ino, os.fstat(fd).st_size))
        os.close(fd)

    path = tmp_path / "camera.webm"
    writer = TrackWriter(
        path, kind="video", mime_type="video/VP8", clock_rate=90_000, fsync=elsewhere
    )
    for frame in vp8_stream(FPS * SECONDS):
        clock[0] += 1 / FPS  # media time and the writer's clock advance together
        write_all(writer, frame)
    assert on_the_loop == []
    writer.close()  # the last fsync is close's own: the recorder closes in a thread
    assert SECONDS - 1 <= len(handed) <= SECONDS + 1, handed
    assert {inode for inode, _ in handed} == {path.stat().st_ino}
    sizes = [size for _, size in handed]
    assert sizes == sorted(sizes) and sizes[-1] > 0
