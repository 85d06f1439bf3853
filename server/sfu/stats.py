"""Plain counters of the media plane; /metrics reads them at scrape time (no locks per packet)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SfuStats:
    received_packets: int = 0
    duplicate_packets: int = 0  # RTX copies of packets already forwarded
    forwarded_packets: int = 0
    forwarded_bytes: int = 0
    dropped_packets: int = 0  # slow subscriber, muted, waiting for a keyframe excluded
    retransmitted_packets: int = 0  # answers to subscribers' NACKs
    keyframe_requests: int = 0  # PLIs sent to publishers
    peer_connections: int = 0
