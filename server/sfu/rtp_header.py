"""Writing the RTP header of a forwarded packet (RFC 3550 §5.1, one-byte extensions RFC 8285).

The per-subscriber part of a forwarded packet is its header: payload type, sequence number,
timestamp, SSRC and the header extensions at the ids that subscriber negotiated. The payload
is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from struct import Struct

_FIXED = Struct("!BBHII")
_EXTENSION_PROFILE_ONE_BYTE = 0xBEDE

URI_MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
URI_ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
URI_AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"


@dataclass(frozen=True)
class ExtensionIds:
    """The header-extension ids one subscriber negotiated (0: not negotiated)."""

    mid: int = 0
    abs_send_time: int = 0
    audio_level: int = 0

    @classmethod
    def from_negotiated(cls, extensions: Iterable[object]) -> ExtensionIds:
        """From aiortc's RTCRtpHeaderExtensionParameters (objects with `id` and `uri`)."""
        ids = {getattr(e, "uri", ""): getattr(e, "id", 0) for e in extensions}
        return cls(ids.get(URI_MID, 0), ids.get(URI_ABS_SEND_TIME, 0), ids.get(URI_AUDIO_LEVEL, 0))


def extension_block(
    ids: ExtensionIds,
    mid: bytes | None,
    abs_send_time: int | None,
    audio_level: tuple[bool, int] | None,
) -> bytes:
    """The extension header (profile, length, elements, padding), or b"" if there is none."""
    body = bytearray()
    if ids.mid and mid:
        body.append((ids.mid << 4) | (len(mid) - 1))
        body += mid
    if ids.abs_send_time and abs_send_time is not None:
        body.append((ids.abs_send_time << 4) | 2)
        body += abs_send_time.to_bytes(3, "big")
    if ids.audio_level and audio_level is not None:
        voice, level = audio_level
        body.append((ids.audio_level << 4) | 0)
        body.append((0x80 if voice else 0) | (level & 0x7F))
    if not body:
        return b""
    body += b"\x00" * (-len(body) % 4)
    return (
        _EXTENSION_PROFILE_ONE_BYTE.to_bytes(2, "big")
        + (len(body) // 4).to_bytes(2, "big")
        + bytes(body)
    )


def packet_tail(extensions: bytes, payload: bytes, padding_size: int = 0) -> tuple[int, bytes]:
    """(first header byte, everything after the fixed header) of a forwarded packet.

    Subscribers with the same extension block share one tail: only the 12-byte fixed header
    is theirs alone, so the payload is copied once per packet, not once per subscriber.
    """
    first = 0x80 | (0x10 if extensions else 0) | (0x20 if padding_size else 0)
    if padding_size:
        return first, extensions + payload + bytes(padding_size - 1) + bytes([padding_size])
    return first, extensions + payload


fixed_header = _FIXED.pack  # (first byte, marker << 7 | payload type, seq, timestamp, ssrc)


def rtp_packet(
    payload_type: int,
    marker: int,
    sequence_number: int,
    timestamp: int,
    ssrc: int,
    extensions: bytes,
    payload: bytes,
    padding_size: int = 0,
) -> bytes:
    """A whole RTP packet (no CSRCs: an SFU forwards one source per stream)."""
    first, tail = packet_tail(extensions, payload, padding_size)
    header = fixed_header(first, (marker << 7) | payload_type, sequence_number, timestamp, ssrc)
    return header + tail
