"""One contract for both recording job queues, plus what only the Redis one must prove.

Every contract test runs against LocalJobQueue and against RedisJobQueue on a real Redis (each
Redis test under its own key prefix). Several workers are several RedisJobQueue objects, each
with its own client, on one prefix (one client decodes responses, the next does not), or the one
LocalJobQueue (in process there is only one queue).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from recording.jobs import (
    JobQueue,
    Lease,
    LocalJobQueue,
    RecordingJob,
    RedisJobQueue,
)
from tests.support.redis_server import delete_prefix, unique_prefix
from tests.support.wait import eventually

# A lease not kept for DEAD seconds may be taken over. Tests that must not see a take-over by
# accident use SLOW, long enough that no test run gets near it.
DEAD = 0.5
SLOW = 30.0

Factory = Callable[..., Awaitable[list[JobQueue]]]


def job(n: int, room: str = "giao-ban") -> RecordingJob:
    return RecordingJob(recording_id=n, room=f"{room}-{n}", node_url=f"https://n{n}.example.vn")


@pytest.fixture(params=["local", "redis"])
async def make(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """`await make(n, dead_after=…)`: n workers' views of one queue (n clients for Redis)."""
    made: list[JobQueue] = []
    clients: list[aioredis.Redis] = []
    url = prefix = ""
    if request.param == "redis":
        # redis_url is a sync fixture: it may be asked for from here (an async one may not).
        url = request.getfixturevalue("redis_url")
        prefix = unique_prefix()

    async def factory(n: int = 1, dead_after: float = DEAD) -> list[JobQueue]:
        if request.param == "local":
            local = LocalJobQueue(dead_after=dead_after)
            made.append(local)
            return [local] * n
        views: list[JobQueue] = []
        for _ in range(n):
            client = aioredis.from_url(url, decode_responses=len(clients) % 2 == 1)
            clients.append(client)
            view = RedisJobQueue(client, prefix, dead_after=dead_after)
            made.append(view)
            views.append(view)
        return views

    try:
        yield factory
    finally:
        for queue in made:
            await queue.close()
        for client in clients:
            await client.aclose()
        if prefix:
            await delete_prefix(url, prefix)


async def timed(coro: Awaitable[Lease | None]) -> tuple[Lease | None, float]:
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


# --------------------------------------------------------------------------- the job itself


def test_job_fields_round_trip() -> None:
    j = RecordingJob(recording_id=42, room="giao-ban-tinh", node_url="https://n1.example.vn")
    fields = j.to_fields()
    assert fields == {
        "recording_id": "42",
        "room": "giao-ban-tinh",
        "node_url": "https://n1.example.vn",
    }
    assert all(isinstance(v, str) for v in fields.values())
    assert RecordingJob.from_fields(fields) == j
    as_bytes = {k.encode(): v.encode() for k, v in fields.items()}
    assert RecordingJob.from_fields(as_bytes) == j
    # Fields a later version may add are ignored.
    assert RecordingJob.from_fields({**fields, "extra": "x"}) == j
    room = RecordingJob(7, "phòng họp xã", "http://10.0.0.1:8080")
    assert RecordingJob.from_fields(room.to_fields()) == room


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"garbage": "x"},
        {"room": "r", "node_url": "https://n"},
        {"recording_id": "1", "node_url": "https://n"},
        {"recording_id": "1", "room": "r"},
        {"recording_id": "1", "room": "", "node_url": "https://n"},
        {"recording_id": "abc", "room": "r", "node_url": "https://n"},
        {"recording_id": "1.5", "room": "r", "node_url": "https://n"},
        {"recording_id": " 7", "room": "r", "node_url": "https://n"},
        {"recording_id": "07", "room": "r", "node_url": "https://n"},
        {b"recording_id": b"1", b"room": b"\xff\xfe", b"node_url": b"https://n"},
    ],
)
def test_job_from_bad_fields(fields: dict[Any, Any]) -> None:
    with pytest.raises(ValueError):
        RecordingJob.from_fields(fields)


# --------------------------------------------------------------------------- contract


