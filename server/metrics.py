"""Prometheus metrics of a node: counters of state changes, and media-plane figures read
from plain counters at scrape time (nothing locks on the per-packet path)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from server.rooms import Rooms
from server.sfu import fanout
from server.sfu.stats import SfuStats


class _MediaCollector(Collector):
    def __init__(self, rooms: Rooms, stats: SfuStats) -> None:
        self._rooms = rooms
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats
        yield GaugeMetricFamily(
            "giaoban_rooms", "Rooms open on this node", value=len(self._rooms.by_name)
        )
        yield GaugeMetricFamily(
            "giaoban_participants",
            "Participants in rooms on this node",
            value=self._rooms.participant_count,
        )
        yield GaugeMetricFamily(
            "giaoban_peer_connections", "Open WebRTC peer connections", value=s.peer_connections
        )
        loop = GaugeMetricFamily(
            "giaoban_forwarding_loop",
            "1 for the forwarding loop this node runs: c (built at install), or python (slower)",
            labels=["loop"],
        )
        loop.add_metric(["c"], 1 if fanout.NATIVE else 0)
        loop.add_metric(["python"], 0 if fanout.NATIVE else 1)
        yield loop
        for name, doc, value in (
            ("received_packets", "RTP packets received from publishers", s.received_packets),
            (
                "duplicate_packets",
                "Retransmitted packets skipped as already forwarded",
                s.duplicate_packets,
            ),
            ("forwarded_packets", "RTP packets forwarded to subscribers", s.forwarded_packets),
            ("forwarded_bytes", "RTP bytes forwarded to subscribers", s.forwarded_bytes),
            (
                "dropped_packets",
                "Packets dropped for slow or disconnected subscribers",
                s.dropped_packets,
            ),
            (
                "retransmitted_packets",
                "Packets resent to subscribers on NACK",
                s.retransmitted_packets,
            ),
            (
                "keyframe_requests",
                "Keyframe requests (PLI) sent to publishers",
                s.keyframe_requests,
            ),
        ):
            yield CounterMetricFamily(f"giaoban_{name}", doc, value=value)


def recording_counter(registry: CollectorRegistry) -> Counter:
    """Recording events (started, stopped, interrupted, resumed, ready, failed), shared by the
    node and the `giaoban record` worker."""
    return Counter(
        "giaoban_recordings",
        "Recordings started, stopped, interrupted, resumed, made ready and failed",
        ["event"],
        registry=registry,
    )


class Metrics:
    """One registry per node (so tests can run several nodes in one process)."""

    def __init__(self, rooms: Rooms, stats: SfuStats) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_MediaCollector(rooms, stats))
        self.signaling_errors = Counter(
            "giaoban_signaling_errors",
            "Signaling requests answered with an error",
            ["code", "event"],
            registry=self.registry,
        )
        self.joins = Counter(
            "giaoban_joins", "Participants who joined a room", registry=self.registry
        )
        self.leaves = Counter(
            "giaoban_leaves", "Participants who left a room", registry=self.registry
        )
        self.logins = Counter(
            "giaoban_logins", "Sign-in attempts, by result", ["result"], registry=self.registry
        )
        for result in ("ok", "failed", "disabled", "throttled"):
            self.logins.labels(result=result)  # every result shows, from 0
        self.logouts = Counter("giaoban_logouts", "Sign-outs", registry=self.registry)
        self.csrf_refusals = Counter(
            "giaoban_csrf_refusals",
            "Unsafe requests refused: no or wrong CSRF token, or another origin; by reason",
            ["reason"],
            registry=self.registry,
        )

        self.lobby_waits = Counter(
            "giaoban_lobby_waits", "Entrants put in a room's lobby", registry=self.registry
        )
        self.recordings = recording_counter(self.registry)
        self.recorder_joins = Counter(
            "giaoban_recorder_joins",
            "Hidden recorders (of `giaoban record` workers) that joined a room",
            registry=self.registry,
        )
        self.integrity_checks = Counter(
            "giaoban_integrity_checks",
            "Recordings re-verified by the scheduled checksum check",
            registry=self.registry,
        )
        self.integrity_mismatches = Counter(
            "giaoban_integrity_mismatches",
            "Recording files found missing or changed by the scheduled checksum check",
            registry=self.registry,
        )
        self.host_actions = Counter(
            "giaoban_host_actions",
            "Host actions carried out, by action",
            ["action"],
            registry=self.registry,
        )
        self.chat_messages = Counter(
            "giaoban_chat_messages",
            "Chat messages sent, by audience (room, hosts)",
            ["to"],
            registry=self.registry,
        )
        for to in ("room", "hosts"):
            self.chat_messages.labels(to=to)  # both show, from 0

        self.api_requests = Counter(
            "giaoban_api_requests",
            "REST API requests, by method and status class (2xx, 4xx, 5xx)",
            ["method", "status"],
            registry=self.registry,
        )

    def api_request(self, method: str, status: int) -> None:
        # Bounded labels: a client cannot invent methods or statuses to grow the registry.
        known = method if method in _API_METHODS else "other"
        self.api_requests.labels(method=known, status=f"{min(max(status // 100, 1), 5)}xx").inc()

    def signaling_error(self, code: str, event: str) -> None:
        known = event if event in _EVENTS else "other"
        self.signaling_errors.labels(code=code, event=known).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


_API_METHODS = {"GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"}
_EVENTS = {
    "join",
    "publish",
    "unpublish",
    "subscribe",
    "down_answer",
    "ice",
    "mute",
    "leave",
    "admit",
    "deny",
    "lock",
    "end",
    "remove",
    "mute_participant",
    "mute_all",
    "ask_unmute",
    "stop_camera",
    "set_role",
    "spotlight",
    "raise_hand",
    "lower_hand",
    "grant_floor",
    "revoke_floor",
    "chat",
    "chat_history",
}
