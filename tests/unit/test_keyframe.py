"""server/sfu/keyframe.py: keyframe starts in VP8 / H.264 RTP payloads, keyframe request pacing.

Payloads come from aiortc's own encoders (the packetizers browsers interoperate with), plus
hand-made ones for the edge cases of RFC 7741 and RFC 6184.
"""

from __future__ import annotations

import fractions
import itertools
import random

import av
import numpy as np
import pytest
from aiortc.codecs import get_encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from server.sfu.keyframe import (
    KeyframeRequestPacer,
    h264_keyframe_start,
    keyframe_detector,
    vp8_keyframe_start,
)

TIME_BASE = fractions.Fraction(1, 90000)  # aiortc's VIDEO_TIME_BASE
FRAME_TICKS = 3000  # 30 fps

H264_PARAMETERS = {
    "packetization-mode": "1",
    "level-asymmetry-allowed": "1",
    "profile-level-id": "42001f",
}


def make_frame(index: int, noise: bool) -> av.VideoFrame:
    """A 640x360 frame; noisy frames are large enough to span several RTP packets."""
    if noise:
        pixels = np.random.default_rng(index).integers(0, 256, (360, 640, 3), dtype=np.uint8)
    else:
        pixels = np.zeros((360, 640, 3), np.uint8)
    frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
    frame.pts = index * FRAME_TICKS
    frame.time_base = TIME_BASE
    return frame


def encode_sequence(mime: str, parameters: dict[str, str]) -> list[list[bytes]]:
    """Frames 0..4: 0 first (keyframe), 1 delta, 2 forced keyframe, 3 delta, 4 delta (plain)."""
    codec = RTCRtpCodecParameters(
        mimeType=mime, clockRate=90000, payloadType=96, parameters=parameters
    )
    encoder = get_encoder(codec)
    frames = []
    for index in range(5):
        payloads, _timestamp = encoder.encode(
            make_frame(index, noise=index < 4), force_keyframe=index == 2
        )
        assert payloads, f"{mime}: frame {index} produced no payload"
        frames.append(payloads)
    return frames


@pytest.fixture(scope="module")
def vp8_frames() -> list[list[bytes]]:
    return encode_sequence("video/VP8", {})


@pytest.fixture(scope="module")
def h264_frames() -> list[list[bytes]]:
    # PyAV's wheels ship an H.264 encoder (libx264): if it fails, the test must say so.
    return encode_sequence("video/H264", H264_PARAMETERS)


# -- VP8, real encoder --------------------------------------------------------------------------


def test_vp8_first_frame_is_a_keyframe(vp8_frames: list[list[bytes]]) -> None:
    assert vp8_keyframe_start(vp8_frames[0][0])


def test_vp8_forced_keyframe_is_detected(vp8_frames: list[list[bytes]]) -> None:
    assert len(vp8_frames[2]) > 1, "a noisy keyframe should span several packets"
    assert vp8_keyframe_start(vp8_frames[2][0])


@pytest.mark.parametrize("index", [1, 3, 4])
def test_vp8_delta_frames_are_not_keyframes(vp8_frames: list[list[bytes]], index: int) -> None:
    assert not any(vp8_keyframe_start(p) for p in vp8_frames[index])


@pytest.mark.parametrize("index", [0, 2])
def test_vp8_only_the_first_packet_of_a_keyframe_is_a_start(
    vp8_frames: list[list[bytes]], index: int
) -> None:
    flags = [vp8_keyframe_start(p) for p in vp8_frames[index]]
    assert flags[0] and not any(flags[1:])


def test_vp8_real_payload_descriptor_shape(vp8_frames: list[list[bytes]]) -> None:
    """aiortc sends X=1, I=1 with a 15-bit picture id: the descriptor parser is exercised."""
    first = vp8_frames[0][0]
    assert first[0] & 0x80 and first[0] & 0x10  # X, S
    assert first[1] & 0x80  # I
    assert first[2] & 0x80  # M: 15-bit picture id


def test_vp8_detector_via_keyframe_detector(vp8_frames: list[list[bytes]]) -> None:
    detect = keyframe_detector("video/VP8")
    assert [detect(frame[0]) for frame in vp8_frames] == [True, False, True, False, False]


# -- VP8, hand-made descriptors (RFC 7741 §4.2) --------------------------------------------------

