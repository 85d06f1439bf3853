"""The rooms this node hosts, created on first join and dropped when the last one leaves."""

from __future__ import annotations

import logging

from server.room import Notifier, Room
from server.sfu.connections import MediaSettings
from server.sfu.stats import SfuStats

log = logging.getLogger(__name__)


class Rooms:
    """Registry of live rooms on this node."""

    def __init__(self, settings: MediaSettings, stats: SfuStats) -> None:
        self.settings = settings
        self.stats = stats
        self.by_name: dict[str, Room] = {}
        self.notifier: Notifier | None = None

    def get_or_create(self, name: str, title: str = "", mode: str = "discussion") -> Room:
        room = self.by_name.get(name)
        if room is None:
            assert self.notifier is not None, "Rooms.notifier is wired by the app"
            room = Room(name, self.settings, self.stats, self.notifier, title, mode)
            self.by_name[name] = room
            log.info("room opened room=%s", name)
        return room

    async def discard_if_empty(self, room: Room) -> None:
        if room.empty and self.by_name.get(room.name) is room:
            del self.by_name[room.name]
            await room.close()
            log.info("room closed room=%s", room.name)

    @property
    def participant_count(self) -> int:
        return sum(len(r.people) for r in self.by_name.values())

    async def close(self) -> None:
        for room in list(self.by_name.values()):
            await room.close()
        self.by_name.clear()