async def test_put_then_take(make: Factory) -> None:
    (q,) = await make(1, dead_after=SLOW)
    assert await q.pending() == 0
    job_id = await q.put(job(1))
    assert isinstance(job_id, str) and job_id
    assert await q.pending() == 1
    lease = await q.take("rec-a", timeout=5.0)
    assert lease is not None
    assert lease == Lease(job=job(1), job_id=job_id, worker="rec-a", reclaimed=False)
    assert await q.pending() == 1  # held is still pending until done
    assert await q.keep(lease)


async def test_take_on_empty_queue_times_out(make: Factory) -> None:
    (q,) = await make(1)
    lease, took = await timed(q.take("rec-a", timeout=0.3))
    assert lease is None
    assert 0.25 <= took < 1.5, took
    lease, took = await timed(q.take("rec-a", timeout=0))
    assert lease is None and took < 0.5, took


async def test_fifo_order(make: Factory) -> None:
    (q,) = await make(1, dead_after=SLOW)
    first = await q.put(job(1))
    second = await q.put(job(2))
    a = await q.take("rec-a", timeout=5.0)
    b = await q.take("rec-b", timeout=5.0)
    assert a is not None and b is not None
    assert (a.job_id, a.job) == (first, job(1))
    assert (b.job_id, b.job) == (second, job(2))
    # Also for one worker in turn.
    third = await q.put(job(3))
    fourth = await q.put(job(4))
    await q.done(a)
    c = await q.take("rec-a", timeout=5.0)
    assert c is not None and (c.job_id, c.job) == (third, job(3))
    await q.done(c)
    d = await q.take("rec-a", timeout=5.0)
    assert d is not None and (d.job_id, d.job) == (fourth, job(4))


async def test_two_workers_race_for_one_job(make: Factory) -> None:
    a, b = await make(2, dead_after=SLOW)
    await a.put(job(1))
    results = await asyncio.gather(timed(a.take("rec-a", 0.5)), timed(b.take("rec-b", 0.5)))
    leases = [lease for lease, _ in results if lease is not None]
    assert len(leases) == 1, results
    assert leases[0].job == job(1) and not leases[0].reclaimed
    loser_took = next(took for lease, took in results if lease is None)
    assert loser_took >= 0.45, loser_took


async def test_job_put_while_workers_wait_goes_to_one(make: Factory) -> None:
    views = await make(3, dead_after=SLOW)
    takes = [
        asyncio.create_task(view.take(f"rec-{i}", timeout=1.0)) for i, view in enumerate(views)
    ]
    put = await views[0].put(job(1))
    results = await asyncio.gather(*takes)
    leases = [lease for lease in results if lease is not None]
    assert len(leases) == 1, results
    assert leases[0].job_id == put and leases[0].job == job(1)


async def test_many_workers_each_job_once(make: Factory) -> None:
    views = await make(4, dead_after=SLOW)
    put_ids = await asyncio.gather(*(views[i % 4].put(job(i)) for i in range(1, 9)))
    got: list[Lease] = []

    async def worker(i: int, view: JobQueue) -> None:
        while (lease := await view.take(f"rec-{i}", timeout=0.3)) is not None:
            got.append(lease)
            await view.done(lease)

    await asyncio.gather(*(worker(i, view) for i, view in enumerate(views)))
    assert sorted(lease.job_id for lease in got) == sorted(put_ids)
    assert sorted(lease.job.recording_id for lease in got) == list(range(1, 9))
    assert await views[0].pending() == 0


async def test_unkept_job_is_reclaimed_and_old_keep_fails(make: Factory) -> None:
    a, b = await make(2, dead_after=DEAD)
    await a.put(job(1))
    first = await a.take("rec-a", timeout=5.0)
    assert first is not None
    # rec-a stops keeping it (its process hangs or died): rec-b waits and takes it over.
    second, took = await timed(b.take("rec-b", timeout=10 * DEAD))
    assert second is not None, "the unkept job was not reclaimed"
    assert second.job_id == first.job_id and second.job == job(1)
    assert second.reclaimed and second.worker == "rec-b"
    assert took >= DEAD * 0.8, took
    assert not await a.keep(first)
    assert await b.keep(second)
    # rec-a coming back under its name has nothing of its own any more.
    assert await a.take("rec-a", timeout=0.1) is None
    assert await b.keep(second)


