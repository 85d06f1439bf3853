"""server/sfu/rtp_rewrite.py: sequence/timestamp rewriting, RTX duplicate skipping, history."""

from __future__ import annotations

import itertools
import random

import pytest

from server.sfu.rtp_rewrite import (
    SEQ_MOD,
    TS_MOD,
    PacketHistory,
    Rewritten,
    SeenSequences,
    StreamRewriter,
    seq_diff,
)

VIDEO_RATE = 90000
FRAME_TS = 3000  # 30 fps at 90 kHz


def make_rewriter(seed: int = 1, clock_rate: int = VIDEO_RATE) -> StreamRewriter:
    return StreamRewriter(clock_rate, rng=random.Random(seed))


def forward(
    rw: StreamRewriter, first_seq: int, first_ts: int, count: int, t0: float, dt: float = 1 / 32
) -> list[Rewritten]:
    """Rewrite `count` in-order packets, one per frame (seq +1, ts +3000, time +dt)."""
    out = []
    for k in range(count):
        r = rw.rewrite((first_seq + k) % SEQ_MOD, (first_ts + k * FRAME_TS) % TS_MOD, t0 + k * dt)
        assert r is not None
        out.append(r)
    return out


def assert_contiguous(out: list[Rewritten]) -> None:
    for a, b in itertools.pairwise(out):
        assert (b.sequence_number - a.sequence_number) % SEQ_MOD == 1, (a, b)


# -- seq_diff -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (5, 3, 2),
        (3, 5, -2),
        (7, 7, 0),
        (0, 65535, 1),  # wrap forward
        (65535, 0, -1),  # wrap backward
        (10, 65530, 16),
        (65530, 10, -16),
        (0x8000, 0, -0x8000),  # half-way is "behind" (RFC 3550 convention)
        (0x7FFF, 0, 0x7FFF),
        (0, 0x8001, 0x7FFF),
    ],
)
def test_seq_diff(a: int, b: int, expected: int) -> None:
    assert seq_diff(a, b) == expected


def test_seq_diff_is_antisymmetric_except_half_way() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        a, b = rng.randrange(SEQ_MOD), rng.randrange(SEQ_MOD)
        if (a - b) % SEQ_MOD == 0x8000:
            continue
        assert seq_diff(a, b) == -seq_diff(b, a)
        assert (b + seq_diff(a, b)) % SEQ_MOD == a


# -- StreamRewriter: one segment ----------------------------------------------------------------


def test_first_segment_keeps_constant_offsets() -> None:
    rw = make_rewriter()
    out = forward(rw, 1000, 500_000, 50, t0=10.0)
    assert_contiguous(out)
    seq_offset = (out[0].sequence_number - 1000) % SEQ_MOD
    ts_offset = (out[0].timestamp - 500_000) % TS_MOD
    for k, r in enumerate(out):
        assert r.sequence_number == (1000 + k + seq_offset) % SEQ_MOD
        assert r.timestamp == (500_000 + k * FRAME_TS + ts_offset) % TS_MOD


def test_random_start_differs_between_rewriters() -> None:
    starts = {make_rewriter(seed).rewrite(1, 1, 0.0).sequence_number for seed in range(20)}
    assert len(starts) > 10  # downstream numbering does not leak the upstream one


def test_gap_upstream_is_kept_downstream() -> None:
    """Lost upstream packets stay a gap downstream, so the subscriber NACKs them."""
    rw = make_rewriter()
    a = rw.rewrite(100, 9000, 1.0)
    b = rw.rewrite(103, 9000, 1.01)
    assert a is not None and b is not None
    assert (b.sequence_number - a.sequence_number) % SEQ_MOD == 3


def test_packets_of_one_frame_share_a_timestamp() -> None:
    rw = make_rewriter()
    outs = [rw.rewrite(200 + k, 777, 1.0 + k * 0.001) for k in range(5)]
    assert len({o.timestamp for o in outs}) == 1
    assert_contiguous(outs)


def test_sequence_wraps_at_2_16() -> None:
    rw = make_rewriter()
    out = forward(rw, 65530, 1000, 12, t0=0.0)  # upstream wraps 65535 -> 0
    assert_contiguous(out)
    assert all(0 <= r.sequence_number < SEQ_MOD for r in out)


def test_downstream_sequence_wraps_at_2_16() -> None:
    """Whatever the random start, a long stream wraps downstream without a jump."""
    rw = make_rewriter(seed=3)
    out = forward(rw, 0, 0, SEQ_MOD + 10, t0=0.0, dt=0.0)
    assert_contiguous(out)
    assert out[SEQ_MOD].sequence_number == out[0].sequence_number


def test_timestamp_wraps_at_2_32() -> None:
    rw = make_rewriter()
    first_ts = TS_MOD - 2 * FRAME_TS
    out = forward(rw, 10, first_ts, 6, t0=0.0)
    for a, b in itertools.pairwise(out):
        assert (b.timestamp - a.timestamp) % TS_MOD == FRAME_TS
    assert all(0 <= r.timestamp < TS_MOD for r in out)


