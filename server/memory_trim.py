"""Freed heap memory given back to the system, periodically (where the C library is glibc).

A node forwarding to 16 subscribers grew its resident memory by about 18 MiB an hour while its
live Python allocations stayed the same (tracemalloc, 2026-11-27). The growth is memory that
glibc's malloc keeps after it is freed: calling malloc_trim(0) in that node (through gdb)
brought its RSS back to where the run started, after which it grew again at the same rate. So a
node, which runs for weeks, calls it every TRIM_INTERVAL seconds: a call costs microseconds
when there is little to give back, 6 ms to give back 97 MiB (measured in a test process).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL = 60.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_malloc_trim = _find_malloc_trim()
AVAILABLE = _malloc_trim is not None


def trim() -> bool | None:
    """Give freed heap pages back to the system: True if some were, None without glibc."""
    if _malloc_trim is None:
        return None
    return bool(_malloc_trim(0))


class MemoryTrimmer:
    """Calls trim() every `interval` seconds while started."""

    def __init__(self, interval: float = TRIM_INTERVAL) -> None:
        self.interval = interval
        self.trims = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if AVAILABLE and self._task is None:
            self._task = asyncio.create_task(self._run(), name="memory-trim")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            started = time.thread_time()
            released = trim()
            self.trims += 1
            log.debug(
                "malloc_trim: %s in %.1f ms",
                "memory released" if released else "nothing to release",
                1000 * (time.thread_time() - started),
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