async def test_kept_job_is_never_taken(make: Factory) -> None:
    a, b = await make(2, dead_after=DEAD)
    await a.put(job(1))
    lease = await a.take("rec-a", timeout=5.0)
    assert lease is not None
    stop = asyncio.Event()
    kept: list[bool] = []

    async def keeper() -> None:
        # Keeping every DEAD/4 is the pace under test, not a synchronisation.
        while not stop.is_set():
            kept.append(await a.keep(lease))
            try:
                await asyncio.wait_for(stop.wait(), DEAD / 4)
            except TimeoutError:
                pass

    keeping = asyncio.create_task(keeper())
    try:
        until = time.monotonic() + 3 * DEAD
        tries = 0
        while time.monotonic() < until:
            assert await b.take("rec-b", timeout=0.1) is None
            tries += 1
    finally:
        stop.set()
        await keeping
    assert tries >= 5, tries
    assert kept and all(kept), kept
    assert await a.keep(lease)


async def test_keep_does_not_steal(make: Factory) -> None:
    (q,) = await make(1, dead_after=SLOW)
    await q.put(job(1))
    lease = await q.take("rec-a", timeout=5.0)
    assert lease is not None
    intruder = Lease(job=lease.job, job_id=lease.job_id, worker="rec-x", reclaimed=False)
    assert not await q.keep(intruder)
    assert await q.keep(lease)
    assert await q.take("rec-x", timeout=0.1) is None
    assert not await q.keep(Lease(job(9), "0-1", "rec-a", reclaimed=False))  # no such job


async def test_done_job_is_never_handed_out_again(make: Factory) -> None:
    a, b = await make(2, dead_after=DEAD)
    await a.put(job(1))
    await a.put(job(2))
    lease = await a.take("rec-a", timeout=5.0)
    assert lease is not None and lease.job == job(1)
    assert await a.pending() == 2
    await a.done(lease)
    assert await b.pending() == 1
    assert not await a.keep(lease)
    other = await b.take("rec-b", timeout=5.0)
    assert other is not None and other.job == job(2)
    await b.done(other)
    assert await a.pending() == 0
    # Past dead_after nothing is left to reclaim, for another worker or the same name.
    await asyncio.sleep(DEAD * 1.2)  # lets the lease's dead_after pass: the thing under test
    assert await b.take("rec-b", timeout=0.2) is None
    assert await a.take("rec-a", timeout=0.2) is None
    assert await a.pending() == 0


async def test_restarted_worker_gets_its_own_job_back(make: Factory) -> None:
    before, after = await make(2, dead_after=SLOW)
    await before.put(job(1))
    lease = await before.take("rec-a", timeout=5.0)
    assert lease is not None
    await before.put(job(2))  # a newer job is waiting too
    # The worker process restarts (a new client for Redis) and keeps its name.
    again, took = await timed(after.take("rec-a", timeout=5.0))
    assert again is not None
    assert again.job_id == lease.job_id and again.job == job(1)
    assert not again.reclaimed and again.worker == "rec-a"
    assert took < 1.0, took  # at once, not after the timeout or dead_after
    assert await after.keep(again)
    # Another worker gets the newer job, not rec-a's.
    newer = await after.take("rec-b", timeout=5.0)
    assert newer is not None and newer.job == job(2)


async def test_take_prefers_reclaimable_to_new(make: Factory) -> None:
    a, b = await make(2, dead_after=DEAD)
    await a.put(job(1))
    old = await a.take("rec-a", timeout=5.0)
    assert old is not None
    await a.put(job(2))
    await asyncio.sleep(DEAD * 1.2)  # rec-a's lease lapses: the thing under test
    first = await b.take("rec-b", timeout=5.0)
    assert first is not None and first.job == job(1) and first.reclaimed
    await b.done(first)
    second = await b.take("rec-b", timeout=5.0)
    assert second is not None and second.job == job(2) and not second.reclaimed


async def test_close_ends_waiting_takes(make: Factory) -> None:
    (q,) = await make(1)
    waiting = asyncio.create_task(q.take("rec-a", timeout=30.0))
    await q.close()
    lease, took = await timed(waiting)
    assert lease is None and took < 5.0
    assert await q.take("rec-a", timeout=5.0) is None


