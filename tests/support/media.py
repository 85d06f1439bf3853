"""Synthetic media for tests and benchmarks: a numbered video and a tone.

`BarcodeVideoTrack` draws its frame number into the picture as a grid of black and white
blocks (24 data bits + an 8-bit CRC); `read_barcode` reads it back from a decoded frame, so a
subscriber can check the order and completeness of every frame it receives. The blocks are
large (80×64 pixels at 640×360, aligned to VP8 macroblocks) and only their centres are sampled,
so the number survives lossy VP8 at a few hundred kb/s. Below the barcode a textured band
scrolls every frame, so the encoder spends a realistic bitrate (a mostly static picture would
make VP8 undershoot far below what a camera produces).

Everything is paced in real time like aiortc's `VideoStreamTrack` / `AudioStreamTrack`.
"""

from __future__ import annotations

import asyncio
import fractions
import math
import time

import av
import numpy as np
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)

# Barcode layout: COLUMNS × ROWS cells over the top BARCODE_FRACTION of the picture.
COLUMNS = 8
ROWS = 4
DATA_BITS = 24
CRC_BITS = 8
# XORed into the CRC so that an all-black (or all-white) picture is not a valid code word.
CRC_XOR = 0x5A
BARCODE_FRACTION = 0.72
MAX_NUMBER = (1 << DATA_BITS) - 1
BLACK = 16  # video-range luma
WHITE = 235
# A cell's sampled mean must be clearly on one side: anything in between is unreadable.
LOW_THRESHOLD = 80
HIGH_THRESHOLD = 170

assert COLUMNS * ROWS == DATA_BITS + CRC_BITS


def crc8(value: int, bits: int = DATA_BITS) -> int:
    """CRC-8 (polynomial 0x07) over the `bits` low bits of `value`, most significant first."""
    crc = 0
    for i in range(bits - 1, -1, -1):
        bit = (value >> i) & 1
        top = (crc >> 7) & 1
        crc = (crc << 1) & 0xFF
        if bit ^ top:
            crc ^= 0x07
    return crc


def encode_bits(number: int) -> np.ndarray:
    """The ROWS × COLUMNS grid of 0/1 cells for `number` (24 data bits then 8 CRC bits)."""
    if not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"frame number {number} out of range 0..{MAX_NUMBER}")
    word = (number << CRC_BITS) | (crc8(number) ^ CRC_XOR)
    total = DATA_BITS + CRC_BITS
    bits = [(word >> (total - 1 - i)) & 1 for i in range(total)]
    return np.array(bits, dtype=np.uint8).reshape(ROWS, COLUMNS)


def decode_bits(bits: np.ndarray) -> int | None:
    """Inverse of `encode_bits`; None when the CRC does not match."""
    flat = [int(b) for b in np.asarray(bits).reshape(-1)]
    word = 0
    for b in flat:
        word = (word << 1) | b
    number = word >> CRC_BITS
    if crc8(number) ^ CRC_XOR != word & 0xFF:
        return None
    return number


def _layout(width: int, height: int) -> tuple[int, int]:
    """Cell width and height in pixels for a picture of this size."""
    cell_w = width // COLUMNS
    cell_h = int(height * BARCODE_FRACTION) // ROWS
    return cell_w, cell_h


def read_luma(frame: av.VideoFrame) -> np.ndarray:
    """The frame's luma plane as a (height, width) uint8 array."""
    if frame.format.name not in ("yuv420p", "yuvj420p", "gray"):
        frame = frame.reformat(format="yuv420p")
    plane = frame.planes[0]
    data = np.frombuffer(plane, dtype=np.uint8)
    return data.reshape(-1, plane.line_size)[: frame.height, : frame.width]


def read_barcode_luma(luma: np.ndarray) -> int | None:
    """Read the number from a luma array; None if any cell is ambiguous or the CRC fails."""
    height, width = luma.shape
    cell_w, cell_h = _layout(width, height)
    if cell_w < 4 or cell_h < 4:
        return None
    # Sample the central half of each cell: block edges are where a codec smears.
    x0, x1 = cell_w // 4, cell_w - cell_w // 4
    y0, y1 = cell_h // 4, cell_h - cell_h // 4
    grid = luma[: ROWS * cell_h, : COLUMNS * cell_w].reshape(ROWS, cell_h, COLUMNS, cell_w)
    means = grid[:, y0:y1, :, x0:x1].mean(axis=(1, 3))
    if np.any((means > LOW_THRESHOLD) & (means < HIGH_THRESHOLD)):
        return None
    return decode_bits((means >= HIGH_THRESHOLD).astype(np.uint8))


