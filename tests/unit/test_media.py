"""The synthetic media helpers: barcode encode/decode (also through real VP8) and check_frames."""

from __future__ import annotations

import fractions
import time

import av
import numpy as np
import pytest
from aiortc import rtp
from aiortc.codecs import CODECS, get_decoder, get_encoder
from aiortc.codecs.vpx import vp8_depayload
from aiortc.jitterbuffer import JitterFrame

from tests.support.frames import ReceivedFrame, check_frames
from tests.support.media import (
    COLUMNS,
    MAX_NUMBER,
    ROWS,
    BarcodeFrames,
    BarcodeVideoTrack,
    ToneAudioTrack,
    decode_bits,
    encode_bits,
    read_barcode,
    read_barcode_luma,
)

NUMBERS = [0, 1, 2, 29, 30, 255, 256, 4095, 65_535, 123_456, 1 << 23, MAX_NUMBER]


def vp8_codec():
    return next(c for c in CODECS["video"] if c.mimeType == "video/VP8")


def gray_frame(width: int, height: int, value: int) -> av.VideoFrame:
    buffer = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
    buffer[:height] = value
    return av.VideoFrame.from_ndarray(buffer, format="yuv420p")


# ---------------------------------------------------------------- bits


@pytest.mark.parametrize("number", NUMBERS)
def test_bits_round_trip(number: int) -> None:
    bits = encode_bits(number)
    assert bits.shape == (ROWS, COLUMNS)
    assert decode_bits(bits) == number


def test_numbers_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_bits(-1)
    with pytest.raises(ValueError):
        encode_bits(MAX_NUMBER + 1)


@pytest.mark.parametrize("number", [0, 12_345, MAX_NUMBER])
def test_any_single_flipped_cell_is_detected(number: int) -> None:
    bits = encode_bits(number)
    for row in range(ROWS):
        for column in range(COLUMNS):
            flipped = bits.copy()
            flipped[row, column] ^= 1
            assert decode_bits(flipped) is None, (row, column)


def test_uniform_pictures_are_not_code_words() -> None:
    assert decode_bits(np.zeros((ROWS, COLUMNS), dtype=np.uint8)) is None
    assert decode_bits(np.ones((ROWS, COLUMNS), dtype=np.uint8)) is None


# ---------------------------------------------------------------- pictures


@pytest.mark.parametrize("size", [(640, 360), (1280, 720), (320, 180), (640, 480)])
def test_read_barcode_of_generated_frames(size: tuple[int, int]) -> None:
    frames = BarcodeFrames(*size)
    for number in NUMBERS:
        frame = frames.frame(number)
        assert (frame.width, frame.height) == size
        assert frame.format.name == "yuv420p"
        assert read_barcode(frame) == number


def test_read_barcode_after_format_conversion() -> None:
    frame = BarcodeFrames().frame(777).reformat(format="rgb24")
    assert read_barcode(frame) == 777


@pytest.mark.parametrize("value", [16, 128, 235])
def test_uniform_frames_are_unreadable(value: int) -> None:
    assert read_barcode(gray_frame(640, 360, value)) is None


def test_an_ambiguous_cell_makes_the_frame_unreadable() -> None:
    frames = BarcodeFrames()
    luma = frames.luma_for(4242).copy()
    assert read_barcode_luma(luma) == 4242
    # Grey out one cell (row 0, column 3): neither black nor white.
    luma[: frames.cell_h, 3 * frames.cell_w : 4 * frames.cell_w] = 128
    assert read_barcode_luma(luma) is None


def test_a_flipped_cell_in_the_picture_is_detected() -> None:
    frames = BarcodeFrames()
    luma = frames.luma_for(4242).copy()
    cell = luma[: frames.cell_h, : frames.cell_w]
    cell[:] = 235 if cell.mean() < 128 else 16
    assert read_barcode_luma(luma) is None


def test_texture_band_moves_and_barcode_area_does_not_depend_on_it() -> None:
    frames = BarcodeFrames()
    a = frames.luma_for(10).copy()
    b = frames.luma_for(11).copy()
    band = slice(frames.barcode_h, frames.height)
    assert not np.array_equal(a[band], b[band]), "the texture band should move every frame"
    plain = BarcodeFrames(texture=False)
    assert np.array_equal(plain.luma_for(10)[: frames.barcode_h], a[: frames.barcode_h])


def test_frame_generation_is_cheap() -> None:
    frames = BarcodeFrames()
    start = time.perf_counter()
    for number in range(60):
        frames.frame(number)
    per_frame = (time.perf_counter() - start) / 60
    assert per_frame < 0.005, f"{per_frame * 1e6:.0f} µs per frame"


