"""server.memory_trim: freed heap memory given back to the system (glibc)."""

from __future__ import annotations

import psutil
import pytest

from server import memory_trim
from server.memory_trim import MemoryTrimmer
from tests.support.wait import eventually

MIB = 1024 * 1024


@pytest.mark.skipif(not memory_trim.AVAILABLE, reason="the C library is not glibc")
def test_trim_gives_back_what_malloc_kept() -> None:
    process = psutil.Process()
    # 1 KiB buffers come from malloc (above Python's small-object allocator); the last one
    # is kept, so the heap cannot shrink from its top when the others are freed.
    buffers = [bytearray(1024) for _ in range(96 * 1024)]
    for buffer in buffers:
        buffer[0] = 1  # touched: resident
    last = buffers[-1]
    grown = process.memory_info().rss
    del buffers
    kept = process.memory_info().rss
    assert memory_trim.trim() is True
    after = process.memory_info().rss
    rss = " → ".join(f"{value / MIB:.0f}" for value in (grown, kept, after))
    assert kept - after > 48 * MIB, f"RSS {rss} MiB (allocated, freed, trimmed)"
    assert last[0] == 1


@pytest.mark.skipif(not memory_trim.AVAILABLE, reason="the C library is not glibc")
async def test_the_trimmer_trims_every_interval_until_closed() -> None:
    trimmer = MemoryTrimmer(interval=0.01)
    trimmer.start()
    await eventually(lambda: trimmer.trims >= 3, 5, "three trims")
    await trimmer.close()
    done = trimmer.trims
    assert trimmer._task is None
    trimmer.start()  # may start again
    await eventually(lambda: trimmer.trims > done, 5, "a trim after starting again")
    await trimmer.close()
