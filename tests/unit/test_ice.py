"""server/sfu/ice.py: host addresses aioice offers, public address of a 1:1 NAT in the SDP."""

from __future__ import annotations

import re
from collections.abc import Iterator

import aioice.ice
import pytest

from server.sfu import ice

OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 3912345678 3912345678 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 50000 UDP/TLS/RTP/SAVPF 111",
        "c=IN IP4 10.0.0.5",
        "a=mid:0",
        "a=candidate:0f3b1c2d 1 udp 2130706431 10.0.0.5 50000 typ host",
        "a=candidate:9a8b7c6d 1 udp 2130706175 192.168.1.10 50002 typ host",
        "a=candidate:4e5f6a7b 1 udp 1694498815 198.51.100.9 61000 typ srflx"
        " raddr 10.0.0.5 rport 50000",
        "a=candidate:1c2d3e4f 1 udp 16777215 198.51.100.20 3478 typ relay"
        " raddr 198.51.100.9 rport 61000",
        "a=end-of-candidates",
        "m=video 50000 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 10.0.0.5",
        "a=mid:1",
        "a=candidate:0f3b1c2d 1 udp 2130706431 10.0.0.5 50000 typ host",
        "",
    ]
)
PUBLIC = "203.0.113.7"

CANDIDATE = re.compile(
    r"^a=candidate:(?P<foundation>\S+) (?P<component>\d+) (?P<transport>\S+) (?P<priority>\d+) "
    r"(?P<ip>\S+) (?P<port>\d+) typ (?P<type>\S+)(?P<rest>.*)$"
)


def candidates(sdp: str) -> list[dict[str, str]]:
    out = []
    for line in sdp.split("\r\n"):
        match = CANDIDATE.match(line)
        if match:
            out.append(match.groupdict())
    return out


# -- add_public_address -------------------------------------------------------------------------


def test_each_host_candidate_is_repeated_with_the_public_ip_and_same_port() -> None:
    result = ice.add_public_address(OFFER, PUBLIC)
    before, after = candidates(OFFER), candidates(result)
    hosts = [c for c in before if c["type"] == "host"]
    assert len(after) == len(before) + len(hosts)
    public = [c for c in after if c["ip"] == PUBLIC]
    assert len(public) == len(hosts) == 3
    for host, pub in zip(hosts, public, strict=True):
        assert pub["port"] == host["port"]
        assert pub["type"] == "host"
        assert pub["component"] == host["component"]
        assert pub["transport"] == host["transport"]
        assert pub["priority"] == host["priority"]
        assert pub["foundation"] != host["foundation"]  # distinct candidate


def test_public_candidate_follows_its_host_candidate() -> None:
    lines = ice.add_public_address(OFFER, PUBLIC).split("\r\n")
    for i, line in enumerate(lines):
        if " typ host" in line and PUBLIC not in line:
            nxt = CANDIDATE.match(lines[i + 1])
            assert nxt and nxt["ip"] == PUBLIC
            assert nxt["port"] == CANDIDATE.match(line)["port"]


def test_srflx_and_relay_candidates_are_untouched() -> None:
    result = ice.add_public_address(OFFER, PUBLIC)
    for line in OFFER.split("\r\n"):
        if "typ srflx" in line or "typ relay" in line:
            assert result.count(line) == 1
    assert not [c for c in candidates(result) if c["type"] != "host" and c["ip"] == PUBLIC]


def test_other_lines_are_unchanged_and_crlf_kept() -> None:
    result = ice.add_public_address(OFFER, PUBLIC)
    assert [line for line in result.split("\r\n") if PUBLIC not in line] == OFFER.split("\r\n")
    assert "\n" not in result.replace("\r\n", "")
    assert result.startswith("v=0\r\n")
    assert result.endswith("\r\n")


def test_lf_only_sdp_is_accepted_and_returned_with_crlf() -> None:
    result = ice.add_public_address(OFFER.replace("\r\n", "\n"), PUBLIC)
    assert result == ice.add_public_address(OFFER, PUBLIC)


def test_sdp_without_host_candidates_is_unchanged() -> None:
    sdp = "\r\n".join(line for line in OFFER.split("\r\n") if "typ host" not in line)
    assert ice.add_public_address(sdp, PUBLIC) == sdp


