"""Per-subscriber RTP sequence number and timestamp rewriting (pure, no I/O).

A down track has its own sequence and timestamp space. Upstream numbers map onto it with a
constant offset inside one *segment*; a new segment starts when the source changes or
forwarding resumes after a pause (mute), so the subscriber sees one continuous stream.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from server.sfu import fanout

SEQ_MOD = 1 << 16
TS_MOD = 1 << 32


def seq_diff(a: int, b: int) -> int:
    """Signed distance a - b in 16-bit sequence space (RFC 3550 wrap-around)."""
    d = (a - b) & 0xFFFF
    return d - SEQ_MOD if d >= 0x8000 else d


@dataclass
class Rewritten:
    sequence_number: int
    timestamp: int


class PythonNumbering:
    """StreamRewriter's numbers() and restart() in Python: the reference for the C version
    (server/sfu/_fanout.c), and what runs where that module is not built."""

    MAX_LATE = 1000
    MAX_TOO_OLD_IN_A_ROW = 16

    clock_rate: int
    _seq_offset: int
    _ts_offset: int
    _last_out_seq: int
    _last_out_ts: int
    _last_in_seq: int | None
    _first_in_seq: int
    _too_old_in_a_row: int
    _last_sent_at: float | None
    _new_segment: bool

    def restart(self) -> None:
        """Begin a new segment at the next packet (source change, or resume after mute)."""
        self._new_segment = True

    def numbers(self, seq: int, ts: int, now: float) -> tuple[int, int] | None:
        """rewrite() as a plain (sequence number, timestamp) pair: the per-packet path."""
        if self._new_segment:
            # Continue right after the last packet sent; advance the clock by the wall time
            # that passed so the receiver's jitter buffer sees real elapsed time.
            elapsed = 0.0 if self._last_sent_at is None else max(0.0, now - self._last_sent_at)
            ts_step = max(1, int(elapsed * self.clock_rate))
            self._seq_offset = (self._last_out_seq + 1 - seq) % SEQ_MOD
            self._ts_offset = (self._last_out_ts + ts_step - ts) % TS_MOD
            self._last_in_seq = seq
            self._first_in_seq = seq
            self._new_segment = False
        else:
            last_in_seq = self._last_in_seq
            assert last_in_seq is not None
            delta = (seq - last_in_seq) & 0xFFFF  # seq_diff(seq, last_in_seq), inlined
            if 0 < delta < 0x8000:
                self._last_in_seq = seq
            elif delta and delta - SEQ_MOD < -self.MAX_LATE:
                self._too_old_in_a_row += 1
                if self._too_old_in_a_row >= self.MAX_TOO_OLD_IN_A_ROW:
                    self._too_old_in_a_row = 0
                    self._new_segment = True
                    return self.numbers(seq, ts, now)
                return None
            elif seq_diff(seq, self._first_in_seq) < 0:
                # From before this segment began: its downstream number may be taken already.
                return None
            if self._too_old_in_a_row:
                self._too_old_in_a_row = 0
        out_seq = (seq + self._seq_offset) % SEQ_MOD
        out_ts = (ts + self._ts_offset) % TS_MOD
        if seq == self._last_in_seq:
            self._last_out_seq = out_seq
            self._last_out_ts = out_ts
            self._last_sent_at = now
        return out_seq, out_ts


_Numbering: type = fanout.StreamNumbering or PythonNumbering  # C where built and wanted
if fanout.NUMBERING_LIMITS not in (
    None,
    (PythonNumbering.MAX_LATE, PythonNumbering.MAX_TOO_OLD_IN_A_ROW),
):
    raise ImportError("server/sfu/_fanout.c and rtp_rewrite.py disagree on numbering limits")
NATIVE_NUMBERING = _Numbering is not PythonNumbering


class StreamRewriter(_Numbering):  # type: ignore[misc,valid-type]
    """Maps upstream (sequence, timestamp) pairs to a continuous downstream space."""

    # Packets this far behind the newest forwarded one are too old to place (late RTX).
    MAX_LATE = PythonNumbering.MAX_LATE
    # So many "too old" packets in a row mean the publisher's numbering jumped: resync.
    MAX_TOO_OLD_IN_A_ROW = PythonNumbering.MAX_TOO_OLD_IN_A_ROW

    def __init__(self, clock_rate: int, rng: random.Random | None = None) -> None:
        r = rng or random.Random()
        self.clock_rate = clock_rate
        self._seq_offset = 0
        self._ts_offset = 0
        self._last_out_seq = r.randrange(SEQ_MOD)
        self._last_out_ts = r.randrange(TS_MOD)
        self._last_in_seq = None  # newest upstream seq of the current segment
        self._first_in_seq = 0  # upstream seq that opened the current segment
        self._too_old_in_a_row = 0
        self._last_sent_at = None
        self._new_segment = True

    def rewrite(self, seq: int, ts: int, now: float) -> Rewritten | None:
        """Return the downstream numbers for an upstream packet, or None if it is too old."""
        numbers = self.numbers(seq, ts, now)
        return None if numbers is None else Rewritten(*numbers)


if NATIVE_NUMBERING:

    class PythonStreamRewriter(PythonNumbering, StreamRewriter):
        """StreamRewriter numbering in Python whatever is built (tests hold both to one
        contract)."""

else:
    PythonStreamRewriter = StreamRewriter


class SeenSequences:
    """Remembers which upstream sequence numbers were forwarded, to skip RTX duplicates."""

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._slots: list[int] = [-1] * size

    def first_time(self, seq: int) -> bool:
        """True the first time `seq` is seen (within the window), then False."""
        slot = seq % self._size
        if self._slots[slot] == seq:
            return False
        self._slots[slot] = seq
        return True


class PythonPacketHistory:
    """Fixed-size ring of sent packets keyed by downstream sequence number (answers NACKs).

    The reference for the C PacketHistory, and what runs where that module is not built."""

    def __init__(self, size: int = 512) -> None:
        if size < 1:
            raise ValueError("a packet history holds at least one packet")
        self._size = size
        self._seqs: list[int] = [-1] * size
        self._items: list[object] = [None] * size

    def put(self, seq: int, item: object) -> None:
        slot = seq % self._size
        self._seqs[slot] = seq
        self._items[slot] = item

    def get(self, seq: int) -> object | None:
        slot = seq % self._size
        return self._items[slot] if self._seqs[slot] == seq else None


PacketHistory: type = fanout.PacketHistory or PythonPacketHistory  # C where built and wanted
