"""Presence tests run against a real Redis: REDIS_URL when set, else a private redis-server.

With REDIS_URL the server is shared: every test works under its own key prefix and deletes
only its own keys (SCAN MATCH prefix* + DEL), never FLUSHALL. Without it this session starts
Debian's redis-server on a free 127.0.0.1 port (`redis_server`, which tests may restart) and
stops it at the end.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.redis_server import (
    RedisServer,
    delete_prefix,
    redis_url_from_env,
    unique_prefix,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | None]:
    """The session's private redis-server, or None when REDIS_URL names a shared one."""
    if redis_url_from_env() is not None:
        yield None
        return
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer | None) -> str:
    """redis://… of the Redis these tests use (only under their own key prefixes)."""
    if redis_server is not None:
        return redis_server.url
    url = redis_url_from_env()
    assert url is not None
    return url


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own; its keys are deleted at the end."""
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        await delete_prefix(redis_url, prefix)
