"""The composite of a recording: every video track tiled over time, all audio mixed, one MP4.

`compose` reads the per-track Matroska files the recorder wrote (`recording/track_writer.py`)
and writes one H.264 + AAC MP4 for easy playback. Its clock is the composition's own: output
frame `n` shows, for each video input active at `n / fps`, the latest frame of that input
not after that time ("sample and hold"), and audio sample `k` is the sum of every audio input
at `k / 48000`; each input is placed by its `start` offset, so inputs that arrived late or
jittered stay in sync.

Memory stays bounded whatever the length: one decoder per active input, the latest frame of
each video input, and about a second of audio per audio input are held; output is produced in
one-second blocks and interleaved by the muxer.

Limits: tiles are not labelled (no font rendering); the picture aspect ratio of an input is
taken as its pixel size (square pixels); an input is read up to where it decodes (a file cut
by a crash is used up to its last readable frame); more inputs than fit a 3×3 grid still get
tiles, only smaller. Pure of the database: the caller maps catalogue rows to `ComposeInput`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal

import av
import numpy as np

log = logging.getLogger(__name__)

AUDIO_RATE = 48_000
PROGRESS_INTERVAL = 0.1  # s of work between two progress calls (the brief's ~10 per second)
BLOCK_SECONDS = 1  # output produced per step: audio mixed and video frames of one second
AUDIO_BIT_RATE = 128_000
# A decoded audio frame this far (in samples) from where the previous one ended is placed by
# its timestamp (a gap of lost packets, or a restart); closer, it is appended, so small
# timestamp jitter does not make clicks.
AUDIO_RESYNC_SAMPLES = AUDIO_RATE // 25  # 40 ms
# yuv420p black and neutral chroma, video range.
BLACK_LUMA = 16
NEUTRAL_CHROMA = 128
X264_OPTIONS = {"preset": "veryfast", "crf": "23"}


class ComposeError(Exception):
    """The composite cannot be made: an input cannot be opened, or the output not written."""


@dataclass(frozen=True)
class ComposeInput:
    """One per-track file of a recording."""

    path: Path
    kind: Literal["audio", "video"]
    start: float  # seconds from the recording's start to the file's first frame
    label: str = ""  # the participant's name (for logs; tiles are not labelled)


@dataclass(frozen=True)
class ComposeResult:
    """What `compose` wrote."""

    path: Path
    duration: float  # seconds, the span from the earliest input start to the latest end
    frames: int  # video frames encoded
    size: int  # bytes
    max_tiles: int  # most video tiles shown at once
    offset: float  # recording time (seconds) of the composite's time 0: the earliest start
    damaged: tuple[str, ...] = ()  # inputs that stopped decoding early or had bad frames


@dataclass
class _Probe:
    """An input's time span, from its packets (no decoding), in its own file's seconds."""

    first: float
    end: float


def compose(
    inputs: Sequence[ComposeInput],
    output: Path,
    *,
    width: int = 1280,
    height: int = 720,
    fps: int = 15,
    progress: Callable[[float], None] | None = None,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
) -> ComposeResult:
    """Write the composite of `inputs` to `output` (MP4, `+faststart`); blocking, CPU-bound.

    The file is written under a temporary name in the same directory and renamed when
    complete, so `output` never names a partial file. `progress(fraction)` is called from 0.0
    to 1.0, at most every PROGRESS_INTERVAL seconds in between. Raises `ComposeError` naming
    the input that cannot be opened or has no stream of its kind, or when the output cannot be
    written; an exception from `progress` aborts the composition (the temporary file is
    removed either way).
    """
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError("width and height must be even and at least 16")
    if fps <= 0:
        raise ValueError("fps must be positive")
    if not inputs:
        raise ComposeError("nothing to compose: no inputs")
    output = Path(output)
    probes = [_probe(item) for item in inputs]
    origin = min(item.start for item in inputs)
    ends = [item.start + p.end - p.first for item, p in zip(inputs, probes, strict=True)]
    duration = max(max(ends) - origin, 0.0)
    temporary = output.with_name(f".{output.name}.part")
    report = _Progress(progress)
    report(0.0)
    videos = [
        _VideoSource(item, probe, item.start - origin, end - origin)
        for item, probe, end in zip(inputs, probes, ends, strict=True)
        if item.kind == "video"
    ]
    audios = [
        _AudioSource(item, probe, item.start - origin, end - origin)
        for item, probe, end in zip(inputs, probes, ends, strict=True)
        if item.kind == "audio"
    ]
    try:
        writer = _Writer(temporary, width, height, fps, video_codec, audio_codec)
        try:
            frames, max_tiles = _run(videos, audios, writer, duration, fps, report)
            writer.close()
        except BaseException:
            writer.abort()
            raise
        os.replace(temporary, output)
    except (av.error.FFmpegError, OSError) as exc:
        raise ComposeError(f"cannot write {output.name}: {exc}") from exc
    finally:
        for source in (*videos, *audios):
            source.close()
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    report(1.0, force=True)
    damaged = tuple(s.input.path.name for s in (*videos, *audios) if s.damaged)
    size = output.stat().st_size
    log.info(
        "composed %s: %.1f s, %d frames, %d bytes, up to %d tiles, %d inputs (%d damaged)",
        output.name,
        duration,
        frames,
        size,
        max_tiles,
        len(inputs),
        len(damaged),
    )
    return ComposeResult(output, duration, frames, size, max_tiles, origin, damaged)


def _run(
    videos: list[_VideoSource],
    audios: list[_AudioSource],
    writer: _Writer,
    duration: float,
    fps: int,
    report: _Progress,
) -> tuple[int, int]:
    """Produce the whole timeline block by block; returns (frames, most tiles at once)."""
    total_frames = max(1, math.ceil(duration * fps - 1e-6))
    total_samples = round(duration * AUDIO_RATE)
    canvas = _Canvas(writer.width, writer.height)
    frame_index = 0
    max_tiles = 0
    block = 0
    while frame_index < total_frames or block * AUDIO_RATE * BLOCK_SECONDS < total_samples:
        block_end = (block + 1) * BLOCK_SECONDS
        first_sample = block * BLOCK_SECONDS * AUDIO_RATE
        last_sample = min(block_end * AUDIO_RATE, total_samples)
        if last_sample > first_sample:
            mix = np.zeros((2, last_sample - first_sample), dtype=np.float32)
            for audio in audios:
                audio.mix_into(mix, first_sample)
            # Clipping protection: the sum of several voices may exceed full scale.
            np.clip(mix, -1.0, 1.0, out=mix)
            writer.write_audio(mix, first_sample)
        while frame_index < total_frames and frame_index < block_end * fps:
            t = frame_index / fps
            shown = []
            for video in videos:
                if video.start <= t < video.end:
                    video.advance(t)
                    shown.append(video)
                elif t >= video.end:
                    video.close()
            max_tiles = max(max_tiles, len(shown))
            writer.write_video(canvas.draw(shown), frame_index)
            frame_index += 1
            report(min(t / duration, 1.0) if duration else 0.0)
        block += 1
    writer.flush()
    return frame_index, max_tiles


# --------------------------------------------------------------------------- inputs


def _open(item: ComposeInput) -> tuple[av.container.InputContainer, av.stream.Stream]:
    """The input's container and its first stream of its kind, or ComposeError naming it."""
    try:
        container = av.open(str(item.path))
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise ComposeError(f"cannot open {item.kind} input {item.path.name}: {exc}") from exc
    streams = container.streams.video if item.kind == "video" else container.streams.audio
    if not streams:
        container.close()
        raise ComposeError(f"{item.kind} input {item.path.name} has no {item.kind} stream")
    return container, streams[0]


