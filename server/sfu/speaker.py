"""Active-speaker detection from RFC 6464 audio levels (pure, no I/O).

The level is -dBov: 0 is the loudest, 127 silence. Each audio track's level is smoothed over a
short window; the loudest participant above a floor, held for a minimum time, is the speaker.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class _Level:
    value: float = 127.0
    updated_at: float = 0.0


class ActiveSpeakerDetector:
    """Tracks smoothed audio levels per participant and picks the active speaker."""

    def __init__(
        self, floor: int = 70, smoothing: float = 0.2, stale_after: float = 1.0, hold: float = 0.8
    ) -> None:
        self.floor = floor  # quieter than -70 dBov never counts as speech
        self.smoothing = smoothing
        self.stale_after = stale_after
        self.hold = hold
        self._levels: dict[str, _Level] = {}
        self.speaker: str | None = None
        self._speaker_since = 0.0

    def add(self, participant_id: str, level: int, voice: bool, now: float) -> None:
        # The level alone decides: Chromium sets the voice flag, aiortc never does, and the
        # floor already keeps background noise out.
        entry = self._levels.setdefault(participant_id, _Level())
        sample = float(level)
        entry.value += self.smoothing * (sample - entry.value)
        entry.updated_at = now

    def forget(self, participant_id: str) -> None:
        self._levels.pop(participant_id, None)
        if self.speaker == participant_id:
            self.speaker = None

    def level_of(self, participant_id: str) -> int:
        entry = self._levels.get(participant_id)
        return 127 if entry is None else round(entry.value)

    def update(self, now: float) -> str | bool | None:
        """Re-evaluate; returns the new speaker id (or None) when it changed, else False."""
        best: str | None = None
        best_value = float(self.floor)
        for pid, entry in self._levels.items():
            if now - entry.updated_at > self.stale_after:
                continue
            if entry.value < best_value:
                best, best_value = pid, entry.value
        if best == self.speaker:
            return False
        if best is None and self.speaker is not None:
            current = self._levels.get(self.speaker)
            still_fresh = current is not None and now - current.updated_at <= self.stale_after
            if still_fresh and now - self._speaker_since < self.hold:
                return False
        elif self.speaker is not None and now - self._speaker_since < self.hold:
            return False
        self.speaker = best
        self._speaker_since = now
        return best