KEY = 0x9C  # VP8 payload header byte 0 with P=0 (keyframe): size bits, show_frame, version 0
DELTA = 0x9D  # same with P=1 (interframe)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (bytes([0x10, KEY]), True),  # no X, S=1, PID=0
        (bytes([0x10, DELTA]), False),  # P=1
        (bytes([0x00, KEY]), False),  # S=0: continuation of a partition
        (bytes([0x11, KEY]), False),  # PID=1: not the first partition
        (bytes([0x17, KEY]), False),  # PID=7
        (bytes([0x30, KEY]), True),  # N=1 (non-reference) does not matter
        (bytes([0x90, 0x00, KEY]), True),  # X=1, no optional fields
        (bytes([0x90, 0x80, 0x05, KEY]), True),  # I, 7-bit picture id
        (bytes([0x90, 0x80, 0x05, DELTA]), False),
        (bytes([0x90, 0x80, 0x81, 0x23, KEY]), True),  # I, 15-bit picture id
        (bytes([0x90, 0x80, 0x81, 0x23, DELTA]), False),
        # 15-bit id whose second byte looks like a keyframe header must not be read as one
        (bytes([0x90, 0x80, 0x81, 0x00, DELTA]), False),
        (bytes([0x90, 0x40, 0x07, KEY]), True),  # L: TL0PICIDX
        (bytes([0x90, 0x40, 0x06, DELTA]), False),  # TL0PICIDX even (looks like P=0)
        (bytes([0x90, 0x20, 0x40, KEY]), True),  # T: TID/Y/KEYIDX byte
        (bytes([0x90, 0x20, 0x40, DELTA]), False),
        (bytes([0x90, 0x10, 0x1F, KEY]), True),  # K only: same byte
        (bytes([0x90, 0x10, 0x00, DELTA]), False),
        (bytes([0x90, 0xF0, 0x81, 0x23, 0x07, 0x40, KEY]), True),  # I(15)+L+T+K
        (bytes([0x90, 0xF0, 0x81, 0x23, 0x06, 0x40, DELTA]), False),
        (bytes([0x90, 0xF0, 0x05, 0x07, 0x40, KEY]), True),  # I(7)+L+T+K
        (bytes([0x90, 0xF0, 0x05, 0x06, 0x40, DELTA]), False),
        (bytes([0x80, 0xF0, 0x05, 0x06, 0x40, KEY]), False),  # X but S=0
        (bytes([0x91, 0xF0, 0x05, 0x06, 0x40, KEY]), False),  # X, S but PID=1
    ],
    ids=lambda v: v.hex() if isinstance(v, bytes) else str(v),
)
def test_vp8_descriptor(payload: bytes, expected: bool) -> None:
    assert vp8_keyframe_start(payload) is expected


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes([0x10]),  # descriptor only, no payload header
        bytes([0x90]),  # X without extension byte
        bytes([0x90, 0x80]),  # I without picture id
        bytes([0x90, 0x80, 0x05]),  # 7-bit picture id, no payload header
        bytes([0x90, 0x80, 0x81]),  # 15-bit id, second byte missing
        bytes([0x90, 0x80, 0x81, 0x23]),  # 15-bit id, no payload header
        bytes([0x90, 0x40]),  # L without TL0PICIDX
        bytes([0x90, 0x40, 0x06]),  # L, no payload header (0x06 must not be read as one)
        bytes([0x90, 0x20]),  # T without its byte
        bytes([0x90, 0xF0, 0x81, 0x23, 0x06]),  # everything but the T/K byte
        bytes([0x90, 0xF0, 0x81, 0x23, 0x06, 0x40]),  # everything but the payload header
    ],
    ids=lambda v: v.hex() or "empty",
)
def test_vp8_truncated_is_false(payload: bytes) -> None:
    assert vp8_keyframe_start(payload) is False


