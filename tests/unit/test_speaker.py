"""server/sfu/speaker.py: active speaker from RFC 6464 levels (-dBov: lower is louder)."""

from __future__ import annotations

import pytest

from server.sfu.speaker import ActiveSpeakerDetector

PACKET = 0.02  # one audio packet every 20 ms


def speak(
    det: ActiveSpeakerDetector,
    levels: dict[str, int | None],
    start: float,
    duration: float,
) -> float:
    """Feed a packet every 20 ms for each participant (None: silence, level 127)."""
    n = round(duration / PACKET)
    t = start
    for k in range(n):
        t = start + k * PACKET
        for pid, level in levels.items():
            det.add(pid, 127 if level is None else level, level is not None, t)
    return t


def test_nobody_speaks_at_first() -> None:
    det = ActiveSpeakerDetector()
    assert det.speaker is None
    assert det.update(0.0) is False
    assert det.level_of("nobody") == 127


def test_loud_participant_becomes_speaker() -> None:
    det = ActiveSpeakerDetector()
    t = speak(det, {"a": 20}, 0.0, 0.5)
    assert det.update(t) == "a"
    assert det.speaker == "a"
    assert det.update(t) is False  # no change, no event


def test_loudest_wins() -> None:
    det = ActiveSpeakerDetector()
    t = speak(det, {"quiet": 50, "loud": 10, "mid": 30}, 0.0, 1.0)
    assert det.update(t) == "loud"
    assert det.level_of("loud") < det.level_of("mid") < det.level_of("quiet")


def test_level_is_smoothed_towards_samples() -> None:
    det = ActiveSpeakerDetector(smoothing=0.5)
    det.add("a", 27, True, 0.0)
    assert det.level_of("a") == 77  # 127 + 0.5 * (27 - 127)
    det.add("a", 27, True, 0.02)
    assert det.level_of("a") == 52
    det.add("a", 127, False, 0.04)  # silence pulls it back
    assert det.level_of("a") == 90


def test_one_loud_packet_is_not_speech() -> None:
    det = ActiveSpeakerDetector()
    det.add("cough", 0, True, 0.0)
    assert det.update(0.0) is False
    assert det.speaker is None


def test_levels_below_floor_never_count() -> None:
    det = ActiveSpeakerDetector(floor=70)
    t = speak(det, {"hum": 75, "noise": 90}, 0.0, 3.0)
    assert det.update(t) is False
    assert det.speaker is None


def test_level_exactly_at_floor_is_not_speech() -> None:
    det = ActiveSpeakerDetector(floor=70, smoothing=1.0)
    det.add("a", 70, True, 0.0)
    assert det.update(0.0) is False
    det.add("a", 69, True, 0.02)
    assert det.update(0.02) == "a"


def test_level_alone_decides_voice_flag_is_ignored() -> None:
    """aiortc publishers never set the RFC 6464 V flag: a loud level counts without it."""
    det = ActiveSpeakerDetector()
    for k in range(50):
        det.add("aiortc-peer", 5, False, k * PACKET)
    assert det.level_of("aiortc-peer") == 5
    assert det.update(1.0) == "aiortc-peer"


def test_hold_prevents_flapping() -> None:
    det = ActiveSpeakerDetector(hold=0.8, smoothing=1.0)
    det.add("a", 20, True, 0.0)
    assert det.update(0.0) == "a"
    # b gets louder right away: a keeps the floor for the hold time
    det.add("a", 40, True, 0.1)
    det.add("b", 10, True, 0.1)
    assert det.update(0.1) is False
    assert det.speaker == "a"
    det.add("a", 40, True, 0.7)
    det.add("b", 10, True, 0.7)
    assert det.update(0.7) is False
    det.add("a", 40, True, 0.8)
    det.add("b", 10, True, 0.8)
    assert det.update(0.8) == "b"
    # and a cannot take it straight back
    det.add("a", 5, True, 0.9)
    det.add("b", 30, True, 0.9)
    assert det.update(0.9) is False
    assert det.speaker == "b"
    det.add("a", 5, True, 1.6)
    assert det.update(1.6) == "a"


def test_speaker_falling_silent_is_held_then_cleared() -> None:
    det = ActiveSpeakerDetector(hold=0.8, smoothing=1.0)
    det.add("a", 20, True, 0.0)
    assert det.update(0.0) == "a"
    det.add("a", 127, False, 0.2)  # silent but still sending
    assert det.update(0.2) is False
    assert det.speaker == "a"
    det.add("a", 127, False, 0.9)
    assert det.update(0.9) is None  # changed: nobody speaks
    assert det.speaker is None
    assert det.update(1.0) is False


def test_stale_levels_are_ignored() -> None:
    det = ActiveSpeakerDetector(stale_after=1.0)
    t = speak(det, {"gone": 5}, 0.0, 1.0)
    assert det.update(t) == "gone"
    # "gone" stops sending packets (no BYE, no forget): after stale_after it no longer counts
    assert det.update(t + 1.0) is False
    assert det.update(t + 1.01) is None
    assert det.speaker is None


def test_stale_loud_level_does_not_beat_a_fresh_quieter_one() -> None:
    det = ActiveSpeakerDetector(stale_after=1.0, hold=0.0)
    speak(det, {"old": 1}, 0.0, 1.0)
    t = speak(det, {"new": 40}, 2.5, 1.0)
    assert det.update(t) == "new"


def test_stale_speaker_is_replaced_by_a_fresh_one() -> None:
    det = ActiveSpeakerDetector(stale_after=1.0, hold=0.8)
    t = speak(det, {"a": 10}, 0.0, 0.5)
    assert det.update(t) == "a"
    t2 = speak(det, {"b": 30}, t + 0.5, 1.0)
    assert t2 - t > 1.0  # a is stale by now, and held long enough
    assert det.update(t2) == "b"


def test_forget_removes_participant_and_speaker() -> None:
    det = ActiveSpeakerDetector()
    t = speak(det, {"a": 10, "b": 30}, 0.0, 1.0)
    assert det.update(t) == "a"
    det.forget("a")
    assert det.speaker is None
    assert det.level_of("a") == 127
    # b takes over at once: the hold belonged to a speaker who left
    assert det.update(t) == "b"


def test_forget_unknown_or_non_speaker_is_harmless() -> None:
    det = ActiveSpeakerDetector()
    t = speak(det, {"a": 10, "b": 30}, 0.0, 1.0)
    assert det.update(t) == "a"
    det.forget("nobody")
    det.forget("b")
    assert det.speaker == "a"
    assert det.level_of("b") == 127
    assert det.update(t) is False


@pytest.mark.parametrize("level", [0, 127])
def test_level_of_is_an_int_in_range(level: int) -> None:
    det = ActiveSpeakerDetector()
    speak(det, {"a": level}, 0.0, 2.0)
    value = det.level_of("a")
    assert isinstance(value, int)
    assert 0 <= value <= 127
    assert value == level
