"""When the node asks a publisher for a packet it is missing, and when again.

aiortc's NackGenerator finds the gaps in what a publisher sends; its receiver NACKs each gap
once. If that NACK or the retransmission is lost too, the packet never comes and every
subscriber freezes until a keyframe, so the node asks again while the packet is missing. Not
every 20 ms regardless, though: on a commune link with a 200 ms round trip that asked ten
times for each lost packet before its retransmission could arrive, on the link that has the
least to spare (and a publisher that does not hold repeats back retransmits each). As
libwebrtc's NackRequester does, a packet is asked for again only after a round trip and a half
since it was last asked for, at most MAX_TRIES times.

The round trip is measured here, where nothing else measures it (the node receives from the
publisher; the publisher measures the round trip from the node's reports, the node cannot):
a packet that arrives after the node asked for it took about a round trip since it was first
asked for, the publisher's pacing included, which is what the timing must allow for. (Since
the last time it was asked for would be shorter than the round trip whenever a retry went out
before the first answer came, as it does every time until a round trip is known; a lost first
NACK makes the sample one interval long instead, which the smoothing absorbs.)
"""

from __future__ import annotations

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
        self._next_due_ms = None if next_due is None else int(next_due + 0.999)
        return sorted(due)
