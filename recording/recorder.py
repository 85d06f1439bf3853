"""The recorder of one live room: a Matroska file per published track, remuxed as it arrives.

It sits on the room's tracks as a packet sink (never a subscriber the others see), so nothing is
decoded or encoded: each track's RTP goes straight into its `TrackWriter`. Tracks that appear
while recording get a file of their own; a track that goes has its file closed and checksummed.
The catalogue (what is stored about the files) is reached through `Catalogue`, so this module
needs no database.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiortc.rtp import RtpPacket

from recording.track_writer import TrackWriter

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def fsync_in_thread(fd: int) -> None:
    """fsync and close `fd` (a duplicate of a recorded file's) in the loop's default executor,
    so that a slow disk never holds up the media loop."""

    def sync() -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            log.warning("recording: fsync failed: %s", exc)
        finally:
            os.close(fd)

    asyncio.get_running_loop().run_in_executor(None, sync)


def _file_name_part(name: str) -> str:
    """A participant's name as ASCII for a file name: "UBND xã Đông" → "UBND-xa-Dong"."""
    plain = unicodedata.normalize("NFKD", name.replace("Đ", "D").replace("đ", "d"))
    plain = "".join(ch for ch in plain if not unicodedata.combining(ch))
    return _SAFE.sub("-", plain)[:40].strip("-") or "p"


class RecordedTrack(Protocol):
    """What the recorder needs of a published track (server.sfu.up_track.UpTrack)."""

    id: str
    kind: str
    source: str

    @property
    def codec(self) -> object: ...

    def add_sink(self, sink: _TimedSink) -> None: ...

    def remove_sink(self, sink: _TimedSink) -> None: ...

    def request_keyframe(self) -> None: ...


class RecordedParticipant(Protocol):
    id: str
    name: str

    @property
    def site_code(self) -> str | None: ...


@dataclass(frozen=True)
class TrackFile:
    """A file being written: where, and what it holds."""

    path: Path
    track_id: str
    participant_id: str
    participant_name: str
    site: str | None
    kind: str
    codec: str


class Catalogue(Protocol):
    """Where the recorder reports its files (server/recording_control.py, over the store)."""

    def file_opened(self, file: TrackFile) -> Awaitable[int]: ...

    def file_closed(
        self, file_id: int, file: TrackFile, duration: float, started_at: float | None
    ) -> Awaitable[None]: ...


class _TimedSink:
    """A track's writer, noting the wall-clock time its first frame was written."""

    def __init__(self, writer: TrackWriter, request_keyframe: Callable[[], None]) -> None:
        self.writer = writer
        self.started_at: float | None = None
        self._request_keyframe = request_keyframe

    def write_packet(self, packet: RtpPacket) -> None:
        self.writer.write_packet(packet)
        if self.started_at is None and self.writer.frames > 0:
            self.started_at = time.time()
        if self.writer.wants_keyframe:
            # Before the first keyframe and after a loss; the track paces the requests.
            self._request_keyframe()


class RoomRecorder:
    """Records every track of one room into `directory` (segment `segment`)."""

    def __init__(self, room: str, directory: Path, catalogue: Catalogue, segment: int = 1) -> None:
        self.room = room
        self.directory = directory
        self.segment = segment
        self._catalogue = catalogue
        self._writers: dict[str, tuple[_TimedSink, RecordedTrack, TrackFile]] = {}
        self._file_ids: dict[str, asyncio.Future[int]] = {}
        self._pending: set[asyncio.Task[None]] = set()
        self._count = 0
        directory.mkdir(parents=True, exist_ok=True)

    def track_added(self, participant: RecordedParticipant, track: RecordedTrack) -> None:
        if track.id in self._writers:
            return
        codec = track.codec
        mime = getattr(codec, "mimeType", "")
        self._count += 1
        name = _file_name_part(participant.name)
        path = self.directory / (
            f"s{self.segment:02d}-{self._count:03d}-{name}-{track.source}-{track.kind}.mkv"
        )
        writer = TrackWriter(
            path,
            kind=track.kind,
            mime_type=mime,
            clock_rate=getattr(codec, "clockRate", 90000),
            channels=getattr(codec, "channels", None) or 2,
            fsync=fsync_in_thread,
        )
        file = TrackFile(
            path=path,
            track_id=track.id,
            participant_id=participant.id,
            participant_name=participant.name,
            site=participant.site_code,
            kind=track.kind,
            codec=mime,
        )
        sink = _TimedSink(writer, track.request_keyframe)
        self._writers[track.id] = (sink, track, file)
        self._file_ids[track.id] = asyncio.ensure_future(self._catalogue.file_opened(file))
        track.add_sink(sink)
        log.info("recording room=%s: track=%s into %s", self.room, track.id, path.name)

    def recorded_seconds(self, kind: str = "video") -> float:
        """Media time written so far of the `kind` track with the least (0 with none)."""
        durations = [
            sink.writer.result().duration
            for sink, track, _file in self._writers.values()
            if track.kind == kind
        ]
        return min(durations, default=0.0)

    def track_removed(self, track: RecordedTrack) -> None:
        entry = self._writers.pop(track.id, None)
        if entry is None:
            return
        sink, recorded, file = entry
        recorded.remove_sink(sink)
        task = asyncio.ensure_future(self._finish(track.id, sink, file))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _finish(self, track_id: str, sink: _TimedSink, file: TrackFile) -> None:
        # Closing writes the file's index and tail: in a thread, off the media loop.
        result = await asyncio.to_thread(sink.writer.close)
        file_id = await self._file_ids.pop(track_id)
        await self._catalogue.file_closed(file_id, file, result.duration, sink.started_at)
        log.info(
            "recording room=%s: track=%s closed, %.1f s in %s",
            self.room,
            track_id,
            result.duration,
            file.path.name,
        )

    async def stop(self) -> None:
        """Close every file (each reported to the catalogue) and wait for all of it."""
        for track_id in list(self._writers):
            _writer, track, _file = self._writers[track_id]
            self.track_removed(track)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=False)
