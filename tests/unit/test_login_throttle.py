"""server.login_throttle: failed sign-ins per key, in the node or shared through Redis."""

from __future__ import annotations

import logging

import pytest

from server.login_throttle import LoginThrottle
from tests.support.redis_server import free_port
from tests.support.wait import eventually


async def test_failures_within_the_window_refuse_the_key_until_they_age() -> None:
    throttle = LoginThrottle(limit=3, window=1)
    await throttle.failed("user:a", "addr:x")
    await throttle.failed("user:a", "addr:x")
    assert await throttle.retry_after("user:a", "addr:x") == 0
    await throttle.failed("user:a", "addr:y")
    assert 0 < await throttle.retry_after("user:a") <= 1.5
    assert await throttle.retry_after("user:b", "addr:x") == 0  # two failures from x
    assert await throttle.retry_after("user:b", "addr:y") == 0
    assert await throttle.retry_after("user:b") == 0

    async def free_again() -> bool:
        return await throttle.retry_after("user:a") == 0

    await eventually(free_again, 5, "user:a free once its failures are a window old")


async def test_a_success_clears_the_usernames_count() -> None:
    throttle = LoginThrottle(limit=3, window=60)
    await throttle.failed("user:c")
    await throttle.failed("user:c")
    await throttle.succeeded("user:c")
    await throttle.failed("user:c")
    await throttle.failed("user:c")
    assert await throttle.retry_after("user:c") == 0
    await throttle.failed("user:c")
    assert 59 < await throttle.retry_after("user:c") <= 60


async def test_nodes_sharing_redis_count_together(redis_url: str, redis_prefix: str) -> None:
    node_a = LoginThrottle(redis_url, redis_prefix, limit=3, window=60)
    node_b = LoginThrottle(redis_url, redis_prefix, limit=3, window=60)
    alone = LoginThrottle(limit=3, window=60)  # a node without REDIS_URL
    for throttle in (node_a, node_a, node_b):
        await throttle.failed("user:x")
        await alone.failed("user:y")
    assert await node_a.retry_after("user:x") > 0
    assert await node_b.retry_after("user:x") > 0
    assert await alone.retry_after("user:x") == 0  # counts only its own
    await node_b.succeeded("user:x")
    assert await node_a.retry_after("user:x") == 0


async def test_without_redis_answering_the_node_counts_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "server.login_throttle")
    throttle = LoginThrottle(f"redis://127.0.0.1:{free_port()}/0", "x:", limit=2, window=60)
    await throttle.failed("user:z")
    assert await throttle.retry_after("user:z") == 0
    await throttle.failed("user:z")
    assert await throttle.retry_after("user:z") > 0
    warnings = [r for r in caplog.records if "Redis not answering" in r.getMessage()]
    assert len(warnings) == 1  # once per outage, not per sign-in