def test_late_packet_maps_with_the_same_offset() -> None:
    rw = make_rewriter()
    out = {}
    for seq in (100, 101, 103, 104):
        r = rw.rewrite(seq, seq * 10, 1.0)
        assert r is not None
        out[seq] = r
    late = rw.rewrite(102, 1020, 1.1)  # reordered
    assert late is not None
    assert (late.sequence_number - out[101].sequence_number) % SEQ_MOD == 1
    assert (out[103].sequence_number - late.sequence_number) % SEQ_MOD == 1
    assert (late.timestamp - out[101].timestamp) % TS_MOD == 10
    # and the stream continues after the newest one, not after the late one
    nxt = rw.rewrite(105, 1050, 1.2)
    assert (nxt.sequence_number - out[104].sequence_number) % SEQ_MOD == 1


def test_late_packet_across_wrap() -> None:
    rw = make_rewriter()
    a = rw.rewrite(65534, 1, 0.0)
    b = rw.rewrite(1, 4, 0.0)  # 65535 and 0 still missing
    late = rw.rewrite(65535, 2, 0.0)
    assert a is not None and b is not None and late is not None
    assert (late.sequence_number - a.sequence_number) % SEQ_MOD == 1
    assert (b.sequence_number - late.sequence_number) % SEQ_MOD == 2


def test_max_late_boundary() -> None:
    rw = make_rewriter()
    newest = 5000
    rw.rewrite(newest - StreamRewriter.MAX_LATE - 5, 0, 0.0)
    top = rw.rewrite(newest, 0, 0.0)
    at_limit = rw.rewrite(newest - StreamRewriter.MAX_LATE, 0, 0.0)
    assert top is not None and at_limit is not None
    assert (top.sequence_number - at_limit.sequence_number) % SEQ_MOD == StreamRewriter.MAX_LATE
    assert rw.rewrite(newest - StreamRewriter.MAX_LATE - 1, 0, 0.0) is None


def test_too_old_across_wrap_is_none() -> None:
    rw = make_rewriter()
    rw.rewrite(65000, 0, 0.0)
    rw.rewrite(500, 0, 0.0)  # 1036 ahead, across the wrap
    assert rw.rewrite(65000, 0, 0.0) is None  # now 1036 behind
    assert rw.rewrite(65036, 0, 0.0) is not None  # 1000 behind: still placed


def test_too_old_packet_does_not_disturb_the_stream() -> None:
    rw = make_rewriter()
    a = rw.rewrite(3000, 0, 0.0)
    assert rw.rewrite(1000, 0, 0.1) is None
    b = rw.rewrite(3001, 0, 0.2)
    assert (b.sequence_number - a.sequence_number) % SEQ_MOD == 1


# -- StreamRewriter: segments (mute / source change) --------------------------------------------


def test_restart_continues_numbering_and_advances_clock_by_wall_time() -> None:
    rw = make_rewriter()
    first = forward(rw, 1000, 100_000, 10, t0=50.0)
    last_time = 50.0 + 9 / 32  # binary fractions: exact
    rw.restart()
    # The new source (or the resumed one) has unrelated numbers.
    pause = 2.5
    second = forward(rw, 40_000, 3_000_000_000, 10, t0=last_time + pause)
    assert_contiguous(first + second)
    ts_jump = (second[0].timestamp - first[-1].timestamp) % TS_MOD
    assert ts_jump == int(pause * VIDEO_RATE)
    # inside the new segment the upstream spacing is kept
    for a, b in itertools.pairwise(second):
        assert (b.timestamp - a.timestamp) % TS_MOD == FRAME_TS


@pytest.mark.parametrize("clock_rate", [8000, 48000, 90000])
def test_restart_timestamp_uses_clock_rate(clock_rate: int) -> None:
    rw = make_rewriter(clock_rate=clock_rate)
    a = rw.rewrite(1, 0, 10.0)
    rw.restart()
    b = rw.rewrite(9999, 123456, 11.0)
    assert (b.timestamp - a.timestamp) % TS_MOD == clock_rate
    assert (b.sequence_number - a.sequence_number) % SEQ_MOD == 1


def test_restart_without_elapsed_time_still_moves_timestamp_forward() -> None:
    rw = make_rewriter()
    a = rw.rewrite(1, 5000, 3.0)
    rw.restart()
    b = rw.rewrite(2, 5000, 3.0)  # same instant: the frame must still be a new one
    assert (b.timestamp - a.timestamp) % TS_MOD >= 1
    assert (b.timestamp - a.timestamp) % TS_MOD < 0x80000000