def test_barcode_survives_vp8_at_800_kbps() -> None:
    encoder = get_encoder(vp8_codec())
    encoder.target_bitrate = 800_000
    decoder = get_decoder(vp8_codec())
    frames = BarcodeFrames()
    read: list[int | None] = []
    encoded_bytes = 0
    count = 90
    for number in range(count):
        frame = frames.frame(number)
        frame.pts = number * 3000
        frame.time_base = fractions.Fraction(1, 90_000)
        payloads, timestamp = encoder.encode(frame, force_keyframe=number == 0)
        data = b"".join(vp8_depayload(p) for p in payloads)
        encoded_bytes += len(data)
        for decoded in decoder.decode(JitterFrame(data, timestamp)):
            assert (decoded.width, decoded.height) == (640, 360)
            read.append(read_barcode(decoded))
    assert read == list(range(count))
    kbps = encoded_bytes * 8 / (count / 30) / 1000
    # The texture band makes the encoder spend a camera-like bitrate (not a near-empty stream).
    assert 400 < kbps < 1200, f"{kbps:.0f} kb/s"


# ---------------------------------------------------------------- tracks


async def test_barcode_track_numbers_and_paces_frames() -> None:
    track = BarcodeVideoTrack(fps=30, start=100)
    start = time.monotonic()
    frames = [await track.recv() for _ in range(7)]
    elapsed = time.monotonic() - start
    assert [read_barcode(f) for f in frames] == list(range(100, 107))
    assert [f.pts for f in frames] == [i * 3000 for i in range(7)]
    assert frames[0].time_base == fractions.Fraction(1, 90_000)
    assert elapsed >= 6 / 30 - 0.01, f"7 frames in {elapsed:.3f}s: not paced at 30 fps"
    assert elapsed < 1.0
    track.stop()


async def test_tone_track_is_paced_and_not_silent() -> None:
    track = ToneAudioTrack()
    start = time.monotonic()
    frames = [await track.recv() for _ in range(6)]
    elapsed = time.monotonic() - start
    assert elapsed >= 5 * 0.020 - 0.005
    for i, frame in enumerate(frames):
        assert frame.sample_rate == 48_000
        assert frame.samples == 960
        assert frame.format.name == "s16"
        assert frame.layout.name == "mono"
        assert frame.pts == i * 960
    # aiortc's RFC 6464 level (dBov, 0 loudest, -127 silence) for what it will send.
    level = rtp.compute_audio_level_dbov(frames[-1])
    assert -30 < level <= 0, level
    track.stop()


# ---------------------------------------------------------------- check_frames


def sequence(numbers, fps: float = 30.0, t0: float = 100.0, size=(640, 360)):
    return [ReceivedFrame(n, *size, t0 + i / fps) for i, n in enumerate(numbers)]


def test_check_frames_perfect_sequence() -> None:
    report = check_frames(sequence(range(90)))
    assert report.count == 90
    assert report.readable == 90
    assert report.increasing
    assert report.missing == 0 and report.gaps == []
    assert report.first_number == 0 and report.last_number == 89
    assert report.fps == pytest.approx(30.0)
    assert report.max_interval == pytest.approx(1 / 30)
    assert report.sizes == {(640, 360)}


def test_check_frames_finds_gaps() -> None:
    numbers = [n for n in range(60) if not 10 <= n < 15 and n != 40]
    report = check_frames(sequence(numbers))
    assert report.increasing
    assert report.missing == 6
    assert report.gaps == [10, 11, 12, 13, 14, 40]


def test_check_frames_finds_disorder_and_repeats() -> None:
    report = check_frames(sequence([0, 1, 3, 2, 4, 4, 5]))
    assert not report.increasing
    assert report.out_of_order == [(3, 2), (4, 4)]
    assert report.missing == 0


def test_check_frames_counts_unreadable_and_sizes() -> None:
    frames = sequence([0, 1, None, 3])
    frames.append(ReceivedFrame(4, 1280, 720, frames[-1].t + 1 / 30))
    report = check_frames(frames)
    assert report.count == 5
    assert report.unreadable == 1
    assert report.missing == 1  # the unreadable frame's number is not seen
    assert report.sizes == {(640, 360), (1280, 720)}


def test_check_frames_measures_a_freeze() -> None:
    frames = sequence(range(30))
    frames += [ReceivedFrame(30 + i, 640, 360, frames[-1].t + 0.5 + i / 30) for i in range(30)]
    report = check_frames(frames)
    assert report.max_interval == pytest.approx(0.5)
    assert report.increasing and report.missing == 0


def test_check_frames_window_counts_a_stream_that_stopped() -> None:
    frames = sequence(range(60), t0=10.0)  # 2 s of frames from t=10
    report = check_frames(frames, window=(10.0, 14.0))
    assert report.count == 60
    assert report.fps == pytest.approx(15.0)
    assert report.max_interval == pytest.approx(4.0 - 59 / 30)  # silence until the window end
    assert report.span == pytest.approx(4.0)
    inside = check_frames(frames, window=(10.5, 11.5))
    assert inside.count == 30
    assert inside.first_number == 15


def test_check_frames_empty_and_bad_window() -> None:
    report = check_frames([])
    assert report.count == 0 and report.fps == 0 and report.first_number is None
    empty = check_frames([], window=(0.0, 2.0))
    assert empty.fps == 0 and empty.max_interval == pytest.approx(2.0)
    with pytest.raises(ValueError):
        check_frames([], window=(2.0, 1.0))
