"""`giaoban record`: a recording worker taking jobs from Redis (DESIGN §1, §8).

A host starts a recording on a node (GIAOBAN_RECORDER=workers): the node catalogues it and puts
a job on the queue. One worker takes it, joins the live room as its hidden recorder
(recording/room_client.py) and writes each track with the same `RoomRecorder` the node uses in
the embedded default. The worker refreshes its hold on the job while it works; if it dies, the
node marks the recording interrupted and another worker (or this one restarted under the same
name) takes the job up as a new segment. After the stop, the worker composes the recording and
only then marks the job done, so a composition cut off by a crash is made again.

The worker writes into the same recordings folder the nodes serve (GIAOBAN_DATA_DIR, shared
storage when they run on different machines) and into the same database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import socketio
from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from recording.jobs import JobQueue, Lease, RecordingJob
from recording.recorder import RoomRecorder
from recording.room_client import JoinRefused, RoomClient
from server import recordings
from server.config import Config
from server.errors import ConfigError, Conflict, NotFound
from server.invitations import mint_recorder_pass
from server.memory_trim import MemoryTrimmer
from server.metrics import recording_counter
from server.recording_control import (
    RECORDINGS_DIR,
    PostProcessing,
    StoreCatalogue,
    close_left_open,
)
from server.store.db import Database
from server.store.models import RecordingState

log = logging.getLogger(__name__)

# Seconds between attempts to join a room that is not live (its node restarting, say).
JOIN_RETRY = 2.0
QUEUE_RETRY = 1.0  # seconds between attempts to reach an unreachable job queue
DEFAULT_CAPACITY = 8  # recordings one worker carries at once
ACTIVE = (RecordingState.RECORDING, RecordingState.INTERRUPTED)


def default_worker_name() -> str:
    """The host's name: a worker restarted on the same host gets its unfinished job back at
    once. Several workers on one host need a name each (`--name`)."""
    return f"{socket.gethostname()}-recorder"


class LostJob(Exception):
    """Another worker holds this job now (this one was too slow to refresh it)."""


class RecordWorker:
    """Takes recording jobs one at a time, until `stop()`."""

    def __init__(
        self,
        *,
        name: str,
        jobs: JobQueue,
        database: Database,
        data_dir: Path,
        secret_key: bytes,
        dead_after: float,
        capacity: int = DEFAULT_CAPACITY,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity
        self._jobs = jobs
        self._database = database
        self.root = data_dir / RECORDINGS_DIR
        self._key = secret_key
        self._dead_after = dead_after
        self.registry = registry or CollectorRegistry()
        self.recordings = recording_counter(self.registry)
        self.jobs_done = Counter(
            "giaoban_recording_jobs",
            "Recording jobs finished by this worker",
            registry=self.registry,
        )
        self._post = PostProcessing(database, self.root, self.recordings)
        self._stopping = asyncio.Event()
        self._current: set[int] = set()  # the recordings in hand
        self._busy_changed = asyncio.Event()

    def stop(self) -> None:
        """Finish the current wait; a job in hand is left held (another worker takes it)."""
        self._stopping.set()

    async def run(self) -> None:
        """Take and carry out jobs until stopped, telling the nodes it is alive meanwhile."""
        log.info("recording worker %s waiting for jobs", self.name)
        announcing = asyncio.ensure_future(self._announce())
        try:
            await self._take_jobs()
        finally:
            announcing.cancel()
            await asyncio.gather(announcing, return_exceptions=True)

    async def _announce(self) -> None:
        # Nodes start recordings only while some worker has room (RecordingControl.start).
        # Ends on `_stopping` as well as on cancel (see `_keep`).
        while not self._stopping.is_set():
            info = {
                "recordings": ",".join(str(r) for r in sorted(self._current)),
                "capacity": str(self.capacity),
            }
            try:
                await self._jobs.announce(self.name, info)
            except (RedisError, OSError) as exc:
                log.debug("recording worker %s: not announced: %s", self.name, exc)
            # Again after a third of dead_after, or at once when the jobs in hand change.
            self._busy_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._dead_after / 3):
                    await self._busy_changed.wait()

    async def _take_jobs(self) -> None:
        # Up to `capacity` jobs at once: recording is remuxing, cheap; one meeting's job must
        # not wait for another meeting to end.
        running: dict[asyncio.Task[None], Lease] = {}
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not stopping.done():
                if len(running) >= self.capacity:
                    await asyncio.wait({*running, stopping}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    lease = await self._jobs.take(
                        self.name,
                        timeout=min(5.0, self._dead_after),
                        holding={held.job_id for held in running.values()},
                    )
                except (RedisError, OSError) as exc:
                    log.warning(
                        "recording worker %s: job queue unreachable, retrying: %s", self.name, exc
                    )
                    await asyncio.sleep(QUEUE_RETRY)
                    continue
                if lease is None:
                    continue
                task = asyncio.ensure_future(self._carry_out_logged(lease))
                running[task] = lease
                task.add_done_callback(lambda done: running.pop(done, None))
        finally:
            stopping.cancel()
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _carry_out_logged(self, lease: Lease) -> None:
        try:
            await self.carry_out(lease)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left held: taken up again later. A pause keeps a job that always fails from
            # spinning (it comes back to this worker first).
            log.exception("recording worker %s: job %s failed", self.name, lease.job_id)
            await asyncio.sleep(JOIN_RETRY)

    async def carry_out(self, lease: Lease) -> None:
        """Record and compose one job, holding it meanwhile; done only when finished."""
        job = lease.job
        log.info(
            "worker %s took recording %d of room=%s%s",
            self.name,
            job.recording_id,
            job.room,
            " (from a worker that stopped)" if lease.reclaimed else "",
        )
        if not await self._claim(lease):
            return
        try:
            await self._carry_out_claimed(lease)
        finally:
            # Whoever takes this job (or another of the recording) next claims it at once.
            with contextlib.suppress(RedisError, OSError):
                await self._jobs.release(job.recording_id, self.name)

    async def _claim(self, lease: Lease) -> bool:
        """Hold the recording itself. A second job of a recording being carried out (a node
        queued it again after Redis lost jobs, say) waits, its lease kept, until the first is
        finished; then it finds the recording done. False: the lease was lost meanwhile."""
        recording_id = lease.job.recording_id
        while recording_id in self._current or not await self._jobs.claim(recording_id, self.name):
            log.info("recording %d is being carried out by another job: waiting", recording_id)
            await asyncio.sleep(self._dead_after / 3)
            if not await self._jobs.keep(lease):
                return False
        return True

    async def _carry_out_claimed(self, lease: Lease) -> None:
        job = lease.job
        work = asyncio.ensure_future(self._job(job))
        finished = asyncio.Event()
        keeper = asyncio.ensure_future(self._keep(lease, finished))
        self._current.add(job.recording_id)
        self._busy_changed.set()
        try:
            await asyncio.wait({work, keeper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._current.discard(job.recording_id)
            self._busy_changed.set()
            finished.set()
            for task in (work, keeper):
                task.cancel()
            results = await asyncio.gather(work, keeper, return_exceptions=True)
        if isinstance(results[1], LostJob):
            log.warning(
                "worker %s lost recording %d to another worker", self.name, job.recording_id
            )
            return
        if isinstance(results[0], BaseException):
            raise results[0]
        await self._jobs.done(lease)
        self.jobs_done.inc()
        log.info("worker %s finished recording %d", self.name, job.recording_id)

    async def _keep(self, lease: Lease, finished: asyncio.Event) -> None:
        # Ends on `finished`, not only on cancel: redis-py has been known to swallow a
        # cancellation that lands inside a command (redis/redis-py#2028, #2551).
        kept = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._dead_after / 3):
                    await finished.wait()
            if finished.is_set():
                return
            try:
                held = await self._jobs.keep(lease)
                if not held or not await self._jobs.claim(lease.job.recording_id, self.name):
                    raise LostJob()
                kept = time.monotonic()
            except (RedisError, OSError) as exc:
                # Past `dead_after` another worker may have taken the job: stop writing.
                if time.monotonic() - kept >= self._dead_after:
                    raise LostJob() from exc
                log.warning("recording %d: job not refreshed: %s", lease.job.recording_id, exc)

    async def _job(self, job: RecordingJob) -> None:
        node_url = job.node_url  # where the room's media is; follows it if the room moves
        while True:
            async with self._database.session() as db:
                try:
                    recording = await recordings.get_recording(db, job.recording_id)
                except NotFound:
                    log.warning("recording %d is gone from the catalogue", job.recording_id)
                    return
                state = recording.state
                ended = recording.room.ended_at is not None
            if state is RecordingState.PROCESSING:
                await self._post.run(job.recording_id)
                return
            if state not in ACTIVE:
                return  # ready or failed already
            if ended:
                # The meeting ended while nobody recorded it (its node gone, say).
                async with self._database.session() as db, db.begin():
                    await close_left_open(db, self.root, recording)
                    await recordings.stop_recording(db, job.recording_id, datetime.now(UTC))
                continue
            why, node_url = await self._record_once(job, node_url)
            if why is None:
                await asyncio.sleep(JOIN_RETRY)

    async def _record_once(self, job: RecordingJob, node_url: str) -> tuple[str | None, str]:
        """Join the room and record one segment: why it ended (None if not let in), and the
        node to try next (another, when the room's home moved)."""
        client = RoomClient(
            node_url,
            job.room,
            mint_recorder_pass(self._key, room=job.room, recording_id=job.recording_id),
        )
        try:
            try:
                await client.join()
            except JoinRefused as refused:
                log.info("recording %d: not let in yet: %s", job.recording_id, refused)
                if refused.home is not None:
                    return None, refused.home
                return None, node_url
            except (socketio.exceptions.ConnectionError, OSError) as exc:
                log.info("recording %d: node %s not reachable: %s", job.recording_id, node_url, exc)
                return None, job.node_url
            try:
                segment = await self._segment(job.recording_id)
            except Conflict as exc:  # stopped between the join and now
                log.info("recording %d: %s", job.recording_id, exc)
                return "stopped", node_url
            recorder = RoomRecorder(
                job.room,
                self.root / str(job.recording_id),
                StoreCatalogue(self._database, job.recording_id, segment, self.root),
                segment,
            )
            log.info(
                "worker %s recording room=%s recording=%d segment=%d",
                self.name,
                job.room,
                job.recording_id,
                segment,
            )
            try:
                why = await client.record(recorder)
            finally:
                # Shielded: a worker told to stop still closes what it wrote.
                await asyncio.shield(recorder.stop())
            log.info("recording %d segment %d ended: %s", job.recording_id, segment, why)
            return why, node_url
        finally:
            await client.close()

    async def _segment(self, recording_id: int) -> int:
        """The segment this recorder writes: the current one if nothing is in it yet, else the
        next (a recording cut off before: interrupted, left-open files closed)."""
        async with self._database.session() as db, db.begin():
            recording = await recordings.get_recording(db, recording_id)
            if recording.state not in ACTIVE:
                raise Conflict(f"recording {recording_id} is {recording.state}")
            began = any(f.segment == recording.segments for f in recording.files)
            if recording.state is RecordingState.RECORDING and not began:
                return recording.segments
            if recording.state is RecordingState.RECORDING:
                await recordings.mark_interrupted(db, recording_id, "its recorder stopped")
            await close_left_open(db, self.root, recording)
            segment = await recordings.resume_recording(db, recording_id)
        self.recordings.labels(event="resumed").inc()
        return segment


async def serve_worker(
    config: Config, name: str, port: int | None, capacity: int = DEFAULT_CAPACITY
) -> None:
    """Run a worker until SIGTERM or SIGINT, with /healthz and /metrics on `port` if given."""
    import redis.asyncio as aioredis
    from aiohttp import web
    from prometheus_client import generate_latest

    from recording.jobs import RedisJobQueue
    from server.secret_key import load_secret_key
    from server.sfu.ice import restrict_host_addresses
    from server.store.db import database_url

    if not config.redis_url:
        raise ConfigError("giaoban record takes its jobs from Redis: set REDIS_URL")
    if config.ice_host_addresses:
        restrict_host_addresses(config.ice_host_addresses)
    client = aioredis.from_url(config.redis_url)
    database = Database(database_url(config))
    worker = RecordWorker(
        name=name,
        jobs=RedisJobQueue(client, config.redis_prefix, dead_after=config.recorder_dead_after),
        database=database,
        data_dir=config.data_dir,
        secret_key=load_secret_key(config),
        dead_after=config.recorder_dead_after,
        capacity=capacity,
    )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    runner: web.AppRunner | None = None
    if port is not None:
        app = web.Application()

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(worker.registry), content_type="text/plain", charset="utf-8"
            )

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "worker": worker.name})

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, config.host, port).start()
    # As in the node: start-up objects out of the collector's view, no long pauses mid-recording.
    gc.collect()
    gc.freeze()
    trimmer = MemoryTrimmer()  # as in the node: freed heap memory back to the system
    trimmer.start()
    try:
        await worker.run()
    finally:
        await trimmer.close()
        if runner is not None:
            await runner.cleanup()
        await database.close()
        await client.aclose()
        log.info("recording worker %s stopped", name)