def test_restart_with_clock_going_backwards_does_not_go_back() -> None:
    rw = make_rewriter()
    a = rw.rewrite(1, 5000, 3.0)
    rw.restart()
    b = rw.rewrite(2, 0, 2.0)
    assert 1 <= (b.timestamp - a.timestamp) % TS_MOD < 0x80000000


def test_restart_continues_after_the_newest_packet_not_a_late_one() -> None:
    rw = make_rewriter()
    a = rw.rewrite(10, 100, 1.0)
    newest = rw.rewrite(12, 300, 1.5)
    late = rw.rewrite(11, 200, 1.75)  # late packet arrives last
    assert a is not None and newest is not None and late is not None
    rw.restart()
    b = rw.rewrite(500, 9, 2.5)
    assert (b.sequence_number - newest.sequence_number) % SEQ_MOD == 1
    assert (b.timestamp - newest.timestamp) % TS_MOD == int(1.0 * VIDEO_RATE)


def test_restart_twice_before_any_packet_is_one_restart() -> None:
    rw = make_rewriter()
    a = rw.rewrite(1, 0, 0.0)
    rw.restart()
    rw.restart()
    b = rw.rewrite(700, 0, 1.0)
    assert (b.sequence_number - a.sequence_number) % SEQ_MOD == 1


def test_restart_across_downstream_wrap() -> None:
    rw = make_rewriter()
    a = rw.rewrite(1, 0, 0.0)
    # Put the downstream numbering right before the wrap.
    start = a.sequence_number
    n = (SEQ_MOD - 1 - start) % SEQ_MOD
    last = forward(rw, 2, 0, n, t0=0.0, dt=0.0)[-1] if n else a
    assert last.sequence_number == SEQ_MOD - 1
    rw.restart()
    b = rw.rewrite(30_000, 0, 1.0)
    assert b.sequence_number == 0


def test_late_packet_from_before_a_restart_does_not_reuse_downstream_numbers() -> None:
    """After a restart, an upstream packet older than the segment's first packet (a late RTX
    of the old segment, or a reordered packet of the new source) must not be given a
    downstream number that was already used before the restart."""
    rw = make_rewriter()
    before = forward(rw, 500, 0, 10, t0=0.0)
    rw.restart()
    first_of_segment = rw.rewrite(1000, 900_000, 2.0)
    assert first_of_segment is not None
    used = {r.sequence_number for r in before}
    late = rw.rewrite(999, 897_000, 2.01)
    assert late is None or late.sequence_number not in used, (
        f"upstream 999 mapped to downstream {late.sequence_number}, already used for "
        "the last packet before the restart"
    )


# -- SeenSequences ------------------------------------------------------------------------------


def test_seen_sequences_first_time_then_duplicate() -> None:
    seen = SeenSequences()
    assert seen.first_time(42) is True
    assert seen.first_time(42) is False
    assert seen.first_time(42) is False
    assert seen.first_time(43) is True


def test_seen_sequences_window_and_wrap() -> None:
    seen = SeenSequences(size=1024)
    for seq in range(65000, 65536):
        assert seen.first_time(seq)
    for seq in range(0, 400):
        assert seen.first_time(seq)
    # RTX duplicates from across the wrap are still recognised
    assert not seen.first_time(65535)
    assert not seen.first_time(65400)
    assert not seen.first_time(0)
    # a packet 1024 newer reuses the slot: the old number is forgotten, not confused
    assert seen.first_time(65400 + 1024 - SEQ_MOD)  # == 888
    assert seen.first_time(65400)


def test_seen_sequences_zero_is_not_pre_seen() -> None:
    seen = SeenSequences(size=16)
    assert seen.first_time(0)
    assert seen.first_time(16)  # same slot, different number
    assert seen.first_time(0)


# -- PacketHistory ------------------------------------------------------------------------------


def test_history_put_get() -> None:
    h = PacketHistory(size=8)
    h.put(5, b"five")
    assert h.get(5) == b"five"
    assert h.get(6) is None
    assert h.get(13) is None  # same slot, never stored


def test_history_overwritten_slot_does_not_return_stale_packet() -> None:
    h = PacketHistory(size=8)
    h.put(3, b"old")
    h.put(11, b"new")  # 11 % 8 == 3
    assert h.get(11) == b"new"
    assert h.get(3) is None


def test_history_across_wrap() -> None:
    h = PacketHistory(size=512)
    for seq in range(65300, 65300 + 500):
        h.put(seq % SEQ_MOD, seq % SEQ_MOD)
    for seq in range(65300, 65300 + 500):
        assert h.get(seq % SEQ_MOD) == seq % SEQ_MOD
    assert h.get(65299) is None
    # 512 packets later, the first one is gone (its slot holds a newer number)
    h.put((65300 + 512) % SEQ_MOD, "later")
    assert h.get(65300) is None
    assert h.get((65300 + 512) % SEQ_MOD) == "later"


def test_history_initial_slots_are_empty() -> None:
    h = PacketHistory(size=4)
    assert all(h.get(s) is None for s in range(8))