def read_barcode(frame: av.VideoFrame) -> int | None:
    """The frame number drawn by `BarcodeVideoTrack`, or None if it cannot be read."""
    try:
        return read_barcode_luma(read_luma(frame))
    except (ValueError, av.error.FFmpegError):
        return None


class BarcodeFrames:
    """Builds numbered yuv420p frames cheaply (numpy only, precomputed texture)."""

    TEXTURE_STEP = 4  # pixels the texture band scrolls per frame

    def __init__(self, width: int = 640, height: int = 360, texture: bool = True) -> None:
        if width % 2 or height % 2:
            raise ValueError("width and height must be even for yuv420p")
        self.width = width
        self.height = height
        self.cell_w, self.cell_h = _layout(width, height)
        if self.cell_w < 8 or self.cell_h < 8:
            raise ValueError(f"{width}x{height} is too small for the barcode")
        self.barcode_h = ROWS * self.cell_h
        self.barcode_w = COLUMNS * self.cell_w
        # One buffer in yuv420p layout: Y rows, then U and V (both neutral grey).
        self._buffer = np.full((height * 3 // 2, width), 128, dtype=np.uint8)
        self._buffer[:height] = BLACK
        self._cell_ones = np.ones((self.cell_h, self.cell_w), dtype=np.uint8)
        band_h = height - self.barcode_h
        self._texture: np.ndarray | None = None
        if texture and band_h > 0:
            rng = np.random.default_rng(1234)
            # Low-frequency texture (8×8 blocks of random grey, slightly blurred by
            # repetition), twice as wide as the picture so a scrolling window always fits.
            coarse = rng.integers(40, 216, size=(band_h // 8 + 1, (2 * width) // 8 + 1))
            texture = np.kron(coarse, np.ones((8, 8), dtype=np.int64))[:band_h, : 2 * width]
            self._texture = texture.astype(np.uint8)

    def luma_for(self, number: int) -> np.ndarray:
        bits = encode_bits(number)
        cells = np.where(bits == 1, WHITE, BLACK).astype(np.uint8)
        y = self._buffer[: self.height]
        y[: self.barcode_h, : self.barcode_w] = np.kron(cells, self._cell_ones)
        if self._texture is not None:
            offset = (number * self.TEXTURE_STEP) % self.width
            y[self.barcode_h :, :] = self._texture[:, offset : offset + self.width]
        return y

    def frame(self, number: int) -> av.VideoFrame:
        self.luma_for(number)
        return av.VideoFrame.from_ndarray(self._buffer, format="yuv420p")


class BarcodeVideoTrack(MediaStreamTrack):
    """A video track whose frame `n` shows the number `n` (starting at `start`)."""

    kind = "video"

    def __init__(
        self,
        width: int = 640,
        height: int = 360,
        fps: float = 30.0,
        start: int = 0,
        texture: bool = True,
    ) -> None:
        super().__init__()
        if fps <= 0:
            raise ValueError("fps must be positive")
        self.fps = fps
        self.frames = BarcodeFrames(width, height, texture=texture)
        self.next_number = start
        self._start_time: float | None = None
        self._start_number = start
        self.frames_sent = 0

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        number = self.next_number
        if number > MAX_NUMBER:
            raise MediaStreamError("barcode frame numbers exhausted")
        if self._start_time is None:
            self._start_time = time.monotonic()
        due = self._start_time + (number - self._start_number) / self.fps
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = self.frames.frame(number)
        frame.pts = round((number - self._start_number) * VIDEO_CLOCK_RATE / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.next_number = number + 1
        self.frames_sent += 1
        return frame


class ToneAudioTrack(MediaStreamTrack):
    """A mono 48 kHz sine tone in 20 ms frames (s16), paced in real time."""

    kind = "audio"

    SAMPLE_RATE = 48_000
    SAMPLES = 960  # 20 ms

    def __init__(self, frequency: float = 400.0, amplitude: float = 0.3) -> None:
        super().__init__()
        if not 0 < amplitude <= 1:
            raise ValueError("amplitude must be in (0, 1]")
        self.frequency = frequency
        self.amplitude = amplitude
        self._timestamp = 0
        self._start_time: float | None = None
        self.frames_sent = 0

    def _samples(self, start: int) -> np.ndarray:
        n = np.arange(start, start + self.SAMPLES, dtype=np.float64)
        wave = np.sin(2 * math.pi * self.frequency * n / self.SAMPLE_RATE)
        return (wave * self.amplitude * 32767).astype(np.int16).reshape(1, -1)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start_time is None:
            self._start_time = time.monotonic()
        due = self._start_time + self._timestamp / self.SAMPLE_RATE
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        samples = self._samples(self._timestamp)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = self.SAMPLE_RATE
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, self.SAMPLE_RATE)
        self._timestamp += self.SAMPLES
        self.frames_sent += 1
        return frame
