"""recording/room_client.py without a node: what a refused join tells the worker."""

from __future__ import annotations

from recording.room_client import JoinRefused


def test_a_wrong_node_refusal_names_the_home_node_to_try() -> None:
    moved = JoinRefused("wrong_node", "elsewhere", "https://hop.huyen-a.gov.vn:8443/r/hop-a")
    assert moved.home == "https://hop.huyen-a.gov.vn:8443"
    assert moved.code == "wrong_node"


def test_other_refusals_name_no_home() -> None:
    assert JoinRefused("conflict", "not this recording", "https://x/r/y").home is None
    assert JoinRefused("wrong_node", "no url").home is None