async def test_a_worker_carrying_out_jobs_is_not_handed_them_again(make: Factory) -> None:
    (q,) = await make(1, dead_after=SLOW)
    for n in (1, 2):
        await q.put(job(n))
    first = await q.take("rec-a", timeout=1.0)
    assert first is not None and first.job == job(1)
    # Same worker, still carrying out job 1: the next take is job 2, then nothing.
    second = await q.take("rec-a", timeout=1.0, holding={first.job_id})
    assert second is not None and second.job == job(2) and not second.reclaimed
    held = {first.job_id, second.job_id}
    assert await q.take("rec-a", timeout=0.2, holding=held) is None
    # Restarted (holding nothing), it gets both back, oldest first.
    again = await q.take("rec-a", timeout=1.0)
    assert again is not None and again.job_id == first.job_id
    last = await q.take("rec-a", timeout=1.0, holding={again.job_id})
    assert last is not None and last.job_id == second.job_id


async def test_a_busy_worker_does_not_reclaim_its_own_jobs(make: Factory) -> None:
    (q,) = await make(1)
    await q.put(job(1))
    lease = await q.take("rec-a", timeout=1.0)
    assert lease is not None
    await asyncio.sleep(DEAD * 1.2)  # not kept: reclaimable by anyone but its holder
    assert await q.take("rec-a", timeout=0.2, holding={lease.job_id}) is None
    other = await q.take("rec-b", timeout=1.0)
    assert other is not None and other.reclaimed and other.job_id == lease.job_id


async def test_jobs_lists_what_is_put_and_not_done(make: Factory) -> None:
    (q,) = await make(1, dead_after=SLOW)
    assert await q.jobs() == []
    for n in (1, 2, 3):
        await q.put(job(n))
    lease = await q.take("rec-a", timeout=1.0)
    assert lease is not None
    assert await q.jobs() == [job(1), job(2), job(3)]  # held ones too
    await q.done(lease)
    assert await q.jobs() == [job(2), job(3)]


async def test_one_worker_at_a_time_holds_a_recording(make: Factory) -> None:
    a, b = await make(2)
    assert await a.claim(7, "rec-a")
    assert not await b.claim(7, "rec-b")
    assert await b.claim(8, "rec-b")  # another recording
    assert await a.claim(7, "rec-a")  # refreshed by its holder
    await b.release(7, "rec-b")  # not its holder: nothing changes
    assert not await b.claim(7, "rec-b")
    await a.release(7, "rec-a")
    assert await b.claim(7, "rec-b")
    # A holder that stops refreshing loses it after dead_after.
    deadline = time.monotonic() + DEAD * 1.5
    while time.monotonic() < deadline:
        assert await b.claim(8, "rec-b")
        await asyncio.sleep(DEAD / 4)
    assert await a.claim(7, "rec-a")
    assert not await a.claim(8, "rec-a")


async def test_announced_workers_are_listed_until_they_fall_silent(make: Factory) -> None:
    a, b = await make(2)
    assert await a.workers() == {}
    await a.announce("rec-a", {"recording": "7"})
    await b.announce("rec-b", {})
    assert await b.workers() == {"rec-a": {"recording": "7"}, "rec-b": {}}
    # rec-a keeps announcing, rec-b falls silent: after dead_after only rec-a is left.
    deadline = time.monotonic() + DEAD * 1.5
    while time.monotonic() < deadline:
        await a.announce("rec-a", {"recording": "8"})
        await asyncio.sleep(DEAD / 4)
    assert await a.workers() == {"rec-a": {"recording": "8"}}


# --------------------------------------------------------------------------- Redis only


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