def test_host_candidate_with_extensions_keeps_them() -> None:
    line = "a=candidate:abc 1 udp 2122260223 10.0.0.5 54400 typ host generation 0 network-id 1"
    sdp = f"v=0\r\n{line}\r\n"
    result = ice.add_public_address(sdp, PUBLIC)
    assert result == (
        f"v=0\r\n{line}\r\n"
        f"a=candidate:abcn 1 udp 2122260223 {PUBLIC} 54400 typ host generation 0 network-id 1\r\n"
    )


def test_tcp_host_candidates_are_not_repeated() -> None:
    line = "a=candidate:1 1 tcp 1518280447 10.0.0.5 9 typ host tcptype active"
    sdp = f"v=0\r\n{line}\r\n"
    assert ice.add_public_address(sdp, PUBLIC) == sdp


def test_result_is_parsed_by_aioice() -> None:
    result = ice.add_public_address(OFFER, PUBLIC)
    parsed = [
        aioice.Candidate.from_sdp(line[len("a=") :])
        for line in result.split("\r\n")
        if line.startswith("a=candidate:")
    ]
    public = [c for c in parsed if c.host == PUBLIC]
    assert {c.port for c in public} == {50000, 50002}
    assert all(c.type == "host" for c in public)


# -- restrict_host_addresses --------------------------------------------------------------------


@pytest.fixture
def keep_host_addresses() -> Iterator[None]:
    """Put back whatever is installed now (tests/conftest.py restricts to loopback)."""
    saved = aioice.ice.get_host_addresses
    yield
    aioice.ice.get_host_addresses = saved


@pytest.mark.usefixtures("keep_host_addresses")
def test_restrict_to_loopback() -> None:
    ice.restrict_host_addresses(["127.0.0.1"])
    assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
    assert aioice.ice.get_host_addresses(False, True) == []
    assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1"]


@pytest.mark.usefixtures("keep_host_addresses")
def test_restrict_filters_ipv6_by_family() -> None:
    ice.restrict_host_addresses(["10.0.0.5", "fd00::5", "192.168.1.10", "::1"])
    assert aioice.ice.get_host_addresses(True, False) == ["10.0.0.5", "192.168.1.10"]
    assert aioice.ice.get_host_addresses(False, True) == ["fd00::5", "::1"]
    assert aioice.ice.get_host_addresses(True, True) == [
        "10.0.0.5",
        "fd00::5",
        "192.168.1.10",
        "::1",
    ]
    assert aioice.ice.get_host_addresses(False, False) == []


@pytest.mark.usefixtures("keep_host_addresses")
def test_restrict_copies_the_list() -> None:
    addresses = ["10.0.0.5"]
    ice.restrict_host_addresses(addresses)
    addresses.append("10.0.0.6")
    assert aioice.ice.get_host_addresses(True, False) == ["10.0.0.5"]


@pytest.mark.usefixtures("keep_host_addresses")
def test_restrict_accepts_any_sequence() -> None:
    ice.restrict_host_addresses(("10.0.0.7",))
    assert aioice.ice.get_host_addresses(True, True) == ["10.0.0.7"]


@pytest.mark.usefixtures("keep_host_addresses")
def test_empty_list_restores_aioice_default() -> None:
    ice.restrict_host_addresses(["127.0.0.1"])
    ice.restrict_host_addresses([])
    assert aioice.ice.get_host_addresses is ice._original_get_host_addresses
    assert aioice.ice.get_host_addresses.__module__ == "aioice.ice"
    # aioice's own rule: 127.0.0.1 is never offered
    assert "127.0.0.1" not in aioice.ice.get_host_addresses(True, False)


@pytest.mark.usefixtures("keep_host_addresses")
def test_later_call_replaces_earlier_one() -> None:
    ice.restrict_host_addresses(["10.0.0.1"])
    ice.restrict_host_addresses(["10.0.0.2"])
    assert aioice.ice.get_host_addresses(True, False) == ["10.0.0.2"]


def test_fixture_restored_the_session_restriction() -> None:
    """tests/conftest.py keeps media on loopback for the whole session; the tests above must
    not have undone that."""
    assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
