"""One recorded track: its RTP packets in, a Matroska/WebM file out, never decoded or encoded.

`TrackWriter` puts a track's packets back in order (bounded reorder window), assembles frames,
and remuxes each frame with PyAV as it completes. The file is written progressively and
flushed to the kernel at least every `FLUSH_INTERVAL` seconds (`os.fsync` at most once a
second), in small clusters, so that a SIGKILLed recorder leaves a file that plays up to a
second or two before the kill. A properly closed file also gets its duration and cue index.

Frames are assembled here rather than with `aiortc.jitterbuffer.JitterBuffer`: that class joins
the private `packet._data` attribute that `RTCRtpReceiver` sets, emits a frame only once the
next frame starts (so the last frame can never be drained at close) and cannot tell a complete
frame from one whose middle packets were lost. Depayloading is aiortc's public
`aiortc.codecs.depayload`.

Limits: one writer per track and per thread (not thread-safe); the picture size in the file
header is the first keyframe's (later size changes stay in-band, which decoders follow).
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Literal

import av
from aiortc.codecs import depayload
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RtpPacket

log = logging.getLogger(__name__)

Kind = Literal["audio", "video"]

# Muxer options: a cluster at least every second keeps what a kill loses small, and
# flush_packets hands every packet to the file object at once instead of AVIO's 32 KB buffer.
MUX_OPTIONS = {
    "cluster_time_limit": "1000",  # ms
    "cluster_size_limit": str(1 << 20),  # bytes
    "flush_packets": "1",
}
FLUSH_INTERVAL = 0.25  # s between flushes of the file object to the kernel
FSYNC_INTERVAL = 1.0  # s between fsyncs (power-loss safety; a SIGKILL only needs the flush)

# Reorder window: packets are held this long (media time) waiting for a missing one, and at
# most this many; a packet further ahead than MAX_MISORDER means the gap is not reordering.
MAX_WAIT_SECONDS = 0.5
MAX_PENDING = {"audio": 64, "video": 1024}
MAX_MISORDER = {"audio": 50, "video": 512}
START_PREFETCH = 4  # packets held before the first frame, as reordering may hide its start
RESTART_DISTANCE = 3000  # a packet this far behind means the sender restarted its sequence

_OPUS_SAMPLE_RATE = 48_000


@dataclass(frozen=True)
class WriteResult:
    """What a writer has written so far (final after `close()`)."""

    path: Path
    frames: int  # frames written to the file
    duration: float  # seconds, first frame to the end of the last
    bytes: int  # file size (0 while nothing was written: the file is created at the first frame)
    first_rtp_timestamp: int | None
    last_rtp_timestamp: int | None
    packets: int  # packets given to write_packet
    packets_lost: int  # sequence numbers never received (given up on)
    packets_late: int  # arrived after their place had been passed, or duplicated
    frames_incomplete: int  # frames dropped because packets of them were lost
    frames_before_keyframe: int  # video frames dropped while waiting for the first keyframe
    malformed: int  # packets or frames that could not be parsed or muxed, skipped
    keyframes: int


class TrackWriter:
    """Remuxes the RTP packets of one track (Opus, VP8 or H.264) into a Matroska file.

    `write_packet` never raises: bad input is counted (see `WriteResult`) and logged once per
    kind of problem. The file is created when the first frame is written (the first keyframe
    for video). The container is WebM if `path` ends in `.webm` (VP8/Opus only), else Matroska.
    """

    def __init__(
        self,
        path: Path,
        *,
        kind: Kind | str,
        mime_type: str,
        clock_rate: int,
        channels: int = 2,
        label: str = "",
        fsync_interval: float | None = FSYNC_INTERVAL,
        fsync: Callable[[int], None] | None = None,
    ) -> None:
        codec = mime_type.split("/")[-1].lower()
        if (kind, codec) not in (("audio", "opus"), ("video", "vp8"), ("video", "h264")):
            raise ValueError(f"cannot record {kind} track of {mime_type}")
        if clock_rate <= 0:
            raise ValueError("clock_rate must be positive")
        self.path = Path(path)
        self.kind: Kind = "audio" if kind == "audio" else "video"
        self.codec = codec
        self.clock_rate = clock_rate
        self.channels = 1 if channels == 1 else 2
        self.label = label or self.path.name
        self._fsync_interval = fsync_interval
        # Given a duplicate of the file's descriptor to fsync and close, elsewhere (a thread:
        # an fsync on a slow disk must not hold up the loop that forwards media). None: here.
        self._fsync_elsewhere = fsync
        self._codec_params = RTCRtpCodecParameters(
            mimeType=mime_type, clockRate=clock_rate, channels=channels, payloadType=0
        )
        self._assembler = _FrameAssembler(self)
        self._file: IO[bytes] | None = None
        self._container: av.container.OutputContainer | None = None
        self._stream: av.stream.Stream | None = None
        self._closed = False
        self._failed = False
        self._logged: set[str] = set()
        self._last_flush = self._last_fsync = time.monotonic()
        # Timestamps, in RTP clock units unwrapped to an unbounded count.
        self._first_ts: int | None = None
        self._ts_offset = 0  # added after a sender restart so pts keep increasing
        self._rebase = False  # the next frame follows a sender restart
        # Video only: no keyframe yet, or frames were lost since the last one. The owner may
        # ask the publisher for a keyframe (PLI) while this is set; frames keep being written,
        # as decoders conceal what they can.
        self.wants_keyframe = self.kind == "video"
        self._last_pts: int | None = None
        self._last_duration = 0
        self._first_rtp: int | None = None
        self._last_rtp: int | None = None
        self._bytes = 0
        # Counters reported in WriteResult.
        self.frames = 0
        self.keyframes = 0
        self.packets = 0
        self.packets_lost = 0
        self.packets_late = 0
        self.frames_incomplete = 0
        self.frames_before_keyframe = 0
        self.malformed = 0

    # ------------------------------------------------------------------ public

    def write_packet(self, packet: RtpPacket) -> None:
        """Take one RTP packet of this track (any order, duplicates allowed); never raises."""
        if self._closed:
            return
        self.packets += 1
        try:
            self._assembler.add(packet)
            self._maybe_flush()
        except Exception as exc:  # the media path must survive anything one packet does
            self._problem("unexpected", f"{type(exc).__name__}: {exc}")

    def flush(self) -> None:
        """Hand everything written so far to the kernel and fsync it (blocking)."""
        if self._file is None or self._file.closed:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            self._problem("flush", str(exc), count=False)
        self._last_flush = self._last_fsync = time.monotonic()

    def result(self) -> WriteResult:
        """The counts so far (the file size is known after `close()`)."""
        duration = 0.0
        if self._last_pts is not None:
            duration = (self._last_pts + self._last_duration) / self.clock_rate
        return WriteResult(
            path=self.path,
            frames=self.frames,
            duration=duration,
            bytes=self._bytes,
            first_rtp_timestamp=self._first_rtp,
            last_rtp_timestamp=self._last_rtp,
            packets=self.packets,
            packets_lost=self.packets_lost,
            packets_late=self.packets_late,
            frames_incomplete=self.frames_incomplete,
            frames_before_keyframe=self.frames_before_keyframe,
            malformed=self.malformed,
            keyframes=self.keyframes,
        )

    def close(self) -> WriteResult:
        """Write what is complete, finish the file (index, duration), report; idempotent."""
        if not self._closed:
            self._closed = True
            try:
                self._assembler.drain(final=True)
            except Exception as exc:
                self._problem("unexpected", f"{type(exc).__name__}: {exc}")
            self._close_file()
        return self.result()

    # ------------------------------------------------------------------ frames

    def _write_frame(self, ext_ts: int, rtp_ts: int, data: bytes) -> None:
        """Mux one assembled frame; `ext_ts` is its unwrapped RTP timestamp."""
        if self._failed:
            return
        keyframe = True
        if self.codec == "vp8":
            # RFC 6386 §9.1: bit 0 of the frame tag is 0 for a key frame.
            keyframe = not data[0] & 0x01
        elif self.codec == "h264":
            keyframe = 5 in _nal_types(data)  # an IDR slice (H.264 §7.4.1.2)
        if self._container is None:
            if not keyframe:
                self.frames_before_keyframe += 1
                return
            if not self._open(data):
                return
        if self._first_ts is None:
            self._first_ts = ext_ts
        pts = ext_ts - self._first_ts + self._ts_offset
        if self._last_pts is not None and (self._rebase or pts <= self._last_pts):
            # Frames arrive in sequence order, so an older timestamp means the sender restarted
            # with a new timestamp base, and after a restart its timestamps say nothing about
            # the time between: continue right after the last frame.
            if not self._rebase:
                self._problem("timestamp", f"went back at RTP {rtp_ts}", count=False)
            following = self._last_pts + max(self._last_duration, 1)
            self._ts_offset += following - pts
            pts = following
        self._rebase = False
        if self.codec == "opus":
            duration = _opus_duration(data) * self.clock_rate // _OPUS_SAMPLE_RATE
        elif self._last_pts is not None and pts - self._last_pts <= self.clock_rate:
            # Video frames carry no duration: the last interval is the best guess (not
            # after a pause such as a mute, which would stretch the file's last frame).
            duration = pts - self._last_pts
        else:
            duration = 0
        duration = duration or self._last_duration
        packet = av.Packet(data)
        packet.pts = packet.dts = pts
        packet.time_base = Fraction(1, self.clock_rate)
        packet.duration = duration
        packet.is_keyframe = keyframe
        assert self._container is not None and self._stream is not None
        packet.stream = self._stream
        try:
            self._container.mux(packet)
        except (av.error.FFmpegError, ValueError) as exc:
            self._problem("mux", str(exc))
            return
        self.frames += 1
        self.keyframes += keyframe
        if keyframe:
            self.wants_keyframe = False
        self._last_pts = pts
        self._last_duration = duration  # not packet.duration: mux() rebased it to the stream's
        if self._first_rtp is None:
            self._first_rtp = rtp_ts
        self._last_rtp = rtp_ts

    def _open(self, keyframe: bytes) -> bool:
        """Create the file and its stream from the first frame; False if that is not possible."""
        size = None
        if self.codec == "vp8":
            size = _vp8_size(keyframe)
        elif self.codec == "h264":
            size = _h264_size(keyframe)
        if self.kind == "video" and size is None:
            self.frames_before_keyframe += 1
            self._problem("keyframe", "first keyframe has no readable picture size", count=False)
            return False
        use_webm = self.path.suffix.lower() == ".webm" and self.codec != "h264"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "wb")  # closed in _close_file
            container = av.open(
                self._file, "w", format="webm" if use_webm else "matroska", options=MUX_OPTIONS
            )
            self._container = container
            if self.codec == "opus":
                stream = container.add_stream(
                    "libopus",
                    rate=_OPUS_SAMPLE_RATE,
                    layout="mono" if self.channels == 1 else "stereo",
                )
                # PyAV writes a stream's parameters from its codec context, which it would
                # open as an encoder; open it ourselves (nothing is ever encoded) and replace
                # the encoder's OpusHead with the one for this stream.
                stream.codec_context.open()
                stream.codec_context.extradata = _opus_head(self.channels)
            else:
                assert size is not None
                # A mux-only stream: no codec context; H.264's avcC is taken by PyAV from the
                # SPS/PPS in the first packet (its extract_extradata filter).
                stream = container.add_mux_stream(self.codec, width=size[0], height=size[1])
            stream.time_base = Fraction(1, self.clock_rate)
            self._stream = stream
        except (OSError, av.error.FFmpegError, ValueError) as exc:
            self._failed = True
            self._problem("open", str(exc), level=logging.ERROR, count=False)
            self._close_file()
            return False
        log.info("track writer %s: writing %s %s", self.label, self.codec, self.path)
        return True

    def _maybe_flush(self) -> None:
        if self._file is None:
            return
        now = time.monotonic()
        if now - self._last_flush < FLUSH_INTERVAL:
            return
        self._last_flush = now
        try:
            self._file.flush()
            if self._fsync_interval is not None and now - self._last_fsync >= self._fsync_interval:
                self._last_fsync = now
                if self._fsync_elsewhere is not None:
                    self._fsync_elsewhere(os.dup(self._file.fileno()))
                else:
                    os.fsync(self._file.fileno())
        except OSError as exc:
            self._problem("flush", str(exc), count=False)

    def _close_file(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except (av.error.FFmpegError, OSError, ValueError) as exc:
                self._problem("close", str(exc), level=logging.ERROR, count=False)
            self._container = None
        if self._file is not None:
            self.flush()
            self._file.close()
            self._file = None
            try:
                self._bytes = self.path.stat().st_size
            except OSError:
                self._bytes = 0

    def _problem(
        self, kind: str, detail: str, level: int = logging.WARNING, count: bool = True
    ) -> None:
        """Count a skipped packet or frame (if `count`); log only the first of each kind."""
        self.malformed += count
        if kind not in self._logged:
            self._logged.add(kind)
            log.log(
                level,
                "track writer %s: %s problem (further ones only counted): %s",
                self.label,
                kind,
                detail,
            )


class _Unwrapper:
    """Extends a wrapping RTP counter (sequence number, timestamp) to an unbounded int."""

    def __init__(self, bits: int) -> None:
        self._modulo = 1 << bits
        self._half = 1 << (bits - 1)
        self._highest: int | None = None

    def unwrap(self, value: int) -> int:
        if self._highest is None:
            self._highest = value
            return value
        delta = (value - self._highest) % self._modulo
        if delta >= self._half:
            delta -= self._modulo
        extended = self._highest + delta
        self._highest = max(self._highest, extended)
        return extended

    def reset(self, value: int) -> None:
        self._highest = value


class _FrameAssembler:
    """Orders one track's packets by sequence number and hands complete frames to the writer.

    A frame is the run of consecutive packets with one timestamp, ended by the marker bit
    (RFC 7741 §4.1 for VP8, RFC 6184 §5.1 for H.264) or by the next timestamp. Opus carries
    one frame per packet (RFC 7587 §4.2). A missing packet is waited for while the run behind
    it stays short (MAX_WAIT_SECONDS, MAX_PENDING); then it counts as lost, and the frame it
    belonged to is dropped.
    """

    def __init__(self, writer: TrackWriter) -> None:
        self._writer = writer
        self._seq = _Unwrapper(16)
        self._ts = _Unwrapper(32)
        self._pending: dict[int, tuple[int, RtpPacket]] = {}  # ext seq → (ext ts, packet)
        self._next: int | None = None  # the next sequence number to consume
        self._at_boundary = False  # whether _next is known to start a frame
        self._started = False  # whether a frame has been consumed (else _next may move back)
        self._incomplete_ts: int | None = None  # the last frame counted as incomplete
        self._newest_ts = -(1 << 62)
        self._max_pending = MAX_PENDING[writer.kind]
        self._max_misorder = MAX_MISORDER[writer.kind]
        self._max_wait = int(MAX_WAIT_SECONDS * writer.clock_rate)

    def add(self, packet: RtpPacket) -> None:
        ext = self._seq.unwrap(packet.sequence_number)
        ext_ts = self._ts.unwrap(packet.timestamp)
        if self._next is None:
            self._next = ext
        elif ext < self._next:
            if not self._started and self._next - ext < self._max_misorder:
                # Nothing consumed yet: the stream's first packets may come in late.
                self._next = ext
            elif self._next - ext < RESTART_DISTANCE:
                self._writer.packets_late += 1
                return
            else:
                ext, ext_ts = self._restart(packet)
        if ext in self._pending:
            self._writer.packets_late += 1
            return
        self._pending[ext] = (ext_ts, packet)
        self._newest_ts = max(self._newest_ts, ext_ts)
        self.drain()

    def _restart(self, packet: RtpPacket) -> tuple[int, int]:
        """Start over at `packet`, far behind the others: the sender restarted its sequence."""
        self.drain(final=True)
        self._seq.reset(packet.sequence_number)
        self._ts.reset(packet.timestamp)
        self._pending.clear()
        self._next, self._at_boundary, self._started = packet.sequence_number, False, False
        self._newest_ts = packet.timestamp
        self._writer._rebase = True
        return packet.sequence_number, packet.timestamp

    def drain(self, final: bool = False) -> None:
        """Emit every frame that is complete; with `final`, give up on every gap."""
        while self._pending:
            assert self._next is not None
            if not (self._started or final or self._ready_to_start() or self._give_up()):
                return
            end = self._complete_run()
            if end is not None:
                self._started = True
                self._consume(end)
            elif final or self._give_up():
                self._skip_gap()
            else:
                return

    def _complete_run(self) -> int | None:
        """The last sequence number of the frame starting at _next, if all of it is here."""
        assert self._next is not None
        first = self._pending.get(self._next)
        if first is None:
            return None
        audio = self._writer.kind == "audio"
        seq = self._next
        while True:
            entry = self._pending.get(seq)
            if entry is None:
                return None
            packet = entry[1]
            if packet.timestamp != first[1].timestamp:
                return seq - 1  # marker lost or not set: the next frame has begun
            if audio or packet.marker:
                return seq
            seq += 1

    def _consume(self, end: int) -> None:
        assert self._next is not None
        run = [self._pending.pop(seq) for seq in range(self._next, end + 1)]
        starts_frame = self._at_boundary
        self._next, self._at_boundary = end + 1, True
        ext_ts, first = run[0]
        payloads = [packet.payload for _ts, packet in run if packet.payload]
        if not payloads:
            return  # padding only (RFC 3550 §5.1), e.g. bandwidth probes
        writer = self._writer
        try:
            if not starts_frame and not _starts_frame(writer.codec, payloads[0]):
                self._incomplete(ext_ts)
                return
            data = b"".join(depayload(writer._codec_params, p) for p in payloads)
        except (ValueError, IndexError, struct.error) as exc:
            writer._problem(f"{writer.codec} payload", str(exc))
            return
        if not data:
            writer._problem(f"{writer.codec} payload", "empty frame")
            return
        writer._write_frame(ext_ts, first.timestamp, data)

    def _ready_to_start(self) -> bool:
        """Whether the first frame may be taken: a frame start with a few packets behind it."""
        first = self._pending.get(self._next) if self._next is not None else None
        if first is None or len(self._pending) < START_PREFETCH:
            return False
        try:
            return not first[1].payload or _starts_frame(self._writer.codec, first[1].payload)
        except (ValueError, IndexError):
            return True  # consumed, counted and skipped as malformed

    def _give_up(self) -> bool:
        assert self._next is not None
        # Pending sequence numbers are never below _next: usually _next itself is the oldest.
        oldest = self._next if self._next in self._pending else min(self._pending)
        oldest_ts = self._pending[oldest][0]
        return (
            len(self._pending) >= self._max_pending
            or oldest - self._next >= self._max_misorder
            or self._newest_ts - oldest_ts >= self._max_wait
        )

    def _skip_gap(self) -> None:
        """Drop the partial frame before the first missing packet and jump past the gap."""
        assert self._next is not None
        seq = self._next
        while seq in self._pending:
            ext_ts, packet = self._pending.pop(seq)
            if packet.payload:
                self._incomplete(ext_ts)
            seq += 1
        following = min(self._pending) if self._pending else seq
        self._writer.packets_lost += following - seq
        if following > seq:
            self._writer.wants_keyframe = self._writer.kind == "video"
        self._next, self._at_boundary = following, False

    def _incomplete(self, ext_ts: int) -> None:
        """Count a frame dropped for lost packets, once however many pieces it was left in."""
        if ext_ts != self._incomplete_ts:
            self._incomplete_ts = ext_ts
            self._writer.frames_incomplete += 1
        self._writer.wants_keyframe = self._writer.kind == "video"


def _starts_frame(codec: str, payload: bytes) -> bool:
    """Whether a packet may begin a frame, for use after a loss."""
    if codec == "vp8":
        # RFC 7741 §4.2: S=1 and PID=0 mark the first packet of a frame.
        descriptor, _ = VpxPayloadDescriptor.parse(payload)
        return bool(descriptor.partition_start) and descriptor.partition_id == 0
    if codec == "h264":
        # RFC 6184 §5.8: only an FU-A with S=1 starts a fragmented NAL unit. Whether earlier
        # NAL units of the same access unit were lost cannot be known; those frames are kept.
        return payload[0] & 0x1F != 28 or bool(payload[1] & 0x80)
    return True


def _nal_units(data: bytes) -> list[bytes]:
    """The NAL units of an Annex-B byte stream (H.264 Annex B.1), start codes removed."""
    units = []
    for chunk in data.split(b"\x00\x00\x01")[1:]:
        units.append(chunk.rstrip(b"\x00") if chunk.endswith(b"\x00") else chunk)
    return [u for u in units if u]


def _nal_types(data: bytes) -> set[int]:
    return {unit[0] & 0x1F for unit in _nal_units(data)}


def _vp8_size(frame: bytes) -> tuple[int, int] | None:
    """Width and height from a VP8 key frame header (RFC 6386 §9.1), or None."""
    if len(frame) < 10 or frame[0] & 0x01 or frame[3:6] != b"\x9d\x01\x2a":
        return None
    width, height = struct.unpack_from("<HH", frame, 6)
    width, height = width & 0x3FFF, height & 0x3FFF  # top two bits are the scaling mode
    return (width, height) if width and height else None


def _h264_size(access_unit: bytes) -> tuple[int, int] | None:
    """Width and height from the first SPS in an Annex-B access unit, or None."""
    for unit in _nal_units(access_unit):
        if unit[0] & 0x1F == 7:
            try:
                return _sps_size(unit[1:])
            except (IndexError, ValueError):
                return None
    return None


class _BitReader:
    """Reads the bits of an RBSP (emulation prevention bytes removed, H.264 §7.4.1)."""

    def __init__(self, data: bytes) -> None:
        self._data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self._pos = 0

    def bits(self, count: int) -> int:
        value = 0
        for _ in range(count):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def ue(self) -> int:
        """Unsigned Exp-Golomb code (H.264 §9.1)."""
        zeros = 0
        while self.bits(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        value = self.ue()
        return (value + 1) // 2 if value & 1 else -(value // 2)


def _sps_size(rbsp: bytes) -> tuple[int, int]:
    """Picture size from seq_parameter_set_data (H.264 §7.3.2.1.1), cropping applied."""
    r = _BitReader(rbsp)
    profile_idc = r.bits(8)
    r.bits(16)  # constraint flags, level_idc
    r.ue()  # seq_parameter_set_id
    chroma_format_idc = 1
    separate_colour_plane = 0
    if profile_idc in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            separate_colour_plane = r.bits(1)
        r.ue()  # bit_depth_luma_minus8
        r.ue()  # bit_depth_chroma_minus8
        r.bits(1)  # qpprime_y_zero_transform_bypass_flag
        if r.bits(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.bits(1):
                    last = following = 8
                    for _ in range(16 if i < 6 else 64):
                        if following:
                            following = (last + r.se() + 256) % 256
                        last = following or last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        r.bits(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.bits(1)  # gaps_in_frame_num_value_allowed_flag
    width = (r.ue() + 1) * 16
    map_units = r.ue() + 1
    frame_mbs_only = r.bits(1)
    height = map_units * 16 * (2 - frame_mbs_only)
    if not frame_mbs_only:
        r.bits(1)  # mb_adaptive_frame_field_flag
    r.bits(1)  # direct_8x8_inference_flag
    if r.bits(1):  # frame_cropping_flag
        left, right, top, bottom = r.ue(), r.ue(), r.ue(), r.ue()
        chroma = 0 if separate_colour_plane else chroma_format_idc
        unit_x = 2 if chroma in (1, 2) else 1
        unit_y = (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
    if width <= 0 or height <= 0:
        raise ValueError("SPS crops the picture away")
    return width, height


def _opus_duration(packet: bytes) -> int:
    """Samples at 48 kHz in an Opus packet, from its TOC byte (RFC 6716 §3.1); 0 if unknown."""
    if not packet:
        return 0
    config, code = packet[0] >> 3, packet[0] & 0x03
    if config < 12:  # SILK-only: 10, 20, 40, 60 ms
        frame = (480, 960, 1920, 2880)[config & 3]
    elif config < 16:  # hybrid: 10, 20 ms
        frame = (480, 960)[config & 1]
    else:  # CELT-only: 2.5, 5, 10, 20 ms
        frame = (120, 240, 480, 960)[config & 3]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        count = packet[1] & 0x3F if len(packet) > 1 else 0
    return frame * count


def _opus_head(channels: int) -> bytes:
    """An OpusHead (RFC 7845 §5.1) for RTP Opus: mapping family 0, no pre-skip.

    RTP carries no pre-skip (RFC 7587), and the recording starts mid-stream, so there is
    nothing to skip; the input sample rate is informational only."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 0, _OPUS_SAMPLE_RATE, 0, 0)
