"""server/sfu/nack.py: when the node asks a publisher (again) for a missing packet."""

from __future__ import annotations

from server.sfu.nack import MAX_TRIES, RENACK_MIN_MS, NackSchedule


def test_a_new_gap_is_asked_for_at_once_then_again_after_the_minimum() -> None:
    schedule = NackSchedule()
    assert schedule.due({101, 102}, 1000, new_gap=True) == [101, 102]
    assert schedule.due({101, 102}, 1000 + RENACK_MIN_MS - 1, new_gap=False) == []
    assert schedule.due({101, 102}, 1000 + RENACK_MIN_MS, new_gap=False) == [101, 102]
    # A newer gap is asked for at once; the older ones keep their own time.
    assert schedule.due({101, 102, 110}, 1000 + RENACK_MIN_MS + 5, new_gap=True) == [110]


def test_after_a_measured_round_trip_a_packet_is_asked_for_again_only_after_it() -> None:
    schedule = NackSchedule()
    schedule.due({50}, 0, new_gap=True)
    schedule.arrived(50, 200)  # the retransmission came 200 ms after the NACK
    assert schedule.rtt_ms == 200
    assert schedule.interval_ms() == 300
    assert schedule.due({70}, 1000, new_gap=True) == [70]
    assert schedule.due({70}, 1020, new_gap=False) == [], "not every 20 ms on a slow link"
    assert schedule.due({70}, 1299, new_gap=False) == []
    assert schedule.due({70}, 1300, new_gap=False) == [70]


def test_the_round_trip_is_smoothed_and_bounded() -> None:
    schedule = NackSchedule()
    schedule.due({1}, 0, new_gap=True)
    schedule.arrived(1, 100)
    schedule.due({2}, 1000, new_gap=True)
    schedule.arrived(2, 1020)  # one quick answer moves the estimate by an eighth
    assert schedule.rtt_ms == 100 + (20 - 100) / 8
    schedule.due({3}, 2000, new_gap=True)
    schedule.arrived(3, 60_000)  # a straggler counts as RTT_MAX_MS at most
    assert schedule.rtt_ms <= 1000
    # A packet the node never asked for (reordered, not lost) is no sample.
    before = schedule.rtt_ms
    schedule.arrived(99, 70_000)
    assert schedule.rtt_ms == before


def test_a_packet_is_asked_for_at_most_max_tries_times() -> None:
    schedule = NackSchedule()
    asked = 0
    for step in range(3 * MAX_TRIES):
        asked += len(schedule.due({7}, step * RENACK_MIN_MS, new_gap=step == 0))
    assert asked == MAX_TRIES
    # Given up: nothing is due any more, however long it stays missing.
    assert schedule.due({7}, 10**6, new_gap=False) == []


def test_what_aiortc_no_longer_counts_missing_is_forgotten() -> None:
    schedule = NackSchedule()
    schedule.due(set(range(100, 228)), 0, new_gap=True)
    # aiortc's window moved on (gaps older than 128 packets dropped): only 300 is missing.
    assert schedule.due({300}, 5, new_gap=True) == [300]
    assert len(schedule._asked) == 1
    schedule.arrived(150, 400)  # long forgotten: no round-trip sample from it
    assert schedule.rtt_ms is None


def test_the_round_trip_counts_from_the_first_time_a_packet_was_asked_for() -> None:
    # Until a round trip is known the node asks every 20 ms: the answer to the first NACK
    # comes after the later ones went out, and the time since the last would be far too short.
    schedule = NackSchedule()
    for at in (0, 20, 40, 60, 80):
        assert schedule.due({9}, at, new_gap=at == 0) == [9]
    schedule.arrived(9, 100)
    assert schedule.rtt_ms == 100


def test_a_packet_given_up_on_is_no_round_trip_sample() -> None:
    schedule = NackSchedule()
    for n in range(MAX_TRIES):
        schedule.due({5}, n * RENACK_MIN_MS, new_gap=n == 0)
    schedule.arrived(5, 900)
    assert schedule.rtt_ms is None
