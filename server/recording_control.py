"""Starting and stopping the recording of a live room, and its catalogue entries.

In the embedded default the recorder runs inside the node (DESIGN §1): a `RoomRecorder` set on
the live room as its track observer. Files go to `DATA_DIR/recordings/<recording id>/`; the
catalogue (server/recordings.py) gets each file with its size and SHA-256 when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from recording.compose import ComposeInput, compose
from recording.recorder import RoomRecorder, TrackFile
from server import recordings
from server.errors import Conflict
from server.metrics import Metrics
from server.room import Room
from server.store.db import Database
from server.store.models import Recording, RecordingFile, RecordingState

log = logging.getLogger(__name__)

RECORDINGS_DIR = "recordings"
COMPOSITE_NAME = "composite.mp4"
COMPOSE_ATTEMPTS = 2


class StoreCatalogue:
    """The recorder's `Catalogue`, over the store."""

    def __init__(self, database: Database, recording_id: int, segment: int, root: Path) -> None:
        self._database = database
        self._recording_id = recording_id
        self._segment = segment
        self._root = root

    async def file_opened(self, file: TrackFile) -> int:
        async with self._database.session() as db, db.begin():
            stored = await recordings.add_file(
                db,
                self._recording_id,
                kind="track",
                segment=self._segment,
                path=str(file.path.relative_to(self._root)),
                track_id=file.track_id,
                participant_name=file.participant_name,
                site_code=file.site,
                media_kind=file.kind,
                codec=file.codec,
            )
            return stored.id

    async def file_closed(
        self, file_id: int, file: TrackFile, duration: float, started_at: float | None
    ) -> None:
        if not file.path.exists():
            # The track sent nothing recordable (no keyframe yet): no file, no entry.
            async with self._database.session() as db, db.begin():
                stored = await db.get(RecordingFile, file_id)
                if stored is not None:
                    await db.delete(stored)
            log.info(
                "recording %d: track %s sent no media, no file", self._recording_id, file.track_id
            )
            return
        digest = await asyncio.to_thread(recordings.sha256_file, file.path)
        size = file.path.stat().st_size
        async with self._database.session() as db, db.begin():
            await recordings.close_file(
                db,
                file_id,
                size=size,
                sha256=digest,
                duration=duration,
                media_started_at=(
                    datetime.fromtimestamp(started_at, UTC) if started_at is not None else None
                ),
            )


