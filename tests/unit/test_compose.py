"""compose: per-track Matroska files made with PyAV's encoders in, the MP4 composite checked."""

from __future__ import annotations

import itertools
import math
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from recording import compose as compose_module
from recording.compose import ComposeError, ComposeInput, _grid, compose

FPS = 15
RATE = 48_000
WIDTH, HEIGHT = 640, 360  # output size: small keeps the tests fast
# Solid colours (video-range Y, U, V), far apart in chroma so a tile is told by its colour.
RED = (81, 90, 240)
BLUE = (41, 240, 110)


def make_video(
    path: Path, seconds: float, colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)
) -> Path:
    """A VP8 Matroska file of one solid colour, timestamps from 0, as the recorder writes."""
    width, height = size
    picture = np.empty((height * 3 // 2, width), dtype=np.uint8)
    picture[:height] = colour[0]
    quarter = (width // 2) * (height // 2)
    chroma = picture[height:].reshape(-1)
    chroma[:quarter], chroma[quarter:] = colour[1], colour[2]
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8"}
        for index in range(round(seconds * FPS)):
            frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
            frame.pts, frame.time_base = index, Fraction(1, FPS)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_tone(path: Path, seconds: float, frequency: float) -> Path:
    """An Opus Matroska file of a mono sine tone, timestamps from 0."""
    with av.open(str(path), "w", format="matroska") as container:
        stream = container.add_stream("libopus", rate=RATE)
        stream.layout = "mono"
        samples = 960
        for index in range(round(seconds * RATE / samples)):
            n = np.arange(index * samples, (index + 1) * samples)
            wave = (np.sin(2 * math.pi * frequency * n / RATE) * 12_000).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts, frame.time_base = index * samples, Fraction(1, RATE)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def video_frames(path: Path) -> list[tuple[float, np.ndarray]]:
    """(time, yuv420p array) of every frame of the composite."""
    with av.open(str(path)) as container:
        return [
            (float(frame.time), frame.to_ndarray(format="yuv420p"))
            for frame in container.decode(video=0)
        ]


def colour_at(picture: np.ndarray, x: int, y: int) -> tuple[int, int, int]:
    """Y, U, V of a packed yuv420p picture at pixel (x, y) of the WIDTH×HEIGHT output."""
    quarter = (WIDTH // 2) * (HEIGHT // 2)
    chroma = picture[HEIGHT:].reshape(-1)
    u = chroma[:quarter].reshape(HEIGHT // 2, WIDTH // 2)
    v = chroma[quarter:].reshape(HEIGHT // 2, WIDTH // 2)
    return int(picture[y, x]), int(u[y // 2, x // 2]), int(v[y // 2, x // 2])


def near(actual: tuple[int, int, int], expected: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def test_grid_over_time_with_a_late_participant(tmp_path: Path) -> None:
    red = make_video(tmp_path / "red.mkv", 3.0, RED)
    blue = make_video(tmp_path / "blue.mkv", 2.0, BLUE, size=(320, 180))  # another size
    output = tmp_path / "composite.mp4"
    seen: list[float] = []

    def progress(fraction: float) -> None:
        # Never a partial file under the final name: it appears just before 1.0 is reported.
        assert output.exists() == (fraction == 1.0)
        seen.append(fraction)

    result = compose(
        [
            ComposeInput(red, "video", 10.0, "Đỏ"),
            ComposeInput(blue, "video", 11.0, "Xanh"),  # joined 1 s late
        ],
        output,
        width=WIDTH,
        height=HEIGHT,
        fps=FPS,
        progress=progress,
    )
    assert result.path == output and output.exists()
    assert result.duration == pytest.approx(3.0, abs=0.2)
    assert result.offset == 10.0
    assert result.max_tiles == 2
    assert result.size == output.stat().st_size
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert seen == sorted(seen)
    assert not list(tmp_path.glob(".*.part"))

    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert (stream.codec_context.width, stream.codec_context.height) == (WIDTH, HEIGHT)
        assert stream.average_rate == FPS
        assert float(container.duration / av.time_base) == pytest.approx(3.0, abs=0.2)
    frames = video_frames(output)
    assert len(frames) == result.frames == 45
    for time, picture in frames:
        if time < 0.9:  # only red: full picture (4:3 letterboxed in 16:9)
            assert near(colour_at(picture, WIDTH // 2, HEIGHT // 2), RED), time
            assert colour_at(picture, 10, HEIGHT // 2)[0] < 30, time  # black side bar
        elif 1.1 < time < 2.9:  # side by side: red left, blue right
            assert near(colour_at(picture, WIDTH // 4, HEIGHT // 2), RED), time
            assert near(colour_at(picture, 3 * WIDTH // 4, HEIGHT // 2), BLUE), time


def test_progress_is_monotonic_and_ends_at_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose_module, "PROGRESS_INTERVAL", 0.0)  # every frame reports
    red = make_video(tmp_path / "red.mkv", 2.0, RED)
    seen: list[float] = []
    compose(
        [ComposeInput(red, "video", 0.0, "a")],
        tmp_path / "out.mp4",
        width=WIDTH,
        height=HEIGHT,
        progress=seen.append,
    )
    assert len(seen) > 10
    assert seen[0] == 0.0 and seen[-1] == 1.0
    assert all(b > a for a, b in itertools.pairwise(seen))


def test_a_camera_restart_takes_one_tile_at_a_time(tmp_path: Path) -> None:
    before = make_video(tmp_path / "before.mkv", 1.5, RED)
    after = make_video(tmp_path / "after.mkv", 1.5, BLUE, size=(640, 360))
    result = compose(
        [ComposeInput(before, "video", 0.0, "a"), ComposeInput(after, "video", 1.5, "a")],
        tmp_path / "out.mp4",
        width=WIDTH,
        height=HEIGHT,
    )
    assert result.max_tiles == 1
    for time, picture in video_frames(tmp_path / "out.mp4"):
        # 22 frames at 15 fps end at 1.467 s: the frame at that instant is between files.
        if time < 1.4 or time >= 1.5:
            expected = RED if time < 1.4 else BLUE
            assert near(colour_at(picture, WIDTH // 2, HEIGHT // 2), expected), time


def band_energy(samples: np.ndarray, frequency: float) -> float:
    """Spectral magnitude around `frequency` in a window of mono samples at RATE."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    bins = np.fft.rfftfreq(len(samples), 1 / RATE)
    return float(spectrum[(bins > frequency - 30) & (bins < frequency + 30)].max())


def test_audio_tones_at_their_offsets_are_mixed(tmp_path: Path) -> None:
    low = make_tone(tmp_path / "low.mkv", 2.0, 440.0)
    high = make_tone(tmp_path / "high.mkv", 2.0, 1500.0)
    output = tmp_path / "mix.mp4"
    result = compose(
        [ComposeInput(low, "audio", 0.0, "a"), ComposeInput(high, "audio", 1.5, "b")],
        output,
        width=WIDTH,
        height=HEIGHT,
    )
    assert result.duration == pytest.approx(3.5, abs=0.2)
    assert result.max_tiles == 0
    with av.open(str(output)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "aac"
        assert stream.codec_context.sample_rate == RATE
        # AAC decodes to fltp: one row per channel.
        chunks = [f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)]
    audio = np.concatenate(chunks)
    assert len(audio) / RATE == pytest.approx(3.5, abs=0.2)
    # No video input: plain frames all along, so players still get a picture.
    assert len(video_frames(output)) == result.frames
    assert result.frames == pytest.approx(3.5 * 15, abs=2)

    def window(start: float, end: float) -> np.ndarray:
        return audio[int(start * RATE) : int(end * RATE)]

    only_low, both, only_high = window(0.3, 1.3), window(1.65, 1.95), window(2.3, 3.3)
    strong = 10 * band_energy(window(0.3, 1.3), 1500.0) + 1.0
    assert band_energy(only_low, 440) > strong
    assert band_energy(only_low, 440) > 20 * band_energy(only_low, 1500)
    assert band_energy(only_high, 1500) > 20 * band_energy(only_high, 440)
    assert band_energy(both, 440) > 0.2 * band_energy(only_low, 440)
    assert band_energy(both, 1500) > 0.2 * band_energy(only_high, 1500)
    assert np.abs(audio).max() <= 1.05  # mixed without overflow


def test_truncated_input_is_used_up_to_where_it_decodes(tmp_path: Path) -> None:
    whole = make_video(tmp_path / "whole.mkv", 3.0, RED).read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(whole[: len(whole) * 6 // 10])  # as a crash leaves it: no index, no end
    tone = make_tone(tmp_path / "tone.mkv", 3.0, 440.0).read_bytes()
    cut_tone = tmp_path / "cut_tone.mkv"
    cut_tone.write_bytes(tone[: len(tone) // 2])
    output = tmp_path / "out.mp4"
    result = compose(
        [ComposeInput(cut, "video", 0.0, "a"), ComposeInput(cut_tone, "audio", 0.0, "a")],
        output,
        width=WIDTH,
        height=HEIGHT,
    )
    assert 1.0 < result.duration < 3.0
    assert set(result.damaged) <= {"cut.mkv", "cut_tone.mkv"}
    frames = video_frames(output)
    assert len(frames) == result.frames
    shown = [time for time, picture in frames if near(colour_at(picture, 320, 180), RED)]
    assert shown and shown[0] == 0.0 and shown[-1] > 1.0


@pytest.mark.parametrize("content", [None, b"", b"this is not a media file" * 100])
def test_an_input_that_cannot_be_opened_is_named(tmp_path: Path, content: bytes | None) -> None:
    good = make_video(tmp_path / "good.mkv", 1.0, RED)
    bad = tmp_path / "broken-camera.mkv"
    if content is not None:
        bad.write_bytes(content)
    output = tmp_path / "out.mp4"
    with pytest.raises(ComposeError, match=re.escape("broken-camera.mkv")):
        compose(
            [ComposeInput(good, "video", 0.0, "a"), ComposeInput(bad, "video", 0.5, "b")],
            output,
            width=WIDTH,
            height=HEIGHT,
        )
    assert not output.exists()
    assert not list(tmp_path.glob(".*.part"))


def test_an_input_without_its_kind_is_named(tmp_path: Path) -> None:
    tone = make_tone(tmp_path / "tone.mkv", 1.0, 440.0)
    with pytest.raises(ComposeError, match=re.escape("tone.mkv has no video stream")):
        compose([ComposeInput(tone, "video", 0.0, "a")], tmp_path / "out.mp4")


@pytest.mark.parametrize(
    ("count", "columns", "rows"),
    [(1, 1, 1), (2, 2, 1), (3, 2, 2), (4, 2, 2), (5, 3, 2), (7, 3, 3), (9, 3, 3)],
)
def test_grid(count: int, columns: int, rows: int) -> None:
    cells = _grid(count, 1280, 720)
    assert len(cells) == count
    assert {w for _x, _y, w, _h in cells} == {1280 // columns // 2 * 2}
    assert {h for _x, _y, _w, h in cells} == {720 // rows // 2 * 2}
    assert len({y for _x, y, _w, _h in cells}) == rows
    for x, y, w, h in cells:
        assert x % 2 == 0 and y % 2 == 0 and x + w <= 1280 and y + h <= 720
    # The last row, when not full, is centred.
    last_row = [c for c in cells if c[1] == max(y for _x, y, _w, _h in cells)]
    left = min(x for x, _y, _w, _h in last_row)
    right = max(x + w for x, _y, w, _h in last_row)
    assert abs(left - (1280 - right)) <= 2
