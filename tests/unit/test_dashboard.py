"""The dashboard's figures (server/dashboard.py): online rules, totals, rooms, room site states."""

from __future__ import annotations

from typing import Any

import pytest

from server.dashboard import (
    SiteRow,
    build_dashboard,
    count_states,
    descendants,
    room_sites_state,
)
from server.presence import NodeInfo, NodeLoad, NodeRecord, ParticipantPresence

# A province with two communes straight below it and one district holding a third.
SITES = [
    SiteRow("P1", "Tỉnh Một", "province", None),
    SiteRow("C1", "Xã Đông", "commune", "P1"),
    SiteRow("C2", "Xã Tây", "commune", "P1"),
    SiteRow("D1", "Huyện Nam", "district", "P1"),
    SiteRow("C3", "Xã Nam", "commune", "D1"),
]


def node(node_id: str, site: str | None, *, alive: bool = True) -> NodeRecord:
    return NodeRecord(
        NodeInfo(node_id, f"http://{node_id}:8080", site, 200),
        NodeLoad(cpu_percent=12.5, participants=3, streams=7),
        seen_at=1000.0,
        alive=alive,
    )


def person(
    pid: str, site: str | None, state: str = "connected", room: str = "giao-ban", since: float = 1.0
) -> ParticipantPresence:
    return ParticipantPresence(room, pid, f"Người {pid}", site, "n1", state, since)


def by_code(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["code"]: row for row in data["sites"]}


@pytest.mark.parametrize(
    ("nodes", "people", "online", "node_states"),
    [
        # Nobody and no node: every site offline, no node named.
        ([], [], set(), {}),
        # A connected participant puts exactly its own site online, not its parent.
        ([], [person("a", "C1")], {"C1"}, {}),
        # Reconnecting and lobby participants do not make a site online.
        ([], [person("a", "C1", "reconnecting"), person("b", "C2", "lobby")], set(), {}),
        # A live node of a site's own puts it online with nobody connected.
        ([node("n1", "P1")], [], {"P1"}, {"P1": "online"}),
        # A dead node: the site shows its node offline, and the site is not online.
        ([node("n2", "C3", alive=False)], [], set(), {"C3": "offline"}),
        # One live node of two for the same site is enough.
        ([node("n2", "C2", alive=False), node("n3", "C2")], [], {"C2"}, {"C2": "online"}),
        # A participant of an unknown site or none puts no site online.
        ([], [person("a", "X9"), person("b", None)], set(), {}),
    ],
)
def test_online_rules(
    nodes: list[NodeRecord],
    people: list[ParticipantPresence],
    online: set[str],
    node_states: dict[str, str],
) -> None:
    data = build_dashboard(SITES, nodes, people, {})
    rows = by_code(data)
    assert {code for code, row in rows.items() if row["online"]} == online
    assert {code: row["node"] for code, row in rows.items() if row["node"]} == node_states


@pytest.mark.parametrize(
    ("people", "nodes", "totals"),
    [
        (
            [],
            [],
            {
                "province": {"online": 0, "total": 1},
                "district": {"online": 0, "total": 1},
                "commune": {"online": 0, "total": 3},
            },
        ),
        (
            # Two people of one commune count it once.
            [person("a", "C1"), person("b", "C1"), person("c", "C3")],
            [node("n1", "P1")],
            {
                "province": {"online": 1, "total": 1},
                "district": {"online": 0, "total": 1},
                "commune": {"online": 2, "total": 3},
            },
        ),
    ],
)
def test_totals_per_level_in_tree_order(
    people: list[ParticipantPresence], nodes: list[NodeRecord], totals: dict[str, Any]
) -> None:
    data = build_dashboard(SITES, nodes, people, {})
    assert data["totals"] == totals
    assert list(data["totals"]) == ["province", "district", "commune"]


