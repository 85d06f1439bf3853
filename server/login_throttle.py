"""Failed sign-ins counted per username and per client address, across the cluster.

After THROTTLE_LIMIT failures of one key within THROTTLE_WINDOW seconds the key is refused until
the oldest of them is that old (a moving window, counted by the `limits` library). With
REDIS_URL the count is in Redis, so guessing on every node of a province counts as guessing on
one; without it, in the node's memory. When Redis does not answer, the node counts in its own
memory meanwhile: sign-in neither stops nor goes unthrottled. A reverse proxy makes every client
one address; the node then throttles them together.
"""

from __future__ import annotations

import logging
import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

log = logging.getLogger(__name__)

THROTTLE_LIMIT = 5
THROTTLE_WINDOW = 15 * 60


class LoginThrottle:
    """Failed sign-ins per key: `limit` within `window` seconds and the key waits."""

    def __init__(
        self,
        redis_url: str | None = None,
        prefix: str = "giaoban:",
        limit: int = THROTTLE_LIMIT,
        window: int = THROTTLE_WINDOW,
    ) -> None:
        self._item = RateLimitItemPerSecond(limit, window)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        if redis_url:
            storage = RedisStorage(
                redis_url,
                implementation="redispy",
                key_prefix=f"{prefix}login",
                wrap_exceptions=True,
            )
            self._shared = MovingWindowRateLimiter(storage)
        self._shared_failing = False

    async def retry_after(self, *keys: str) -> float:
        """Seconds until every key may try again (0: none is refused)."""
        wait = 0.0
        for key in keys:
            if not await self._call("test", key):
                stats = await self._call("get_window_stats", key)
                wait = max(wait, stats.reset_time - time.time(), 1.0)
        return wait

    async def failed(self, *keys: str) -> None:
        for key in keys:
            await self._call("hit", key)

    async def succeeded(self, key: str) -> None:
        await self._call("clear", key)

    async def _call(self, method: str, key: str):  # type: ignore[no-untyped-def]
        if self._shared is not None:
            try:
                result = await getattr(self._shared, method)(self._item, key)
            except StorageError as exc:
                if not self._shared_failing:
                    log.warning("sign-in throttle: Redis not answering (%s): counting here", exc)
                    self._shared_failing = True
            else:
                if self._shared_failing:
                    log.info("sign-in throttle: Redis answers again: counting there")
                    self._shared_failing = False
                return result
        return await getattr(self._local, method)(self._item, key)
