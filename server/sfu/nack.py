"""When the node asks a publisher for a packet it is missing, and when again.

aiortc's NackGenerator finds the gaps in what a publisher sends; its receiver NACKs each gap
once. If that NACK or the retransmission is lost too, the packet never comes and every
subscriber freezes until a keyframe, so the node asks again while the packet is missing. Not
every 20 ms regardless, though: over a commune link with a 200 ms round trip that asked ten
times for each lost packet before the retransmission could arrive, and a publisher that does
not hold repeated requests back sends a retransmission for each. As libwebrtc's NackRequester
does, a packet is asked for again only a round trip and a half after it was last asked for,
and at most MAX_TRIES times.

The round trip is measured here, where nothing else measures it (the publisher learns it from
the node's reports; the node, which receives, cannot): a packet that arrives after the node
asked for it took about a round trip since it was *first* asked for, the publisher's pacing
included, which is what the timing must allow for. Counted from the last time instead, the
samples were about 1 ms: until a round trip is known, retries go out every 20 ms, and the
answer to the first comes after them. A lost first NACK makes a sample one interval too long,
which the smoothing absorbs.
"""

from __future__ import annotations

import math

RENACK_MIN_MS = 20  # never sooner, and this often until a round trip is known
MAX_TRIES = 10  # then the packet is given up: a subscriber's keyframe request recovers
RTT_MAX_MS = 1000  # a sample above this is taken as this (a late straggler, not the link)


class NackSchedule:
    """Which of a receiver's missing packets to NACK now, one schedule per receiver."""

    def __init__(self) -> None:
        # seq -> (first asked at, last asked at (ms), times asked)
        self._asked: dict[int, tuple[int, int, int]] = {}
        self._next_due_ms: int | None = None
        self.rtt_ms: float | None = None  # smoothed as TCP smooths its round trip (1/8)

    def interval_ms(self) -> float:
        """How long after asking for a packet the node asks for it again."""
        rtt = self.rtt_ms
        return RENACK_MIN_MS if rtt is None else max(RENACK_MIN_MS, 1.5 * rtt)

    def arrived(self, seq: int, now_ms: int) -> None:
        """Packet `seq` arrived (retransmitted or late): a round-trip sample if it was asked for."""
        if not self._asked:
            return
        asked = self._asked.pop(seq, None)
        if asked is None:
            return
        if asked[2] >= MAX_TRIES:
            return  # given up long ago: when it came says little about the link
        sample = min(max(now_ms - asked[0], 1), RTT_MAX_MS)  # since first asked for
        rtt = self.rtt_ms
        self.rtt_ms = sample if rtt is None else rtt + (sample - rtt) / 8

    def due(self, missing: set[int], now_ms: int, new_gap: bool) -> list[int]:
        """The packets of `missing` (aiortc's NackGenerator's set) to ask for now: each new one,
        and each asked for at least interval_ms() ago fewer than MAX_TRIES times."""
        if not new_gap and (self._next_due_ms is None or now_ms < self._next_due_ms):
            return []
        asked = self._asked
        for seq in [s for s in asked if s not in missing]:
            del asked[seq]  # arrived out of aiortc's sight, or older than its window
        interval = self.interval_ms()
        due: list[int] = []
        next_due: float | None = None
        for seq in missing:
            previous = asked.get(seq)
            if previous is None:
                asked[seq] = (now_ms, now_ms, 1)
            elif previous[2] < MAX_TRIES and now_ms - previous[1] >= interval:
                asked[seq] = (previous[0], now_ms, previous[2] + 1)
            else:
                if previous[2] < MAX_TRIES:
                    at = previous[1] + interval
                    next_due = at if next_due is None else min(next_due, at)
                continue
            due.append(seq)
            if asked[seq][2] < MAX_TRIES:
                at = now_ms + interval
                next_due = at if next_due is None else min(next_due, at)
        self._next_due_ms = None if next_due is None else math.ceil(next_due)
        return sorted(due)