def test_counts_rooms_and_sums_below() -> None:
    people = [
        person("a", "C1", room="giao-ban", since=5.0),
        person("b", "C3", room="giao-ban", since=6.0),
        person("c", "C3", "reconnecting", room="giao-ban", since=7.0),
        person("d", "C3", room="tap-huan", since=2.0),
        person("e", "C2", "lobby", room="tap-huan", since=8.0),
        person("f", None, room="tap-huan", since=9.0),
        person("g", "C2", "lobby", room="cho", since=1.0),  # only a lobby: not live
    ]
    data = build_dashboard(SITES, [], people, {"giao-ban": "Giao ban tuần"})
    rows = by_code(data)
    assert (rows["C3"]["connected"], rows["C3"]["reconnecting"]) == (2, 1)
    assert rows["C3"]["rooms"] == ["giao-ban", "tap-huan"]
    assert rows["C2"]["rooms"] == []  # the lobby is not taking part yet
    assert rows["D1"]["connected"] == 0
    assert rows["D1"]["connected_below"] == 2
    assert rows["P1"]["connected_below"] == 3
    assert rows["C1"]["parent"] == "P1"
    assert [r["slug"] for r in data["rooms"]] == ["tap-huan", "giao-ban"]  # oldest first
    live = {r["slug"]: r for r in data["rooms"]}
    assert live["giao-ban"]["title"] == "Giao ban tuần"
    assert live["tap-huan"]["title"] == "tap-huan"  # unknown to the store: its slug
    assert (live["giao-ban"]["participants"], live["giao-ban"]["reconnecting"]) == (2, 1)
    assert live["giao-ban"]["sites"] == ["C1", "C3"]
    assert (live["tap-huan"]["participants"], live["tap-huan"]["lobby"]) == (2, 1)
    assert data["participants"] == {"connected": 4, "reconnecting": 1, "lobby": 2, "no_site": 1}


def test_nodes_are_listed_with_their_load() -> None:
    data = build_dashboard(SITES, [node("n1", "P1"), node("n2", None, alive=False)], [], {})
    assert data["nodes"][0] == {
        "id": "n1",
        "url": "http://n1:8080",
        "site": "P1",
        "alive": True,
        "cpu": 12.5,
        "participants": 3,
        "streams": 7,
        "capacity": 200,
        "seen_at": 1000.0,
    }
    assert data["nodes"][1]["alive"] is False


def test_a_parent_outside_the_list_makes_a_root() -> None:
    sites = [SiteRow("C1", "Xã", "commune", "GONE")]
    data = build_dashboard(sites, [], [person("a", "C1")], {})
    assert data["sites"][0]["parent"] is None
    assert data["sites"][0]["connected_below"] == 1


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        (["P1"], ["P1", "C1", "C2", "D1", "C3"]),
        (["D1"], ["D1", "C3"]),
        (["C2", "D1", "C2"], ["C2", "D1", "C3"]),
        (["GONE"], ["GONE"]),  # a site deleted since the invitation stays listed
        ([], []),
    ],
)
def test_descendants(codes: list[str], expected: list[str]) -> None:
    assert descendants(codes, SITES) == expected


def test_descendants_survive_a_cycle() -> None:
    sites = [SiteRow("A", "A", "province", "B"), SiteRow("B", "B", "district", "A")]
    assert descendants(["A"], sites) == ["A", "B"]


@pytest.mark.parametrize(
    ("people", "attended", "states"),
    [
        ([], [], {"C1": "not_joined", "C2": "not_joined", "C3": "not_joined"}),
        (
            [person("a", "C1"), person("b", "C1", "reconnecting")],
            [],
            {"C1": "connected", "C2": "not_joined", "C3": "not_joined"},
        ),
        (
            [person("a", "C1", "reconnecting"), person("b", "C2", "lobby")],
            ["C3", None],
            {"C1": "reconnecting", "C2": "lobby", "C3": "left"},
        ),
        # Back after leaving: connected wins over the attendance record.
        ([person("a", "C3")], ["C3"], {"C1": "not_joined", "C2": "not_joined", "C3": "connected"}),
    ],
)
def test_room_site_states(
    people: list[ParticipantPresence], attended: list[str | None], states: dict[str, str]
) -> None:
    rows = room_sites_state(["C1", "C2", "C3"], {s.code: s for s in SITES}, people, attended)
    assert {row["code"]: row["state"] for row in rows} == states
    assert all(row["invited"] for row in rows)


def test_room_sites_from_an_invited_province_and_uninvited_guests() -> None:
    invited = descendants(["D1"], SITES)
    people = [person("a", "C3"), person("b", "C1"), person("c", None)]
    rows = room_sites_state(invited, {s.code: s for s in SITES}, people, ["C2"])
    assert [(r["code"], r["state"], r["invited"]) for r in rows] == [
        ("D1", "not_joined", True),
        ("C3", "connected", True),
        ("C1", "connected", False),
        ("C2", "left", False),
    ]
    c3 = rows[1]
    assert (c3["name"], c3["level"], c3["connected"], c3["names"]) == (
        "Xã Nam",
        "commune",
        1,
        ["Người a"],
    )
    assert count_states(r for r in rows if r["invited"]) == {
        "connected": 1,
        "reconnecting": 0,
        "lobby": 0,
        "left": 0,
        "not_joined": 1,
    }


def test_an_unknown_invited_code_shows_its_code() -> None:
    rows = room_sites_state(["GONE"], {}, [], [])
    assert rows == [
        {
            "code": "GONE",
            "name": "GONE",
            "level": None,
            "state": "not_joined",
            "invited": True,
            "connected": 0,
            "names": [],
        }
    ]