def _probe(item: ComposeInput) -> _Probe:
    """The span of an input's packets. Demuxing only: cheap, and exact for a file cut by a
    crash, whose header has no duration."""
    container, stream = _open(item)
    first: float | None = None
    end = 0.0
    try:
        for packet in container.demux(stream):
            if packet.pts is None or packet.time_base is None:
                continue
            start = float(packet.pts * packet.time_base)
            first = start if first is None else min(first, start)
            end = max(end, start + float((packet.duration or 0) * packet.time_base))
    except (av.error.FFmpegError, OSError) as exc:
        log.warning("compose: %s readable only up to %.1f s: %s", item.path.name, end, exc)
    finally:
        container.close()
    if first is None:
        return _Probe(0.0, 0.0)  # no packet at all: the input covers nothing
    return _Probe(first, max(end, first))


class _Source:
    """One input being decoded in time order; opened when first needed, closed when done."""

    def __init__(self, item: ComposeInput, probe: _Probe, start: float, end: float) -> None:
        self.input = item
        self.first = probe.first  # the file's time of its first packet
        self.start = start  # timeline seconds of the first frame
        self.end = end
        self.damaged = False
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.frame.Frame] | None = None
        self.exhausted = False

    def _next_frame(self) -> av.frame.Frame | None:
        if self.exhausted:
            return None
        if self._frames is None:
            self._container, stream = _open(self.input)
            if self.input.kind == "video":
                stream.thread_type = "AUTO"  # frame threads: decoding is most of the cost
            self._frames = self._decoded(self._container, stream)
        frame = next(self._frames, None)
        if frame is None:
            self.close()
            self.exhausted = True
        return frame

    def _decoded(
        self, container: av.container.InputContainer, stream: av.stream.Stream
    ) -> Iterator[av.frame.Frame]:
        """Every frame that decodes; a bad packet is skipped, a read error ends the input."""
        packets = container.demux(stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (av.error.FFmpegError, OSError) as exc:
                self._damage(f"read error: {exc}")
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                # E.g. a VP8 inter frame whose reference was lost: skip it as a player does.
                self._damage(f"bad frame: {exc}")
                continue
            yield from frames

    def _damage(self, reason: str) -> None:
        if not self.damaged:
            self.damaged = True
            log.warning("compose: %s: %s (reported once)", self.input.path.name, reason)

    def _time(self, frame: av.frame.Frame, fallback: float) -> float:
        """Timeline seconds of a decoded frame."""
        if frame.pts is None or frame.time_base is None:
            return fallback
        return self.start + float(frame.pts * frame.time_base) - self.first

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
            self._frames = None


class _VideoSource(_Source):
    def __init__(self, item: ComposeInput, probe: _Probe, start: float, end: float) -> None:
        super().__init__(item, probe, start, end)
        self.current: av.VideoFrame | None = None
        self.version = 0  # bumped when `current` changes, so scaled tiles are reused
        self._pending: av.VideoFrame | None = None
        self._pending_time = 0.0
        self._last_time = start

    def advance(self, t: float) -> None:
        """Make `current` the latest frame at or before timeline time `t`."""
        while True:
            if self._pending is None:
                frame = self._next_frame()
                if frame is None:
                    return
                assert isinstance(frame, av.VideoFrame)
                self._pending = frame
                self._pending_time = self._time(frame, self._last_time)
                self._last_time = self._pending_time
            # A small tolerance: a frame stamped on the output instant belongs to it. Before
            # the first frame is due, the tile stays black.
            if self._pending_time > t + 1e-6:
                return
            self.current, self._pending = self._pending, None
            self.version += 1


class _AudioSource(_Source):
    def __init__(self, item: ComposeInput, probe: _Probe, start: float, end: float) -> None:
        super().__init__(item, probe, start, end)
        self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self._cursor: int | None = None  # timeline sample where the next decoded samples go
        self._chunks: list[tuple[int, np.ndarray]] = []  # (first sample, 2×n float32)

    def mix_into(self, mix: np.ndarray, first: int) -> None:
        """Add this input's samples in [first, first + mix width) to `mix`."""
        last = first + mix.shape[1]
        if self.start * AUDIO_RATE >= last:
            return  # not started yet
        while not self.exhausted and (self._cursor is None or self._cursor < last):
            self._pull()
        kept = []
        for position, samples in self._chunks:
            end = position + samples.shape[1]
            lo, hi = max(position, first), min(end, last)
            if hi > lo:
                mix[:, lo - first : hi - first] += samples[:, lo - position : hi - position]
            if end > last:
                kept.append((position, samples))
        self._chunks = kept

    def _pull(self) -> None:
        """Decode one frame, resample it and queue its samples at their timeline place."""
        frame = self._next_frame()
        if frame is None:
            resampled = self._resampler.resample(None)  # what the resampler still holds
        else:
            expected = round(self._time(frame, (self._cursor or 0) / AUDIO_RATE) * AUDIO_RATE)
            if self._cursor is None or abs(expected - self._cursor) > AUDIO_RESYNC_SAMPLES:
                self._cursor = expected
            frame.pts = None  # placed by the cursor; the resampler need not check continuity
            resampled = self._resampler.resample(frame)
        for out in resampled:
            samples = out.to_ndarray().astype(np.float32, copy=False)
            if self._cursor is None:
                self._cursor = round(self.start * AUDIO_RATE)
            self._chunks.append((self._cursor, samples))
            self._cursor += samples.shape[1]


# --------------------------------------------------------------------------- output


class _Canvas:
    """The output picture in yuv420p, with the active inputs' latest frames tiled on it."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self._buffer = np.empty((height * 3 // 2, width), dtype=np.uint8)
        self._y, self._u, self._v = _planes(self._buffer, width, height)
        self._tiles: dict[int, tuple[int, int, int, np.ndarray]] = {}  # id → (version, w, h, …)
        self._layout_key: tuple[int, ...] | None = None

    def draw(self, shown: Sequence[_VideoSource]) -> np.ndarray:
        """The picture for this output frame (the buffer is reused by the next call)."""
        self._y.fill(BLACK_LUMA)
        self._u.fill(NEUTRAL_CHROMA)
        self._v.fill(NEUTRAL_CHROMA)
        cells = _grid(len(shown), self.width, self.height)
        for source, (x, y, cell_w, cell_h) in zip(shown, cells, strict=True):
            frame = source.current
            if frame is None or frame.width <= 0 or frame.height <= 0:
                continue  # active but nothing decoded yet: a black tile
            tile_w, tile_h = _fit(frame.width, frame.height, cell_w, cell_h)
            cached = self._tiles.get(id(source))
            if cached is None or cached[:3] != (source.version, tile_w, tile_h):
                scaled = frame.reformat(width=tile_w, height=tile_h, format="yuv420p")
                cached = (source.version, tile_w, tile_h, scaled.to_ndarray())
                self._tiles[id(source)] = cached
            ty, tu, tv = _planes(cached[3], tile_w, tile_h)
            # Even offsets keep the 2×2 chroma subsampling aligned.
            left = x + ((cell_w - tile_w) // 2) // 2 * 2
            top = y + ((cell_h - tile_h) // 2) // 2 * 2
            self._y[top : top + tile_h, left : left + tile_w] = ty
            self._u[top // 2 : (top + tile_h) // 2, left // 2 : (left + tile_w) // 2] = tu
            self._v[top // 2 : (top + tile_h) // 2, left // 2 : (left + tile_w) // 2] = tv
        live = {id(source) for source in shown}
        for key in [key for key in self._tiles if key not in live]:
            del self._tiles[key]  # a source that left: drop its scaled frame
        return self._buffer


def _planes(buffer: np.ndarray, width: int, height: int) -> tuple[np.ndarray, ...]:
    """Views of the Y, U and V planes of a packed yuv420p array of shape (h·3/2, w)."""
    flat = buffer.reshape(-1)
    quarter = (width // 2) * (height // 2)
    y = flat[: width * height].reshape(height, width)
    u = flat[width * height : width * height + quarter].reshape(height // 2, width // 2)
    v = flat[width * height + quarter : width * height + 2 * quarter].reshape(
        height // 2, width // 2
    )
    return y, u, v


def _grid(count: int, width: int, height: int) -> list[tuple[int, int, int, int]]:
    """Cells (x, y, w, h) for `count` tiles: 1 full, 2 side by side, 3–4 in 2×2, up to 9 in
    3×3 and so on; a last row that is not full is centred. Coordinates are even."""
    if count == 0:
        return []
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_w = width // columns // 2 * 2
    cell_h = height // rows // 2 * 2
    top = (height - rows * cell_h) // 2 // 2 * 2
    cells = []
    for index in range(count):
        row, column = divmod(index, columns)
        in_row = min(columns, count - row * columns)
        left = (width - in_row * cell_w) // 2 // 2 * 2
        cells.append((left + column * cell_w, top + row * cell_h, cell_w, cell_h))
    return cells


def _fit(width: int, height: int, cell_w: int, cell_h: int) -> tuple[int, int]:
    """The largest even size with the aspect ratio of width×height that fits the cell."""
    scale = min(cell_w / width, cell_h / height)
    fit_w = max(2, min(cell_w, round(width * scale / 2) * 2))
    fit_h = max(2, min(cell_h, round(height * scale / 2) * 2))
    return fit_w, fit_h


class _Writer:
    """The MP4 being written: one H.264 (or other) video stream, one AAC (or other) stereo."""

    def __init__(
        self, path: Path, width: int, height: int, fps: int, video_codec: str, audio_codec: str
    ) -> None:
        self.width, self.height = width, height
        # movflags +faststart moves the index to the front at close, so browsers can play
        # the file progressively over HTTP range requests.
        self._container = av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"})
        try:
            video = self._container.add_stream(video_codec, rate=fps)
            video.width, video.height, video.pix_fmt = width, height, "yuv420p"
            video.codec_context.gop_size = 2 * fps  # a keyframe every 2 s: seeking stays quick
            if video_codec == "libx264":
                video.codec_context.options = dict(X264_OPTIONS)
            audio = self._container.add_stream(audio_codec, rate=AUDIO_RATE)
            audio.layout = "stereo"
            audio.bit_rate = AUDIO_BIT_RATE
        except BaseException:
            self._container.close()
            raise
        self._video = video
        self._audio = audio
        self._video_time_base = Fraction(1, fps)
        self._audio_time_base = Fraction(1, AUDIO_RATE)

    def write_video(self, picture: np.ndarray, index: int) -> None:
        frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
        frame.pts = index
        frame.time_base = self._video_time_base
        self._container.mux(self._video.encode(frame))

    def write_audio(self, samples: np.ndarray, first: int) -> None:
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="stereo")
        frame.sample_rate = AUDIO_RATE
        frame.pts = first
        frame.time_base = self._audio_time_base
        self._container.mux(self._audio.encode(frame))

    def flush(self) -> None:
        self._container.mux(self._video.encode(None))
        self._container.mux(self._audio.encode(None))

    def close(self) -> None:
        self._container.close()

    def abort(self) -> None:
        with contextlib.suppress(av.error.FFmpegError, OSError):
            self._container.close()


class _Progress:
    """Calls the caller's progress callback at most every PROGRESS_INTERVAL seconds."""

    def __init__(self, callback: Callable[[float], None] | None) -> None:
        self._callback = callback
        self._last_call = -math.inf
        self._last_value = -1.0

    def __call__(self, fraction: float, force: bool = False) -> None:
        if self._callback is None or fraction <= self._last_value:
            return
        now = time.monotonic()
        if force or fraction >= 1.0 or now - self._last_call >= PROGRESS_INTERVAL:
            self._last_call, self._last_value = now, fraction
            self._callback(fraction)


__all__ = ["ComposeError", "ComposeInput", "ComposeResult", "compose"]
