"""The recording job queue: hosts start a recording on a node, a recording worker takes the job.

One seam (`JobQueue`), two implementations: `LocalJobQueue` keeps the jobs in this process (the
embedded default, where the node records and composes itself: its composing jobs queue there
and run one at a time), and `RedisJobQueue` shares them through a Redis stream and consumer
group, so that separate `giaoban record` workers take them (GIAOBAN_RECORDER=workers; the
choice is made in server/app.py). Either way exactly one worker holds a job at a time, a
holder must `keep` its lease at least every `dead_after` seconds, and a lease not kept that
long is taken over by the next worker that asks (`Lease.reclaimed`). Limits: one Redis server
(not Redis Cluster), and leases are timed by Redis's clock (by this process's in local mode).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

log = logging.getLogger(__name__)

_FIELDS = ("recording_id", "room", "node_url")


def _text(value: str | bytes) -> str:
    # The client may or may not use decode_responses; a bad byte is a ValueError either way.
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class RecordingJob:
    """Record room `room` whose media is on the node at `node_url` into recording `recording_id`."""

    recording_id: int
    room: str
    node_url: str

    def to_fields(self) -> dict[str, str]:
        """The job as flat string fields (a stream entry for XADD)."""
        return {
            "recording_id": str(self.recording_id),
            "room": self.room,
            "node_url": self.node_url,
        }

    @classmethod
    def from_fields(cls, fields: Mapping[str | bytes, str | bytes]) -> RecordingJob:
        """The job from `to_fields` output (str or bytes); ValueError on a bad or missing field."""
        try:
            text = {_text(k): _text(v) for k, v in fields.items()}
        except (AttributeError, TypeError) as exc:
            raise ValueError(f"recording job fields are not strings: {exc}") from exc
        missing = [name for name in _FIELDS if not text.get(name)]
        if missing:
            raise ValueError(f"recording job without {', '.join(missing)}: {text!r}")
        raw_id = text["recording_id"]
        try:
            recording_id = int(raw_id)
        except ValueError:
            raise ValueError(f"recording job with a bad recording_id {raw_id!r}") from None
        # Only the form to_fields writes: " 7", "07" or "٧" would mean another writer went wrong.
        if str(recording_id) != raw_id:
            raise ValueError(f"recording job with a bad recording_id {raw_id!r}")
        return cls(recording_id=recording_id, room=text["room"], node_url=text["node_url"])


@dataclass(frozen=True)
class Lease:
    """A job held by `worker`; `reclaimed` when taken over from a worker that stopped keeping it."""

    job: RecordingJob
    job_id: str
    worker: str
    reclaimed: bool


class JobQueue(Protocol):
    """Recording jobs handed to exactly one worker at a time, with leases kept alive by `keep`."""

    async def put(self, job: RecordingJob) -> str:
        """Queue `job`; returns its job id."""
        ...

    async def take(
        self, worker: str, timeout: float, holding: Collection[str] = ()
    ) -> Lease | None:
        """Wait up to `timeout` s: own held job, else a dead holder's, else a new one; None.
        `holding`: job ids this worker is carrying out now (never handed to it again)."""
        ...

    async def keep(self, lease: Lease) -> bool:
        """Refresh the lease; False when `lease.worker` no longer holds the job (taken, done)."""
        ...

    async def done(self, lease: Lease) -> None:
        """The job is finished: it is never handed out again."""
        ...

    async def pending(self) -> int:
        """Jobs put and not done, queued or held."""
        ...

    async def announce(self, worker: str, info: Mapping[str, str]) -> None:
        """`worker` is alive (for `dead_after` seconds from now), with `info` to show."""
        ...

    async def workers(self) -> dict[str, dict[str, str]]:
        """The workers announced within the last `dead_after` seconds, with their info."""
        ...

    async def jobs(self) -> list[RecordingJob]:
        """Every job put and not done (queued or held)."""
        ...

    async def claim(self, recording_id: int, worker: str) -> bool:
        """Hold the recording itself for `dead_after` seconds (again, if `worker` holds it):
        whether `worker` holds it now. Two jobs for one recording never run at once."""
        ...

    async def release(self, recording_id: int, worker: str) -> None:
        """Let go of the recording (only if `worker` holds it)."""
        ...

    async def close(self) -> None:
        """Stop handing out jobs: later and waiting `take` calls return None."""
        ...


def _log_taken(lease: Lease, how: str) -> None:
    job = lease.job
    log.info(
        "recording job %s %s by worker %s: recording %d of room %s on %s",
        lease.job_id,
        how,
        lease.worker,
        job.recording_id,
        job.room,
        job.node_url,
    )


def _log_put(job_id: str, job: RecordingJob) -> None:
    log.info(
        "recording job %s put: recording %d of room %s on %s",
        job_id,
        job.recording_id,
        job.room,
        job.node_url,
    )


def _log_done(lease: Lease) -> None:
    log.info(
        "recording job %s done by worker %s: recording %d of room %s",
        lease.job_id,
        lease.worker,
        lease.job.recording_id,
        lease.job.room,
    )


# --------------------------------------------------------------------------- in process


@dataclass
class _Hold:
    worker: str
    kept_at: float  # time.monotonic() of the take or the last keep


class LocalJobQueue:
    """Jobs in this process (no Redis); the same leases, take-over and order as `RedisJobQueue`."""

    def __init__(self, dead_after: float = 15.0) -> None:
        self.dead_after = dead_after
        self._jobs: dict[str, RecordingJob] = {}  # put and not done
        self._queued: deque[str] = deque()  # never taken yet, oldest first
        self._held: dict[str, _Hold] = {}
        self._order: dict[str, int] = {}  # job id → put sequence, for oldest-first picks
        self._seq = itertools.count(1)
        self._changed = asyncio.Condition()
        self._closed = False
        self._alive: dict[str, tuple[float, dict[str, str]]] = {}  # worker → (until, info)
        self._claims: dict[int, tuple[str, float]] = {}  # recording → (worker, until)

    async def put(self, job: RecordingJob) -> str:
        """Queue `job`; returns its local job id."""
        seq = next(self._seq)
        job_id = f"local-{seq}"
        async with self._changed:
            self._jobs[job_id] = job
            self._order[job_id] = seq
            self._queued.append(job_id)
            self._changed.notify_all()
        _log_put(job_id, job)
        return job_id

    async def take(
        self, worker: str, timeout: float, holding: Collection[str] = ()
    ) -> Lease | None:
        """Wait up to `timeout` s: own held job, then a reclaimable one, then a new one."""
        deadline = time.monotonic() + max(0.0, timeout)
        async with self._changed:
            while not self._closed:
                now = time.monotonic()
                lease = self._pick(worker, now, holding)
                if lease is not None:
                    # A new lease is a new expiry: waiters recompute when to look again.
                    self._changed.notify_all()
                    return lease
                if now >= deadline:
                    return None
                # No polling: sleep until something changes, the earliest lease could be
                # reclaimed, or the caller's deadline.
                wake = min(deadline, self._earliest_expiry())
                try:
                    async with asyncio.timeout(max(0.0, wake - now)):
                        await self._changed.wait()
                except TimeoutError:
                    pass
        return None

    def _pick(self, worker: str, now: float, holding: Collection[str]) -> Lease | None:
        own = [
            job_id
            for job_id, hold in self._held.items()
            if hold.worker == worker and job_id not in holding
        ]
        if own:
            # A restarted worker keeps its name and gets its unfinished job back first.
            job_id = min(own, key=self._order.__getitem__)
            self._held[job_id].kept_at = now
            lease = Lease(self._jobs[job_id], job_id, worker, reclaimed=False)
            _log_taken(lease, "taken back")
            return lease
        dead = [
            job_id
            for job_id, hold in self._held.items()
            if now - hold.kept_at >= self.dead_after and job_id not in holding
        ]
        if dead:
            job_id = min(dead, key=self._order.__getitem__)
            previous = self._held[job_id].worker
            self._held[job_id] = _Hold(worker, now)
            lease = Lease(self._jobs[job_id], job_id, worker, reclaimed=True)
            _log_taken(lease, f"reclaimed from worker {previous}")
            return lease
        if self._queued:
            job_id = self._queued.popleft()
            self._held[job_id] = _Hold(worker, now)
            lease = Lease(self._jobs[job_id], job_id, worker, reclaimed=False)
            _log_taken(lease, "taken")
            return lease
        return None

    def _earliest_expiry(self) -> float:
        if not self._held:
            return float("inf")
        return min(hold.kept_at for hold in self._held.values()) + self.dead_after

    async def keep(self, lease: Lease) -> bool:
        """Refresh the lease; False when the job is done or held by another worker now."""
        hold = self._held.get(lease.job_id)
        if hold is None or hold.worker != lease.worker:
            return False
        hold.kept_at = time.monotonic()
        return True

    async def done(self, lease: Lease) -> None:
        """Forget the job: it is never handed out again."""
        if self._jobs.pop(lease.job_id, None) is None:
            return
        self._held.pop(lease.job_id, None)
        self._order.pop(lease.job_id, None)
        if lease.job_id in self._queued:
            self._queued.remove(lease.job_id)
        _log_done(lease)

    async def pending(self) -> int:
        """Jobs put and not done (queued or held)."""
        return len(self._jobs)

    async def announce(self, worker: str, info: Mapping[str, str]) -> None:
        """`worker` is alive for `dead_after` seconds from now."""
        self._alive[worker] = (time.monotonic() + self.dead_after, dict(info))

    async def workers(self) -> dict[str, dict[str, str]]:
        """The workers announced within the last `dead_after` seconds."""
        now = time.monotonic()
        for worker in [w for w, (until, _) in self._alive.items() if until <= now]:
            del self._alive[worker]
        return {worker: dict(info) for worker, (_, info) in self._alive.items()}

    async def jobs(self) -> list[RecordingJob]:
        """Every job put and not done, oldest first."""
        return [self._jobs[job_id] for job_id in sorted(self._jobs, key=self._order.__getitem__)]

    async def claim(self, recording_id: int, worker: str) -> bool:
        """Hold the recording for `dead_after` seconds unless another live worker does."""
        now = time.monotonic()
        holder = self._claims.get(recording_id)
        if holder is not None and holder[0] != worker and holder[1] > now:
            return False
        self._claims[recording_id] = (worker, now + self.dead_after)
        return True

    async def release(self, recording_id: int, worker: str) -> None:
        """Let go of the recording if `worker` holds it."""
        holder = self._claims.get(recording_id)
        if holder is not None and holder[0] == worker:
            del self._claims[recording_id]

    async def close(self) -> None:
        """Wake every waiting `take` with None; later takes return None at once."""
        async with self._changed:
            self._closed = True
            self._changed.notify_all()


# --------------------------------------------------------------------------- Redis

# KEYS[1] the stream. ARGV: group, worker, entry id. Refresh the lease only while `worker` still
# owns the entry: a bare XCLAIM would steal it back from the worker that reclaimed it. XCLAIM
# resets the entry's idle time (what XAUTOCLAIM's min-idle looks at); JUSTID leaves the
# delivery count alone. pcall: a group lost with a Redis restart means "not held", not an error.
_KEEP = """
local p = redis.pcall('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if type(p) ~= 'table' or p.err or #p == 0 or p[1][2] ~= ARGV[2] then
  return 0
end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return #claimed
"""

# KEYS[1] the recording's claim. ARGV: worker, ttl ms. Taken when free or already this worker's.
_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1] the recording's claim. ARGV: worker. Deleted only by its holder.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

Entry = tuple[Any, Any]  # (entry id, fields) as redis-py parses it


def _stream_entries(reply: Any) -> list[Entry]:
    """The entries of an XREADGROUP reply on one stream, whatever shape redis-py gives it."""
    if not reply:
        return []
    # RESP2: [[stream, entries]]; RESP3: {stream: entries}, or {stream: [entries]} in some modes.
    per_stream = reply.values() if isinstance(reply, Mapping) else [item[1] for item in reply]
    found: list[Entry] = []
    for entries in per_stream:
        _flatten(entries, found)
    return found


def _flatten(entries: Sequence[Any] | None, found: list[Entry]) -> None:
    for entry in entries or ():
        if not entry or isinstance(entry[0], tuple | list):
            _flatten(entry, found)  # a list of entries, not an (id, fields) entry
        else:
            found.append((entry[0], entry[1]))


class RedisJobQueue:
    """Jobs in the stream `{prefix}recording:jobs`, group `group`, one consumer per worker name.

    The caller owns `client` (close it after `close()`). A client `socket_timeout` caps each
    blocking read, so it never outlasts the socket.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        dead_after: float = 15.0,
        group: str = "recorders",
    ) -> None:
        self.key = f"{prefix}recording:jobs"
        self._workers_prefix = f"{prefix}recording:workers:"
        # SCAN MATCH reads * ? [ ] \ as a pattern: a prefix is plain text, so they are escaped.
        self._workers_match = re.sub(r"([*?\[\]\\])", r"\\\1", self._workers_prefix) + "*"
        self.group = group
        self.dead_after = dead_after
        self._redis = client
        self._keep = client.register_script(_KEEP)
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._group_ready = False
        self._closed = False
        # Blocking reads are cut into slices so that a job whose holder died is noticed while
        # waiting for new ones (XREADGROUP ">" never returns pending entries).
        slice_s = max(0.001, dead_after / 2)
        socket_timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        if socket_timeout:
            slice_s = min(slice_s, max(0.001, socket_timeout / 2))
        self._slice = slice_s

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # Id 0: jobs put before any worker existed are delivered too.
            await self._redis.xgroup_create(self.key, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    async def put(self, job: RecordingJob) -> str:
        """XADD the job; returns its stream entry id."""
        job_id = _text(await self._redis.xadd(self.key, job.to_fields()))
        _log_put(job_id, job)
        return job_id

    async def take(
        self, worker: str, timeout: float, holding: Collection[str] = ()
    ) -> Lease | None:
        """Wait up to `timeout` s: own pending entry, then XAUTOCLAIM, then a new one; else None."""
        deadline = time.monotonic() + max(0.0, timeout)
        while not self._closed:
            try:
                await self._ensure_group()
                lease = await self._own(worker, holding) or await self._reclaim(worker, holding)
                if lease is not None:
                    return lease
                remaining = deadline - time.monotonic()
                block_ms = max(1, int(min(remaining, self._slice) * 1000))
                lease = await self._new(worker, block_ms)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The group went with the data (a Redis restart without persistence): remake it.
                log.warning(
                    "recording jobs: consumer group %s on %s is gone: recreating",
                    self.group,
                    self.key,
                )
                self._group_ready = False
                if time.monotonic() >= deadline:
                    return None
                continue
            if lease is not None:
                return lease
            if time.monotonic() >= deadline:
                return None
        return None

    async def _own(self, worker: str, holding: Collection[str]) -> Lease | None:
        # From id "0": this consumer's pending entries, i.e. jobs it took before it restarted,
        # past those it is carrying out now.
        after = "0"
        while True:
            reply = await self._redis.xreadgroup(self.group, worker, {self.key: after}, count=1)
            entries = _stream_entries(reply)
            if not entries:
                return None
            if _text(entries[0][0]) in holding:
                after = _text(entries[0][0])
                continue
            lease = await self._lease(worker, entries[0], reclaimed=False, how="taken back")
            if lease is not None:
                return lease

    async def _reclaim(self, worker: str, holding: Collection[str]) -> Lease | None:
        min_idle = max(1, int(self.dead_after * 1000))
        cursor: Any = "0-0"
        while True:
            reply = await self._redis.xautoclaim(
                self.key, self.group, worker, min_idle, start_id=cursor, count=1
            )
            cursor, entries = reply[0], reply[1]
            for entry in entries:
                if entry[0] is None:
                    continue  # deleted before Redis 7: the "0" read of _own acks it later
                if _text(entry[0]) in holding:
                    continue  # this worker's own, which it is carrying out (now kept again)
                lease = await self._lease(worker, entry, reclaimed=True, how="reclaimed")
                if lease is not None:
                    return lease
            if _text(cursor) == "0-0":
                return None

    async def _new(self, worker: str, block_ms: int) -> Lease | None:
        reply = await self._redis.xreadgroup(
            self.group, worker, {self.key: ">"}, count=1, block=block_ms
        )
        for entry in _stream_entries(reply):
            lease = await self._lease(worker, entry, reclaimed=False, how="taken")
            if lease is not None:
                return lease
        return None

    async def _lease(self, worker: str, entry: Entry, *, reclaimed: bool, how: str) -> Lease | None:
        """The lease for a delivered entry, or None after dropping an entry that is no job."""
        entry_id, fields = _text(entry[0]), entry[1]
        if not fields:
            # Deleted from the stream while still pending: only the pending record is left.
            await self._redis.xack(self.key, self.group, entry_id)
            return None
        try:
            job = RecordingJob.from_fields(fields)
        except ValueError as exc:
            # Never hand out (or crash on) what no worker can run, and never see it again.
            log.warning("recording jobs: dropping entry %s of %s: %s", entry_id, self.key, exc)
            await self._remove(entry_id)
            return None
        lease = Lease(job, entry_id, worker, reclaimed=reclaimed)
        _log_taken(lease, how)
        return lease

    async def _remove(self, entry_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.key, self.group, entry_id)
            pipe.xdel(self.key, entry_id)
            await pipe.execute()

    async def keep(self, lease: Lease) -> bool:
        """Reset the lease's idle time if `lease.worker` still owns it (one atomic script)."""
        held = await self._keep(keys=[self.key], args=[self.group, lease.worker, lease.job_id])
        return bool(held)

    async def done(self, lease: Lease) -> None:
        """XACK and XDEL the entry in one transaction: it is never handed out again."""
        await self._remove(lease.job_id)
        _log_done(lease)

    async def pending(self) -> int:
        """XLEN of the stream: done entries are deleted from it."""
        return int(await self._redis.xlen(self.key))

    async def announce(self, worker: str, info: Mapping[str, str]) -> None:
        """A key per worker that expires `dead_after` seconds from now, holding `info`."""
        ttl_ms = max(1, int(self.dead_after * 1000))
        await self._redis.set(f"{self._workers_prefix}{worker}", json.dumps(dict(info)), px=ttl_ms)

    async def jobs(self) -> list[RecordingJob]:
        """Every job in the stream (done ones are deleted from it), oldest first; entries that
        are no job are passed over."""
        found: list[RecordingJob] = []
        for _entry_id, fields in await self._redis.xrange(self.key):
            try:
                found.append(RecordingJob.from_fields(fields))
            except ValueError:
                continue
        return found

    async def claim(self, recording_id: int, worker: str) -> bool:
        """A key per recording that its worker holds for `dead_after` seconds (one script)."""
        ttl_ms = max(1, int(self.dead_after * 1000))
        held = await self._claim(keys=[self._claim_key(recording_id)], args=[worker, ttl_ms])
        return bool(held)

    async def release(self, recording_id: int, worker: str) -> None:
        """Delete the recording's claim if `worker` holds it (one script)."""
        await self._release(keys=[self._claim_key(recording_id)], args=[worker])

    def _claim_key(self, recording_id: int) -> str:
        return f"{self.key.removesuffix('jobs')}claims:{int(recording_id)}"

    async def workers(self) -> dict[str, dict[str, str]]:
        """The workers whose keys have not expired."""
        keys = [_text(k) async for k in self._redis.scan_iter(match=self._workers_match)]
        if not keys:
            return {}
        found: dict[str, dict[str, str]] = {}
        for key, value in zip(keys, await self._redis.mget(keys), strict=True):
            if value is None:
                continue  # expired between the scan and the read
            try:
                info = json.loads(_text(value))
            except ValueError:
                info = {}
            found[key[len(self._workers_prefix) :]] = info if isinstance(info, dict) else {}
        return found

    async def close(self) -> None:
        """Stop handing out jobs (a blocked take returns after its slice); the client stays open."""
        self._closed = True
