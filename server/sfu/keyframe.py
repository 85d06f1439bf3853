"""Keyframe recognition in RTP payloads and pacing of keyframe requests (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


def vp8_keyframe_start(payload: bytes) -> bool:
    """True if this VP8 RTP payload starts a keyframe (RFC 7741 §4.2, §4.3)."""
    if len(payload) < 1:
        return False
    first = payload[0]
    start = first & 0x10
    partition = first & 0x07
    if not start or partition != 0:
        return False
    i = 1
    if first & 0x80:  # X: extended control bits
        if len(payload) <= i:
            return False
        ext = payload[i]
        i += 1
        if ext & 0x80:  # I: picture id, 7 or 15 bits
            if len(payload) <= i:
                return False
            i += 2 if payload[i] & 0x80 else 1
        if ext & 0x40:  # L: TL0PICIDX
            i += 1
        if ext & 0x30:  # T or K: TID/Y/KEYIDX
            i += 1
    if len(payload) <= i:
        return False
    return not (payload[i] & 0x01)  # P bit: 0 means keyframe


_H264_KEY_NAL = {5, 7}  # IDR slice, sequence parameter set


def h264_keyframe_start(payload: bytes) -> bool:
    """True if this H.264 RTP payload starts a keyframe: SPS or IDR (RFC 6184 §5.6–5.8)."""
    if len(payload) < 1:
        return False
    nal_type = payload[0] & 0x1F
    if 1 <= nal_type <= 23:
        return nal_type in _H264_KEY_NAL
    if nal_type == 24:  # STAP-A: 16-bit size, then NAL unit, repeated
        i = 1
        while i + 2 < len(payload):
            size = (payload[i] << 8) | payload[i + 1]
            if size == 0:
                return False
            if payload[i + 2] & 0x1F in _H264_KEY_NAL:
                return True
            i += 2 + size
        return False
    if nal_type == 28:  # FU-A: start bit and original NAL type in the FU header
        return (
            len(payload) >= 2 and bool(payload[1] & 0x80) and (payload[1] & 0x1F) in _H264_KEY_NAL
        )
    return False


def keyframe_detector(mime_type: str):  # type: ignore[no-untyped-def]
    """The keyframe-start test for a codec, or None for codecs without keyframes (audio)."""
    mime = mime_type.lower()
    if mime == "video/vp8":
        return vp8_keyframe_start
    if mime == "video/h264":
        return h264_keyframe_start
    return None


@dataclass
class PacerDecision:
    send_now: bool
    defer_until: float | None  # when a deferred request must be sent (None: nothing to do)


class KeyframeRequestPacer:
    """Rate-limits keyframe requests to a publisher: a request inside the interval is deferred
    to the end of the interval, never dropped; requests that pile up while one is pending merge."""

    def __init__(self, min_interval: float = 0.3) -> None:
        self.min_interval = min_interval
        self._last_sent: float | None = None
        self._pending_until: float | None = None

    def request(self, now: float) -> PacerDecision:
        if self._pending_until is not None:
            return PacerDecision(False, None)  # merged into the pending one
        if self._last_sent is None or now - self._last_sent >= self.min_interval:
            self._last_sent = now
            return PacerDecision(True, None)
        self._pending_until = self._last_sent + self.min_interval
        return PacerDecision(False, self._pending_until)

    def deferred_due(self, now: float) -> bool:
        """Call when the deferred time comes: True means send the request now."""
        if self._pending_until is None:
            return False
        self._pending_until = None
        self._last_sent = now
        return True
