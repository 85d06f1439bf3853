"""Starting and stopping the recording of a live room, and its catalogue entries.

In the embedded default the recorder runs inside the node (DESIGN §1): a `RoomRecorder` set on
the live room as its track observer. With GIAOBAN_RECORDER=workers the node only keeps the
catalogue and puts a job on the queue; a `giaoban record` worker joins the room as its hidden
recorder (server/record_worker.py). Files go to `DATA_DIR/recordings/<recording id>/`; the
catalogue (server/recordings.py) gets each file with its size and SHA-256 when it closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from recording.compose import ComposeInput, compose
from recording.jobs import JobQueue, LocalJobQueue, RecordingJob
from recording.recorder import RoomRecorder, TrackFile
from server import recordings
from server.admission import Entrant
from server.errors import Conflict, Forbidden, NoRecorder
from server.metrics import Metrics
from server.room import Room
from server.store.db import Database
from server.store.models import Recording, RecordingFile, RecordingState

log = logging.getLogger(__name__)

RECORDINGS_DIR = "recordings"
COMPOSITE_NAME = "composite.mp4"
COMPOSE_ATTEMPTS = 2
# Seconds between a workers' node's checks that every unfinished recording still has a job.
JOB_CHECK_INTERVAL = 30.0
# The node's own composing jobs are held by the node itself: nobody takes them over.
LOCAL_HOLD = 24 * 3600.0


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


class PostProcessing:
    """Makes the composite file of a stopped recording, showing progress in the catalogue;
    retried once, then failed with why. The per-track files stay whatever happens."""

    def __init__(self, database: Database, root: Path, counter: Counter) -> None:
        self._database = database
        self.root = root
        self._counter = counter  # giaoban_recordings, by event

    async def run(self, recording_id: int) -> bool:
        """Compose `recording_id` (processing → ready, or failed); whether it is ready."""
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
            self._counter.labels(event="ready").inc()
            return True
        async with self._database.session() as db, db.begin():
            await recordings.mark_failed(db, recording_id, f"composing: {reason}")
        self._counter.labels(event="failed").inc()
        log.error("recording %d failed: composing: %s", recording_id, reason)
        return False

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


async def close_left_open(db: AsyncSession, root: Path, recording: Recording) -> int:
    """Catalogue the files a lost recorder left open: size and SHA-256 of what reached the
    disk (an entry whose file never appeared goes). Returns how many were closed."""
    closed = 0
    for file in recording.files:
        if file.closed_at is not None:
            continue
        path = root / file.path
        if not path.exists():
            await db.delete(file)
            continue
        digest = await asyncio.to_thread(recordings.sha256_file, path)
        await recordings.close_file(
            db, file.id, size=path.stat().st_size, sha256=digest, duration=None
        )
        closed += 1
    return closed


def has_room(worker: Mapping[str, str]) -> bool:
    """Whether a worker (as it announced itself) can take one more recording."""
    recordings = [r for r in worker.get("recordings", "").split(",") if r]
    try:
        capacity = int(worker.get("capacity", "1"))
    except ValueError:
        capacity = 1
    return len(recordings) < capacity


class RecordingControl:
    """Hosts start and stop recordings of live rooms on this node: recorded here (`jobs` is
    None) or by `giaoban record` workers taking jobs from `jobs`."""

    def __init__(
        self,
        database: Database,
        data_dir: Path,
        metrics: Metrics,
        jobs: JobQueue | None = None,
        node_url: str = "",
    ) -> None:
        self._database = database
        self.root = data_dir / RECORDINGS_DIR
        self._metrics = metrics
        self.jobs = jobs
        self._node_url = node_url
        self.post_processing = PostProcessing(database, self.root, metrics.recordings)
        self._active: dict[str, tuple[int, RoomRecorder]] = {}
        # Rooms whose recording a crash cut off: it goes on (a new segment) when they are live.
        self._resume: dict[str, int] = {}
        # Embedded default: composing jobs queue in process and run one at a time, so that
        # several recordings stopping together do not take every core from the meetings.
        self._compose_jobs = LocalJobQueue(dead_after=LOCAL_HOLD) if jobs is None else None
        self._composer: asyncio.Task[None] | None = None
        self._job_checker: asyncio.Task[None] | None = None
        # Set by signaling: takes a room's hidden recorders out once its recording stops.
        self.dismiss_recorders: Callable[[Room], Awaitable[None]] | None = None

    @property
    def by_workers(self) -> bool:
        return self.jobs is not None

    async def _process_later(self, recording_id: int, room: str) -> None:
        assert self._compose_jobs is not None
        await self._compose_jobs.put(RecordingJob(recording_id, room, self._node_url))
        if self._composer is None:
            self._composer = asyncio.ensure_future(self._compose_queued())

    async def _compose_queued(self) -> None:
        assert self._compose_jobs is not None
        while True:
            lease = await self._compose_jobs.take("node", timeout=LOCAL_HOLD)
            if lease is None:
                continue
            try:
                await self.post_processing.run(lease.job.recording_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("recording %d: post-processing failed", lease.job.recording_id)
            finally:
                await self._compose_jobs.done(lease)

    async def close(self) -> None:
        """Stop post-processing (a recording left processing is taken up at the next start)."""
        tasks = [t for t in (self._composer, self._job_checker) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a cancellation swallowed inside a Redis command must not hold the
            # node's shutdown (see server/record_worker.py `_keep`).
            await asyncio.wait(tasks, timeout=5)
        for queue in (self.jobs, self._compose_jobs):
            if queue is not None:
                await queue.close()

    async def recover(self) -> int:
        """At start: recordings the last run left going are interrupted, their partial files
        closed (size and SHA-256 of what reached the disk); they resume when the room is live
        here again. Returns how many. With workers, the workers own that: this only queues again
        what has no job any more (see `_queue_again`)."""
        if self.jobs is not None:
            await self._queue_again(self.jobs)
            # Redis may lose its data while this node runs, too: look again now and then.
            self._job_checker = asyncio.ensure_future(self._check_jobs(self.jobs))
            return 0
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
                        select(Recording)
                        .options(selectinload(Recording.room))
                        .where(Recording.state == RecordingState.PROCESSING)
                    )
                )
                .scalars()
                .all()
            )
            for left in unfinished:
                log.info("recording %d: post-processing taken up again", left.id)
                await self._process_later(left.id, left.room.slug)
            for recording in cut:
                await recordings.mark_interrupted(
                    db, recording.id, "the node stopped while recording"
                )
                await close_left_open(db, self.root, recording)
                self._resume[recording.room.slug] = recording.id
                self._metrics.recordings.labels(event="interrupted").inc()
                log.warning(
                    "recording %d of room=%s interrupted by the last stop; resumes when the "
                    "room is live again",
                    recording.id,
                    recording.room.slug,
                )
        return len(cut)

    async def _check_jobs(self, jobs: JobQueue) -> None:
        while True:
            await asyncio.sleep(JOB_CHECK_INTERVAL)
            try:
                await self._queue_again(jobs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or the database away: the next round retries
                log.warning("recording jobs not checked: %s", exc)

    async def _queue_again(self, jobs: JobQueue) -> int:
        """Recordings going on or waiting to be composed whose job is gone (a Redis that
        restarted without its data): queued again, so nothing stays unfinished. Returns how
        many. A job queued twice is harmless: workers claim the recording itself."""
        async with self._database.session() as db:
            unfinished = (
                (
                    await db.execute(
                        select(Recording)
                        .options(selectinload(Recording.room))
                        .where(Recording.state.in_((*recordings.ACTIVE, RecordingState.PROCESSING)))
                    )
                )
                .scalars()
                .all()
            )
        if not unfinished:
            return 0
        queued = {job.recording_id for job in await jobs.jobs()}
        lost = [r for r in unfinished if r.id not in queued]
        for recording in lost:
            await jobs.put(RecordingJob(recording.id, recording.room.slug, self._node_url))
            log.warning(
                "recording %d of room=%s had no job (lost with Redis?): queued again",
                recording.id,
                recording.room.slug,
            )
        return len(lost)

    async def room_live(self, room: Room) -> None:
        """Someone entered `room` here: a recording cut off by a crash goes on now (here), or
        its indicator comes back (workers: the recording never stopped in the catalogue)."""
        if self.by_workers:
            async with self._database.session() as db:
                going = await recordings.active_recording(db, room.name)
            if going is not None:
                room.recording_id = going.id
            return
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
        room.recording_id = recording_id
        for participant in room.people:
            for track in participant.tracks:
                recorder.track_added(participant, track)

    async def start(self, room: Room, by_account_id: int | None, by: str) -> int:
        """Start recording `room` now (`by` names who, for the log); Conflict when it already
        is."""
        if room.recording_id is not None or room.recorder is not None:
            raise Conflict("the room is already being recorded")
        if self.jobs is not None:
            # Started anyway, the indicator would say "recording" while nothing is written.
            workers = await self.jobs.workers()
            if not workers:
                raise NoRecorder("start `giaoban record` with this cluster's REDIS_URL")
            if not any(has_room(info) for info in workers.values()):
                raise NoRecorder("every recording worker is busy: start another one")
        async with self._database.session() as db, db.begin():
            record = await recordings.start_recording(db, room.name, by_account_id=by_account_id)
            recording_id = record.id
        self._resume.pop(room.name, None)
        if self.jobs is not None:
            room.recording_id = recording_id
            await self.jobs.put(RecordingJob(recording_id, room.name, self._node_url))
        else:
            self._attach(room, recording_id, 1)
        self._metrics.recordings.labels(event="started").inc()
        log.info(
            "recording started room=%s recording=%d by=%s recorder=%s",
            room.name,
            recording_id,
            by,
            "worker" if self.by_workers else "node",
        )
        return recording_id

    async def stop(self, room: Room, by: str) -> int:
        """Stop recording `room`: every file closed and catalogued (by this node, or by the
        worker once told); Conflict when it is not being recorded."""
        recording_id = room.recording_id
        if recording_id is None:
            raise Conflict("the room is not being recorded")
        room.recording_id = None
        room.recording_paused = False
        if self.by_workers:
            async with self._database.session() as db, db.begin():
                await recordings.stop_recording(db, recording_id, datetime.now(UTC))
            # The worker closes its files, then composes: told by being dismissed.
            if self.dismiss_recorders is not None:
                await self.dismiss_recorders(room)
        else:
            await self._stop_here(room, recording_id)
        self._metrics.recordings.labels(event="stopped").inc()
        log.info("recording stopped room=%s recording=%d by=%s", room.name, recording_id, by)
        return recording_id

    async def _stop_here(self, room: Room, recording_id: int) -> None:
        self._active.pop(room.name, None)
        recorder, room.recorder = room.recorder, None
        if isinstance(recorder, RoomRecorder):
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
        await self._process_later(recording_id, room.name)

    def recorder_may_join(self, room: Room, entrant: Entrant) -> None:
        """A worker's recorder may join `room` only for the recording going on there."""
        if not self.by_workers:
            raise Forbidden("this node records its meetings itself (GIAOBAN_RECORDER=node)")
        if room.recording_id is None or room.recording_id != entrant.recording_id:
            raise Conflict(
                f"recording {entrant.recording_id} is not going on in room {room.name!r}"
            )

    async def recorder_lost(self, room: Room, entrant: Entrant) -> bool:
        """A worker's recorder left while its recording goes on: interrupted in the catalogue
        (never dropped); the job stays held, and a worker takes it up as a new segment.
        Whether nothing records the room now."""
        recording_id = entrant.recording_id
        if recording_id is None or room.recording_id != recording_id:
            return False
        if any(p.entrant and p.entrant.recording_id == recording_id for p in room.recorders):
            return False  # a new recorder of the same recording is already in
        async with self._database.session() as db, db.begin():
            await recordings.mark_interrupted(db, recording_id, "the recorder stopped recording")
        self._metrics.recordings.labels(event="interrupted").inc()
        log.warning(
            "recording %d of room=%s interrupted: its recorder left; a worker takes it up again",
            recording_id,
            room.name,
        )
        return True