def test_vp8_garbage_never_raises() -> None:
    rng = random.Random(1234)
    for _ in range(5000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
        assert vp8_keyframe_start(payload) in (True, False)


# -- H.264, real encoder ------------------------------------------------------------------------


def test_h264_first_frame_starts_with_sps(h264_frames: list[list[bytes]]) -> None:
    first = h264_frames[0][0]
    assert h264_keyframe_start(first)


def test_h264_forced_keyframe_is_detected(h264_frames: list[list[bytes]]) -> None:
    assert h264_keyframe_start(h264_frames[2][0])


@pytest.mark.parametrize("index", [1, 3, 4])
def test_h264_delta_frames_are_not_keyframes(h264_frames: list[list[bytes]], index: int) -> None:
    assert not any(h264_keyframe_start(p) for p in h264_frames[index])


@pytest.mark.parametrize("index", [0, 2])
def test_h264_fu_a_middle_and_end_fragments_are_not_starts(
    h264_frames: list[list[bytes]], index: int
) -> None:
    for payload in h264_frames[index]:
        if payload[0] & 0x1F == 28 and not payload[1] & 0x80:
            assert not h264_keyframe_start(payload), payload[:2].hex()


def test_h264_keyframe_packets_are_recognised_by_kind(h264_frames: list[list[bytes]]) -> None:
    """Every packet of the noisy forced keyframe: STAP-A/SPS or IDR start -> True, else False."""
    packets = h264_frames[2]
    assert len(packets) > 2, "a noisy keyframe should be fragmented"
    kinds = []
    for payload in packets:
        nal = payload[0] & 0x1F
        if nal == 28:
            kinds.append(("fu-a", bool(payload[1] & 0x80), payload[1] & 0x1F))
        else:
            kinds.append((nal, None, None))
    assert any(k[0] == "fu-a" and k[1] and k[2] == 5 for k in kinds), kinds
    for payload, kind in zip(packets, kinds, strict=True):
        expected = kind[0] in (24, 5, 7) or (kind[0] == "fu-a" and kind[1] and kind[2] == 5)
        assert h264_keyframe_start(payload) is expected, kind


def test_h264_detector_via_keyframe_detector(h264_frames: list[list[bytes]]) -> None:
    detect = keyframe_detector("video/H264")
    assert [detect(frame[0]) for frame in h264_frames] == [True, False, True, False, False]


# -- H.264, hand-made payloads (RFC 6184) --------------------------------------------------------

SPS = bytes([0x67, 0x42, 0x00, 0x1F, 0xAB])  # nal_ref_idc 3, type 7
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])  # type 8
IDR = bytes([0x65, 0x88, 0x84, 0x00])  # type 5
SLICE = bytes([0x41, 0x9A, 0x02])  # type 1, non-IDR
SEI = bytes([0x06, 0x05, 0x01])  # type 6


def stap_a(*nals: bytes) -> bytes:
    out = bytearray([0x78])  # F=0, NRI=3, type 24
    for nal in nals:
        out += len(nal).to_bytes(2, "big") + nal
    return bytes(out)


def fu_a(nal_type: int, start: bool, end: bool = False, body: bytes = b"\x11\x22") -> bytes:
    indicator = 0x60 | 28
    header = (0x80 if start else 0) | (0x40 if end else 0) | nal_type
    return bytes([indicator, header]) + body


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (IDR, True),
        (SPS, True),
        (PPS, False),
        (SLICE, False),
        (SEI, False),
        (bytes([0x09, 0x10]), False),  # access unit delimiter
        (bytes([0x65]), True),  # IDR header alone still says IDR
        (stap_a(SPS, PPS), True),
        (stap_a(SPS, PPS, IDR), True),
        (stap_a(SEI, SPS, PPS), True),  # SPS not first in the aggregate
        (stap_a(SEI, IDR), True),
        (stap_a(PPS, SEI), False),
        (stap_a(SLICE, SLICE), False),
        (fu_a(5, start=True), True),
        (fu_a(5, start=False), False),  # middle fragment
        (fu_a(5, start=False, end=True), False),  # end fragment
        (fu_a(1, start=True), False),  # non-IDR slice start
        (fu_a(1, start=False), False),
        (bytes([0x7C, 0x85]), True),  # FU-A start, IDR, header only
        (bytes([0x79, 0x00, 0x04]) + SPS, False),  # STAP-B (interleaved): not handled
        (bytes([0x7D, 0x85, 0x00, 0x00]), False),  # FU-B: not in packetization-mode 1
    ],
    ids=lambda v: v.hex() if isinstance(v, bytes) else str(v),
)
def test_h264_payload(payload: bytes, expected: bool) -> None:
    assert h264_keyframe_start(payload) is expected


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        bytes([0x00]),  # NAL type 0 (unspecified)
        bytes([0x1F]),  # type 31 (unspecified)
        bytes([0x78]),  # STAP-A header only
        bytes([0x78, 0x00]),  # half a size field
        bytes([0x78, 0x00, 0x05]),  # size, no NAL
        bytes([0x78, 0x00, 0x00, 0x67]),  # zero-size NAL: malformed
        stap_a(PPS) + bytes([0x00]),  # trailing half size
        stap_a(PPS) + bytes([0x00, 0x09]),  # trailing size, NAL missing
        bytes([0x78, 0xFF, 0xFF, 0x41]),  # size beyond the end, non-key NAL
        bytes([0x7C]),  # FU-A without FU header
    ],
    ids=lambda v: v.hex() or "empty",
)
def test_h264_truncated_or_malformed_is_false(payload: bytes) -> None:
    assert h264_keyframe_start(payload) is False


