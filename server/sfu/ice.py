"""Which addresses aioice offers as ICE host candidates (process-wide, set once at start)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import aioice.ice

_original_get_host_addresses = aioice.ice.get_host_addresses


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer exactly `addresses` as host candidates; an empty list restores aioice's default.

    aioice leaves 127.0.0.1 out and offers every other interface: tests pass ["127.0.0.1"] so
    their media stays on loopback, operators list the addresses their sites can reach.
    """
    chosen = list(addresses)
    if not chosen:
        aioice.ice.get_host_addresses = _original_get_host_addresses
        return

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = get_host_addresses


_HOST_CANDIDATE = re.compile(
    r"^(a=candidate:\S+ \d+ udp \d+ )(\S+)( \d+ typ host.*)$", re.MULTILINE | re.IGNORECASE
)


def add_public_address(sdp: str, public_address: str) -> str:
    """Repeat each host candidate with `public_address` (a 1:1 NAT keeps the port)."""

    public_is_v6 = ":" in public_address

    def repeat(match: re.Match[str]) -> str:
        if (":" in match.group(2)) != public_is_v6:
            return match.group(0)  # an IPv6 candidate cannot stand for an IPv4 address
        foundation, rest = match.group(1).split(" ", 1)
        return f"{match.group(0)}\n{foundation}n {rest}{public_address}{match.group(3)}"

    return _HOST_CANDIDATE.sub(repeat, sdp.replace("\r\n", "\n")).replace("\n", "\r\n")