async def test_redis_malformed_entries_are_dropped(
    client: aioredis.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = RedisJobQueue(client, redis_prefix, dead_after=SLOW)
    await client.xadd(q.key, {"garbage": "x"})
    await client.xadd(q.key, {"recording_id": "abc", "room": "r", "node_url": "https://n"})
    good = await q.put(job(1))
    with caplog.at_level(logging.WARNING, logger="recording.jobs"):
        lease = await q.take("rec-a", timeout=5.0)
    assert lease is not None and lease.job_id == good and lease.job == job(1)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert await client.xlen(q.key) == 1  # only the good one is left
    assert await q.pending() == 1
    await q.done(lease)
    assert await q.pending() == 0
    assert await client.xpending(q.key, q.group) == {
        "pending": 0,
        "min": None,
        "max": None,
        "consumers": [],
    }


async def test_redis_malformed_entry_of_a_dead_worker_is_dropped(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    q = RedisJobQueue(client, redis_prefix, dead_after=DEAD)
    # The group already exists (another worker made it): the queue's own XGROUP CREATE is BUSY.
    await client.xgroup_create(q.key, q.group, id="0", mkstream=True)
    bad = await client.xadd(q.key, {"recording_id": "", "room": "r"})
    # A worker read the bad entry and died holding it.
    await client.xreadgroup(q.group, "ghost", {q.key: ">"}, count=1)
    good = await q.put(job(2))
    first = await q.take("rec-a", timeout=5.0)
    assert first is not None and first.job_id == good and not first.reclaimed
    await q.done(first)

    async def bad_dropped() -> bool:
        # Past dead_after the ghost's entry is reclaimed, found bad, and removed; never handed out.
        assert await q.take("rec-a", timeout=0.1) is None
        return await _gone(client, q.key, bad)

    await eventually(bad_dropped, 10 * DEAD, "the dead worker's bad entry to be dropped")
    assert await client.xlen(q.key) == 0
    assert (await client.xpending(q.key, q.group))["pending"] == 0


async def _gone(client: aioredis.Redis, key: str, entry_id: str) -> bool:
    return not await client.xrange(key, entry_id, entry_id)


async def test_redis_deleted_pending_entry_is_skipped(
    client: aioredis.Redis, redis_prefix: str
) -> None:
    q = RedisJobQueue(client, redis_prefix, dead_after=SLOW)
    await q.put(job(1))
    lease = await q.take("rec-a", timeout=5.0)
    assert lease is not None
    # Someone deleted the entry by hand while rec-a held it: rec-a gets nothing back.
    await client.xdel(q.key, lease.job_id)
    assert await q.take("rec-a", timeout=0.2) is None
    assert (await client.xpending(q.key, q.group))["pending"] == 0
    assert not await q.keep(lease)


async def test_redis_keys_stay_under_the_prefix(redis_url: str, redis_prefix: str) -> None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    try:
        before = {k async for k in client.scan_iter(count=1000)}
        a = RedisJobQueue(client, redis_prefix, dead_after=DEAD)
        await a.put(job(1))
        await a.put(job(2))
        first = await a.take("rec-a", timeout=5.0)
        assert first is not None
        assert await a.keep(first)
        await a.done(first)
        second = await a.take("rec-a", timeout=5.0)
        assert second is not None
        # Others' test prefixes may come and go on a shared Redis: only ours and theirs count.
        others = re.compile(r"^test:[0-9a-f]{32}:")
        new = {k async for k in client.scan_iter(count=1000)} - before
        stray = {k for k in new if not k.startswith(redis_prefix) and not others.match(k)}
        assert stray == set()
        ours = {k async for k in client.scan_iter(match=redis_prefix + "*", count=1000)}
        assert ours == {f"{redis_prefix}recording:jobs"}
        groups = await client.xinfo_groups(a.key)
        assert [g["name"] for g in groups] == ["recorders"]
    finally:
        await client.aclose()


async def test_redis_group_lost_is_recreated(client: aioredis.Redis, redis_prefix: str) -> None:
    q = RedisJobQueue(client, redis_prefix, dead_after=SLOW)
    assert await q.take("rec-a", timeout=0) is None  # creates the group
    # Redis restarted without persistence: the stream and its group are gone.
    await client.delete(q.key)
    await q.put(job(1))
    lease = await q.take("rec-a", timeout=5.0)
    assert lease is not None and lease.job == job(1)


async def test_redis_workers_under_a_prefix_with_pattern_characters(redis_url: str) -> None:
    prefix = unique_prefix() + "a*b[c]?:"
    client = aioredis.from_url(redis_url)
    others = RedisJobQueue(client, unique_prefix(), dead_after=SLOW)
    queue = RedisJobQueue(client, prefix, dead_after=SLOW)
    try:
        await others.announce("rec-other", {})
        await queue.announce("rec-a", {"recording": "1"})
        assert await queue.workers() == {"rec-a": {"recording": "1"}}
        assert await others.workers() == {"rec-other": {}}
    finally:
        await delete_prefix(redis_url, prefix)
        await delete_prefix(redis_url, others.key.removesuffix("recording:jobs"))
        await client.aclose()