def test_h264_garbage_never_raises() -> None:
    rng = random.Random(4321)
    for _ in range(5000):
        first = rng.choice([0x78, 0x7C, 0x65, 0x67, rng.randrange(256)])
        payload = bytes([first]) + bytes(rng.randrange(256) for _ in range(rng.randrange(10)))
        assert h264_keyframe_start(payload) in (True, False)


def test_h264_stap_a_with_huge_count_of_tiny_nals_terminates() -> None:
    payload = stap_a(*([bytes([0x06])] * 20000))  # 60 KB of one-byte SEIs
    assert h264_keyframe_start(payload) is False
    assert h264_keyframe_start(payload + (5).to_bytes(2, "big") + SPS) is True


# -- keyframe_detector --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "expected"),
    [
        ("video/VP8", vp8_keyframe_start),
        ("video/vp8", vp8_keyframe_start),
        ("VIDEO/VP8", vp8_keyframe_start),
        ("video/H264", h264_keyframe_start),
        ("video/h264", h264_keyframe_start),
        ("audio/opus", None),
        ("audio/PCMU", None),
        ("video/rtx", None),
    ],
)
def test_keyframe_detector(mime: str, expected: object) -> None:
    assert keyframe_detector(mime) is expected


# -- KeyframeRequestPacer -----------------------------------------------------------------------


def test_pacer_first_request_goes_out_at_once() -> None:
    pacer = KeyframeRequestPacer(min_interval=0.3)
    decision = pacer.request(100.0)
    assert decision.send_now is True
    assert decision.defer_until is None


def test_pacer_request_inside_interval_is_deferred_to_its_end() -> None:
    pacer = KeyframeRequestPacer(min_interval=0.5)
    assert pacer.request(10.0).send_now
    decision = pacer.request(10.125)
    assert decision.send_now is False
    assert decision.defer_until == pytest.approx(10.5)


def test_pacer_requests_while_pending_merge() -> None:
    pacer = KeyframeRequestPacer(min_interval=0.5)
    pacer.request(10.0)
    first = pacer.request(10.1)
    assert first.defer_until == pytest.approx(10.5)
    for t in (10.2, 10.3, 10.49, 11.0):  # even after the due time, until deferred_due runs
        merged = pacer.request(t)
        assert merged.send_now is False
        assert merged.defer_until is None
    assert pacer.deferred_due(10.5) is True
    assert pacer.deferred_due(10.5) is False  # sent once, not once per merged request


def test_pacer_deferred_request_is_not_dropped_and_restarts_the_interval() -> None:
    pacer = KeyframeRequestPacer(min_interval=0.5)
    pacer.request(0.0)
    pacer.request(0.25)
    assert pacer.deferred_due(0.5) is True
    # the deferred send counts as the last one
    again = pacer.request(0.75)
    assert again.send_now is False
    assert again.defer_until == pytest.approx(1.0)
    assert pacer.deferred_due(1.0) is True
    assert pacer.request(1.5).send_now is True


def test_pacer_deferred_due_without_pending_is_false() -> None:
    pacer = KeyframeRequestPacer(min_interval=0.3)
    assert pacer.deferred_due(1.0) is False
    pacer.request(1.0)
    assert pacer.deferred_due(1.1) is False


def test_pacer_request_exactly_at_interval_is_sent() -> None:
    pacer = KeyframeRequestPacer(min_interval=0.5)
    pacer.request(2.0)
    assert pacer.request(2.5).send_now is True
    assert pacer.request(3.25).send_now is True


@pytest.mark.parametrize("seed", range(5))
def test_pacer_never_sends_two_within_interval_and_never_loses_one(seed: int) -> None:
    """Simulate a stream of requests with a loop that fires deferred ones on time."""
    rng = random.Random(seed)
    interval = 0.3
    pacer = KeyframeRequestPacer(min_interval=interval)
    sent: list[float] = []
    due: float | None = None
    t = 0.0
    last_request = 0.0
    for _ in range(300):
        t += rng.choice([0.01, 0.05, 0.1, 0.2, 0.4])
        if due is not None and due <= t:
            if pacer.deferred_due(due):
                sent.append(due)
            due = None
        d = pacer.request(t)
        last_request = t
        if d.send_now:
            sent.append(t)
        elif d.defer_until is not None:
            assert due is None
            due = d.defer_until
    if due is not None and pacer.deferred_due(due):
        sent.append(due)
    for a, b in itertools.pairwise(sent):
        assert b - a >= interval - 1e-9
    # the last request was answered by a send at or after it (deferred or merged, not dropped)
    assert sent and sent[-1] >= last_request - 1e-9