class RecordingControl:
    """Hosts start and stop recordings of live rooms on this node."""

    def __init__(self, database: Database, data_dir: Path, metrics: Metrics) -> None:
        self._database = database
        self.root = data_dir / RECORDINGS_DIR
        self._metrics = metrics
        self._active: dict[str, tuple[int, RoomRecorder]] = {}
        # Rooms whose recording a crash cut off: it goes on (a new segment) when they are live.
        self._resume: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def _process_later(self, recording_id: int) -> None:
        task = asyncio.ensure_future(self._post_process(recording_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop post-processing (a recording left processing is taken up at the next start)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _post_process(self, recording_id: int) -> None:
        """Make the composite file, showing progress; retried once, then failed with why.
        The per-track files stay available whatever happens here."""
        reason = ""
        for attempt in range(1, COMPOSE_ATTEMPTS + 1):
            try:
                await self._compose(recording_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc).splitlines()[0][:400] if str(exc) else type(exc).__name__
                log.warning(
                    "recording %d: composing failed (attempt %d of %d): %s",
                    recording_id,
                    attempt,
                    COMPOSE_ATTEMPTS,
                    reason,
                )
                continue
            self._metrics.recordings.labels(event="ready").inc()
            return
        async with self._database.session() as db, db.begin():
            await recordings.mark_failed(db, recording_id, f"composing: {reason}")
        self._metrics.recordings.labels(event="failed").inc()
        log.error("recording %d failed: composing: %s", recording_id, reason)

    async def _compose(self, recording_id: int) -> None:
        async with self._database.session() as db:
            recording = await recordings.get_recording(db, recording_id)
        inputs = []
        for file in recording.files:
            path = self.root / file.path
            if file.kind.value != "track" or file.closed_at is None or not path.exists():
                continue
            began = file.media_started_at or file.created_at
            inputs.append(
                ComposeInput(
                    path=path,
                    kind=file.media_kind.value,
                    start=max(0.0, (began - recording.started_at).total_seconds()),
                    label=file.participant_name or "",
                )
            )
        if not inputs:
            raise ValueError("nothing was recorded (no track sent media)")
        output = self.root / str(recording_id) / COMPOSITE_NAME
        loop = asyncio.get_running_loop()
        shown = [-1]

        def progress(fraction: float) -> None:
            # Called from the composing thread; the catalogue is written on the loop, in 5 %
            # steps so the archive shows it moving without a write per call.
            percent = min(99, int(fraction * 100) // 5 * 5)
            if percent > shown[0]:
                shown[0] = percent
                asyncio.run_coroutine_threadsafe(self._progress(recording_id, percent), loop)

        result = await asyncio.to_thread(compose, inputs, output, progress=progress)
        digest = await asyncio.to_thread(recordings.sha256_file, output)
        async with self._database.session() as db, db.begin():
            stored = await recordings.add_file(
                db,
                recording_id,
                kind="composite",
                segment=recording.segments,
                path=str(output.relative_to(self.root)),
            )
            await recordings.close_file(
                db, stored.id, size=output.stat().st_size, sha256=digest, duration=result.duration
            )
            await recordings.mark_ready(db, recording_id)
        if result.damaged:
            log.warning(
                "recording %d: damaged inputs used as far as they decode: %s",
                recording_id,
                ", ".join(result.damaged),
            )
        log.info(
            "recording %d ready: composite %.1f s, %d tiles at most",
            recording_id,
            result.duration,
            result.max_tiles,
        )

    async def _progress(self, recording_id: int, percent: int) -> None:
        try:
            async with self._database.session() as db, db.begin():
                await recordings.set_progress(db, recording_id, percent)
        except Exception as exc:  # progress is advisory
            log.debug("recording %d: progress not saved: %s", recording_id, exc)

    async def recover(self) -> int:
        """At start: recordings the last run left going are interrupted, their partial files
        closed (size and SHA-256 of what reached the disk); they resume when the room is live
        here again. Returns how many."""
        async with self._database.session() as db, db.begin():
            cut = (
                (
                    await db.execute(
                        select(Recording)
                        .options(selectinload(Recording.room), selectinload(Recording.files))
                        .where(Recording.state == RecordingState.RECORDING)
                    )
                )
                .scalars()
                .all()
            )
            unfinished = (
                (
                    await db.execute(
                        select(Recording.id).where(Recording.state == RecordingState.PROCESSING)
                    )
                )
                .scalars()
                .all()
            )
            for recording_id in unfinished:
                log.info("recording %d: post-processing taken up again", recording_id)
                self._process_later(recording_id)
            for recording in cut:
                await recordings.mark_interrupted(
                    db, recording.id, "the node stopped while recording"
                )
                for file in recording.files:
                    if file.closed_at is None:
                        await self._close_left_open(db, file)
                self._resume[recording.room.slug] = recording.id
                self._metrics.recordings.labels(event="interrupted").inc()
                log.warning(
                    "recording %d of room=%s interrupted by the last stop; resumes when the "
                    "room is live again",
                    recording.id,
                    recording.room.slug,
                )
        return len(cut)

    async def _close_left_open(self, db: AsyncSession, file: RecordingFile) -> None:
        path = self.root / file.path
        if not path.exists():
            await db.delete(file)
            return
        digest = await asyncio.to_thread(recordings.sha256_file, path)
        await recordings.close_file(
            db, file.id, size=path.stat().st_size, sha256=digest, duration=None
        )

    async def room_live(self, room: Room) -> None:
        """Someone entered `room` here: a recording cut off by a crash goes on now."""
        recording_id = self._resume.pop(room.name, None)
        if recording_id is None or room.recorder is not None:
            return
        async with self._database.session() as db, db.begin():
            segment = await recordings.resume_recording(db, recording_id)
        self._attach(room, recording_id, segment)
        self._metrics.recordings.labels(event="resumed").inc()
        log.info(
            "recording resumed room=%s recording=%d segment=%d", room.name, recording_id, segment
        )

    def _attach(self, room: Room, recording_id: int, segment: int) -> None:
        recorder = RoomRecorder(
            room.name,
            self.root / str(recording_id),
            StoreCatalogue(self._database, recording_id, segment, self.root),
            segment,
        )
        self._active[room.name] = (recording_id, recorder)
        room.recorder = recorder
        for participant in list(room.participants.values()):
            for track in participant.tracks:
                recorder.track_added(participant, track)

    def recording_id(self, room: str) -> int | None:
        active = self._active.get(room)
        return active[0] if active else None

    async def start(self, room: Room, by_account_id: int | None, by: str) -> int:
        """Start recording `room` now (`by` names who, for the log); Conflict when it already
        is."""
        if room.name in self._active or room.recorder is not None:
            raise Conflict("the room is already being recorded")
        async with self._database.session() as db, db.begin():
            record = await recordings.start_recording(db, room.name, by_account_id=by_account_id)
            recording_id = record.id
        self._resume.pop(room.name, None)
        self._attach(room, recording_id, 1)
        self._metrics.recordings.labels(event="started").inc()
        log.info("recording started room=%s recording=%d by=%s", room.name, recording_id, by)
        return recording_id

    async def stop(self, room: Room, by: str) -> int:
        """Stop recording `room`: every file closed and catalogued; Conflict when it is not."""
        active = self._active.pop(room.name, None)
        if active is None:
            raise Conflict("the room is not being recorded")
        recording_id, recorder = active
        room.recorder = None
        try:
            await recorder.stop()
        except Exception as exc:
            async with self._database.session() as db, db.begin():
                await recordings.mark_failed(db, recording_id, f"closing the files: {exc}")
            self._metrics.recordings.labels(event="failed").inc()
            log.exception(
                "recording room=%s recording=%d: files not closed", room.name, recording_id
            )
            raise
        async with self._database.session() as db, db.begin():
            await recordings.stop_recording(db, recording_id, datetime.now(UTC))
        self._process_later(recording_id)
        self._metrics.recordings.labels(event="stopped").inc()
        log.info(
            "recording stopped room=%s recording=%d by=%s",
            room.name,
            recording_id,
            by,
        )
        return recording_id
