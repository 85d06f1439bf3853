"""The live dashboard's figures, assembled from the site tree and presence: pure functions.

`build_dashboard` makes the whole-tree view (each site online or not, its node, its connected
participants and live meetings, totals per level, the nodes and the live meetings);
`room_sites_state` makes one room's view (each invited site: connected, reconnecting, in the
lobby, left or not joined). Both take plain rows and presence records and return JSON-ready
dicts: nothing here reads the store or presence, so the rules are tested alone
(tests/unit/test_dashboard.py) and hold the same with one node or a Redis cluster.

Rules: a site is *online* when at least one participant of exactly that site is connected, or
a live node serves that site itself; a site's `node` is "online" when a live node serves it,
"offline" when only dead ones do, None when no node names it. Participants count where their
own site is (`connected`), and their ancestors show the sum below them (`connected_below`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.presence import NodeRecord, ParticipantPresence

# Levels in tree order; a level outside this list (data from elsewhere) sorts after them.
LEVELS = ("central", "province", "district", "commune", "other")
CONNECTED = "connected"
RECONNECTING = "reconnecting"
LOBBY = "lobby"
LEFT = "left"
NOT_JOINED = "not_joined"
# A room's site takes the first state that applies, in this order.
SITE_STATES = (CONNECTED, RECONNECTING, LOBBY, LEFT, NOT_JOINED)
# Presence states that mean "in the meeting" (a reconnecting one holds its seat for its TTL).
IN_MEETING = frozenset({CONNECTED, RECONNECTING})


class SiteLike(Protocol):
    """What the dashboard needs of a site: its code, name, level and parent's code."""

    @property
    def code(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def level(self) -> str: ...

    @property
    def parent(self) -> str | None: ...


@dataclass(frozen=True)
class SiteRow:
    """One site as the dashboard reads it (the parent by code, not by database id)."""

    code: str
    name: str
    level: str
    parent: str | None


def _level_order(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else len(LEVELS)


def children_of(sites: Iterable[SiteLike]) -> dict[str, list[str]]:
    """Parent code → its children's codes, in the order given; a parent missing from `sites`
    is left out (its children are roots)."""
    rows = list(sites)
    known = {s.code for s in rows}
    children: dict[str, list[str]] = {}
    for site in rows:
        if site.parent is not None and site.parent in known and site.parent != site.code:
            children.setdefault(site.parent, []).append(site.code)
    return children


def descendants(codes: Iterable[str], sites: Iterable[SiteLike]) -> list[str]:
    """`codes` and every site below them, each once, parents before children.

    A code unknown to `sites` is kept as given (an invitation may name a site deleted since);
    a cycle in bad data ends where it comes back."""
    children = children_of(sites)
    found: dict[str, None] = {}
    stack = list(reversed(list(codes)))
    while stack:
        code = stack.pop()
        if code in found:
            continue
        found[code] = None
        stack.extend(reversed(children.get(code, [])))
    return list(found)


def _node_json(record: NodeRecord) -> dict[str, Any]:
    return {
        "id": record.info.node_id,
        "url": record.info.url,
        "site": record.info.site,
        "alive": record.alive,
        "cpu": record.load.cpu_percent,
        "participants": record.load.participants,
        "streams": record.load.streams,
        "capacity": record.info.capacity,
        "seen_at": record.seen_at,
    }


def _node_state(records: Sequence[NodeRecord]) -> str | None:
    if not records:
        return None
    return "online" if any(r.alive for r in records) else "offline"


def build_dashboard(
    sites: Sequence[SiteLike],
    nodes: Sequence[NodeRecord],
    participants: Sequence[ParticipantPresence],
    room_titles: Mapping[str, str],
) -> dict[str, Any]:
    """The whole-tree view as a JSON-ready dict: ``nodes`` (as given), ``sites`` (in the
    order given), ``totals`` per level present ({"online", "total"}, in tree order), ``rooms``
    (the live meetings, oldest first) and ``participants`` (counts by state, and connected
    ones whose site is unknown or missing as ``no_site``).

    A room counts as live while one of its participants is connected or reconnecting; its title
    is the slug when `room_titles` does not know it."""
    nodes_by_site: dict[str, list[NodeRecord]] = {}
    for record in nodes:
        if record.info.site:
            nodes_by_site.setdefault(record.info.site, []).append(record)

    connected: Counter[str] = Counter()
    reconnecting: Counter[str] = Counter()
    site_rooms: dict[str, set[str]] = {}
    rooms: dict[str, dict[str, Any]] = {}
    states: Counter[str] = Counter()
    known = {s.code for s in sites}
    no_site = 0
    for p in participants:
        states[p.state] += 1
        if p.state == CONNECTED and (p.site is None or p.site not in known):
            no_site += 1
        if p.site is not None:
            if p.state == CONNECTED:
                connected[p.site] += 1
            elif p.state == RECONNECTING:
                reconnecting[p.site] += 1
        room = rooms.setdefault(
            p.room,
            {
                "slug": p.room,
                "title": room_titles.get(p.room, p.room),
                "participants": 0,
                "reconnecting": 0,
                "lobby": 0,
                "sites": set(),
                "since": p.since,
            },
        )
        room["since"] = min(room["since"], p.since)
        if p.state == CONNECTED:
            room["participants"] += 1
        elif p.state == RECONNECTING:
            room["reconnecting"] += 1
        elif p.state == LOBBY:
            room["lobby"] += 1
        if p.state in IN_MEETING and p.site is not None:
            room["sites"].add(p.site)
            site_rooms.setdefault(p.site, set()).add(p.room)

    # Sum below each site, children first; `descendants` orders parents before children.
    children = children_of(sites)
    below: dict[str, int] = {}
    roots = [s.code for s in sites if s.parent is None or s.parent not in known]
    for code in reversed(descendants(roots, sites)):
        below[code] = connected[code] + sum(below.get(c, 0) for c in children.get(code, []))

    site_rows: list[dict[str, Any]] = []
    totals: dict[str, dict[str, int]] = {}
    for site in sorted(sites, key=lambda s: _level_order(s.level)):
        totals.setdefault(site.level, {"online": 0, "total": 0})
    for site in sites:
        node = _node_state(nodes_by_site.get(site.code, []))
        online = connected[site.code] > 0 or node == "online"
        totals[site.level]["total"] += 1
        totals[site.level]["online"] += int(online)
        site_rows.append(
            {
                "code": site.code,
                "name": site.name,
                "level": site.level,
                "parent": site.parent if site.parent in known else None,
                "node": node,
                "online": online,
                "connected": connected[site.code],
                "reconnecting": reconnecting[site.code],
                "connected_below": below.get(site.code, connected[site.code]),
                "rooms": sorted(site_rooms.get(site.code, ())),
            }
        )

    live = [
        {**room, "sites": sorted(room["sites"])}
        for room in rooms.values()
        if room["participants"] or room["reconnecting"]
    ]
    live.sort(key=lambda room: (room["since"], room["slug"]))
    return {
        "nodes": [_node_json(r) for r in nodes],
        "sites": site_rows,
        "totals": totals,
        "rooms": live,
        "participants": {
            CONNECTED: states[CONNECTED],
            RECONNECTING: states[RECONNECTING],
            LOBBY: states[LOBBY],
            "no_site": no_site,
        },
    }


def room_sites_state(
    invited_codes: Sequence[str],
    sites: Mapping[str, SiteLike],
    participants: Sequence[ParticipantPresence],
    attended: Iterable[str | None],
) -> list[dict[str, Any]]:
    """Each site of one room with its state: the invited codes (their descendants included by
    the caller, see `descendants`) in the order given, then the sites present or attended that
    were not invited (``invited: False``), by code.

    A site is connected when one of its participants is, else reconnecting, else in the lobby,
    else left when an attendance stay names it, else not joined. `participants` are the room's
    own; `attended` the site codes of its attendance stays (None ignored)."""
    in_room = [p for p in participants if p.site is not None]
    by_site: dict[str, list[ParticipantPresence]] = {}
    for p in in_room:
        by_site.setdefault(p.site, []).append(p)  # type: ignore[arg-type]
    was_there = {code for code in attended if code}
    invited = list(dict.fromkeys(invited_codes))
    extra = sorted((set(by_site) | was_there) - set(invited))

    rows: list[dict[str, Any]] = []
    for code, is_invited in [(c, True) for c in invited] + [(c, False) for c in extra]:
        present = by_site.get(code, [])
        here = {p.state for p in present}
        if CONNECTED in here:
            state = CONNECTED
        elif RECONNECTING in here:
            state = RECONNECTING
        elif LOBBY in here:
            state = LOBBY
        elif code in was_there:
            state = LEFT
        else:
            state = NOT_JOINED
        site = sites.get(code)
        rows.append(
            {
                "code": code,
                "name": site.name if site is not None else code,
                "level": site.level if site is not None else None,
                "state": state,
                "invited": is_invited,
                "connected": sum(1 for p in present if p.state == CONNECTED),
                "names": [p.name for p in present if p.state in IN_MEETING],
            }
        )
    return rows


def count_states(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How many of `room_sites_state`'s rows are in each state (every state, zeros included)."""
    counts = dict.fromkeys(SITE_STATES, 0)
    for row in rows:
        counts[row["state"]] += 1
    return counts
