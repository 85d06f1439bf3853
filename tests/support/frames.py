"""Checks over the frames a subscriber received (numbers read from the barcode)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

MAX_LISTED_GAPS = 200


class ReceivedFrame(NamedTuple):
    number: int | None  # barcode number; None if unreadable (or audio)
    width: int
    height: int
    t: float  # time.monotonic() at arrival


@dataclass(frozen=True)
class FrameReport:
    count: int  # frames considered (inside the window, if any)
    readable: int  # frames whose number could be read
    unreadable: int
    first_number: int | None
    last_number: int | None
    increasing: bool  # readable numbers strictly increasing
    out_of_order: list[tuple[int, int]]  # (previous, number) pairs with number <= previous
    missing: int  # numbers between first and last never seen
    gaps: list[int]  # the first MAX_LISTED_GAPS missing numbers
    fps: float  # frames per second over the window (or the frames' own span)
    max_interval: float  # longest time without a frame (the worst freeze), seconds
    sizes: set[tuple[int, int]] = field(default_factory=set)
    span: float = 0.0  # seconds the fps was computed over

    def summary(self) -> str:
        return (
            f"{self.count} frames ({self.unreadable} unreadable), numbers "
            f"{self.first_number}..{self.last_number}, increasing={self.increasing}, "
            f"missing={self.missing} {self.gaps[:10]}, fps={self.fps:.1f} over {self.span:.2f}s, "
            f"max interval={self.max_interval * 1000:.0f} ms, sizes={sorted(self.sizes)}"
        )


def check_frames(
    frames: Sequence[ReceivedFrame | tuple],
    window: tuple[float, float] | None = None,
) -> FrameReport:
    """Summarise `frames` (tuples of number, width, height, t in arrival order).

    With `window=(t0, t1)` only frames arriving in [t0, t1) count, fps is count / (t1 - t0) and
    the longest interval includes the stretches from t0 to the first frame and from the last
    frame to t1 (a stream that stopped half-way shows as a long freeze). Without a window, fps
    is (count - 1) / (last t - first t).
    """
    rows = [ReceivedFrame(*f) for f in frames]
    if window is not None:
        t0, t1 = window
        if t1 <= t0:
            raise ValueError(f"empty window {window}")
        rows = [f for f in rows if t0 <= f.t < t1]
    times = [f.t for f in rows]
    numbers = [f.number for f in rows if f.number is not None]

    out_of_order = [(a, b) for a, b in itertools.pairwise(numbers) if b <= a]
    missing_list: list[int] = []
    missing = 0
    if numbers:
        lo, hi = min(numbers), max(numbers)
        seen = set(numbers)
        missing = (hi - lo + 1) - len(seen)
        if missing:
            for n in range(lo, hi + 1):
                if n not in seen:
                    missing_list.append(n)
                    if len(missing_list) >= MAX_LISTED_GAPS:
                        break

    intervals = [b - a for a, b in itertools.pairwise(times)]
    if window is not None:
        t0, t1 = window
        span = t1 - t0
        fps = len(rows) / span
        edges = [times[0] - t0, t1 - times[-1]] if times else [span]
        intervals = intervals + edges
    else:
        span = times[-1] - times[0] if len(times) >= 2 else 0.0
        fps = (len(times) - 1) / span if span > 0 else 0.0

    return FrameReport(
        count=len(rows),
        readable=len(numbers),
        unreadable=len(rows) - len(numbers),
        first_number=numbers[0] if numbers else None,
        last_number=numbers[-1] if numbers else None,
        increasing=not out_of_order,
        out_of_order=out_of_order[:MAX_LISTED_GAPS],
        missing=missing,
        gaps=missing_list,
        fps=fps,
        max_interval=max(intervals) if intervals else 0.0,
        sizes={(f.width, f.height) for f in rows},
        span=span,
    )
