"""Presence benchmark: heartbeats of many sites' participants against a real Redis.

    .venv/bin/python bench/presence.py [--sites 500] [--per-site 2] [--nodes 10]
                                       [--duration 10] [--runs 50]

Uses REDIS_URL when set (under a key prefix of its own, deleted at the end; never FLUSH), else
starts a private redis-server on a free 127.0.0.1 port like the tests do. Simulates `--nodes`
nodes (one RedisPresence client each) holding `--sites` × `--per-site` participants between
them, then measures, in this one process:

- heartbeats handled per second while every node heartbeats back to back for `--duration`
  seconds, with the latency of each heartbeat;
- Redis round trips per heartbeat, counted by a connection class that counts packed writes
  to the socket (measured, not assumed), and Redis commands per heartbeat (INFO commandstats,
  exact only on a private server);
- the whole-tree dashboard query (all nodes + all participants grouped by site) from a fresh
  client, `--runs` times: median and p90, and its round trips.

Targets printed next to the figures: ≤ 1 round trip per heartbeat; whole-tree query < 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from importlib.metadata import version
from pathlib import Path

# The benchmark directory (common.py) and the repository (server/, tests/support/).
for _path in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
    sys.path.insert(0, str(_path))

from common import percentile, run_benchmark  # noqa: E402

from server.presence import (  # noqa: E402
    NodeInfo,
    NodeLoad,
    NodeRecord,
    ParticipantPresence,
    RedisPresence,
)
from tests.support.redis_server import (  # noqa: E402
    RedisServer,
    RoundTrips,
    counting_connection,
    delete_prefix,
    redis_url_from_env,
    unique_prefix,
)

ROUND_TRIP_TARGET = 1.0
QUERY_TARGET_MS = 50.0


def ms_summary(values: list[float]) -> str:
    """median / p90 / max in ms (one decimal) of values in seconds."""
    ms = [1000 * v for v in values]
    return (
        f"median {statistics.median(ms):.1f} ms, p90 {percentile(ms, 0.9):.1f} ms, "
        f"max {max(ms):.1f} ms (n={len(ms)})"
    )


def redis_server_version() -> str:
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout
    except OSError:
        return "redis-server (not installed)"
    return out.split(" sha=")[0].strip() or "redis-server (unknown)"


def setup(args: argparse.Namespace) -> str:
    where = "REDIS_URL (shared)" if redis_url_from_env() else "a private redis-server"
    return (
        f"versions: redis-py {version('redis')}, {redis_server_version()}\n"
        f"setup: {args.sites} sites × {args.per_site} participants = "
        f"{args.sites * args.per_site} participants on {args.nodes} nodes, against {where}; "
        f"heartbeats for {args.duration:.0f} s, whole-tree query {args.runs} times"
    )


def population(args: argparse.Namespace) -> dict[str, list[ParticipantPresence]]:
    """Participants per node: site i lives on node i mod N; rooms span many sites."""
    now = time.time()
    by_node: dict[str, list[ParticipantPresence]] = defaultdict(list)
    for s in range(args.sites):
        node_id = f"node-{s % args.nodes:02d}"
        for k in range(args.per_site):
            by_node[node_id].append(
                ParticipantPresence(
                    room=f"giao-ban-{s % args.rooms:02d}",
                    participant_id=f"p-{s:04d}-{k}",
                    name=f"Đại biểu {k + 1} xã {s:04d}",
                    site=f"xa-{s:04d}",
                    node_id=node_id,
                    state="connected",
                    since=now,
                )
            )
    return by_node


async def commands_processed(client: RedisPresence) -> int:
    stats = await client.client.info("commandstats")
    return sum(int(entry["calls"]) for entry in stats.values() if isinstance(entry, dict))


async def redis_cpu_seconds(client: RedisPresence) -> float:
    stats = await client.client.info("cpu")
    return float(stats["used_cpu_user"]) + float(stats["used_cpu_sys"])


async def whole_tree(presence: RedisPresence) -> tuple[list[NodeRecord], dict[str | None, list]]:
    """What the dashboard shows: every node and every participant grouped by site."""
    nodes, people = await asyncio.gather(presence.nodes(), presence.participants())
    by_site: dict[str | None, list[ParticipantPresence]] = defaultdict(list)
    for p in people:
        by_site[p.site].append(p)
    return nodes, by_site


async def measure(args: argparse.Namespace, url: str) -> int:
    prefix = unique_prefix("bench")
    by_node = population(args)
    trips = RoundTrips()
    clients: dict[str, RedisPresence] = {}
    load = NodeLoad(cpu_percent=35.0, participants=0, streams=0)
    try:
        for node_id, people in sorted(by_node.items()):
            client = RedisPresence(url, prefix=prefix)
            client.client.connection_pool.connection_class = counting_connection(trips)
            await client.start()
            await client.ping()
            clients[node_id] = client
            info = NodeInfo(node_id, f"https://{node_id}.example.vn", f"tinh-{node_id}", 500)
            await client.register_node(info, NodeLoad(35.0, len(people), 2 * len(people)))
            await client.claim_home(f"giao-ban-{node_id}", node_id)
            await client.heartbeat(node_id, load, people)  # creates them; warms the connection

        # Heartbeats, every node back to back (one in flight per node, as a real node does).
        latencies: list[float] = []
        stop_at = time.monotonic() + args.duration

        async def beat(node_id: str) -> int:
            client, people = clients[node_id], by_node[node_id]
            node_load = NodeLoad(35.0, len(people), 2 * len(people))
            done = 0
            while time.monotonic() < stop_at:
                started = time.perf_counter()
                await client.heartbeat(node_id, node_load, people)
                latencies.append(time.perf_counter() - started)
                done += 1
            return done

        first = next(iter(clients.values()))
        # Read in nesting order so only the heartbeats (and one INFO) fall between the reads.
        redis_cpu_before = await redis_cpu_seconds(first)
        commands_before = await commands_processed(first)
        trips_before = trips.count
        started, cpu_started = time.monotonic(), time.process_time()
        done = sum(await asyncio.gather(*(beat(node_id) for node_id in clients)))
        elapsed, cpu = time.monotonic() - started, time.process_time() - cpu_started
        heartbeat_trips = trips.count - trips_before
        # Redis counts the INFO that reads commandstats before answering it: take it off.
        commands = await commands_processed(first) - commands_before - 1
        redis_cpu = await redis_cpu_seconds(first) - redis_cpu_before
        per_node = args.sites * args.per_site / len(clients)
        shared = " (shared server: includes others' load)" if redis_url_from_env() else ""
        print("\nheartbeats")
        print(f"  {done} heartbeats in {elapsed:.2f} s: {done / elapsed:.0f} heartbeats/s")
        print(
            f"  ≈ {per_node:.0f} participants each: {done * per_node / elapsed:.0f} "
            "participant refreshes/s"
        )
        print(
            f"  latency per heartbeat: {ms_summary(latencies)} "
            f"(all {len(clients)} nodes share this process's one event loop)"
        )
        print(
            f"  CPU per heartbeat: client (this process) {1000 * cpu / done:.2f} ms, "
            f"redis-server {1000 * redis_cpu / done:.2f} ms{shared}"
        )
        rt = heartbeat_trips / done
        verdict = "OK" if rt <= ROUND_TRIP_TARGET else "OVER"
        print(
            f"  round trips per heartbeat: {rt:.2f} measured ({heartbeat_trips} socket writes) — "
            f"target ≤ {ROUND_TRIP_TARGET:.0f}: {verdict}"
        )
        print(f"  Redis commands per heartbeat: {commands / done:.0f}{shared}")

        # The whole-tree dashboard query from a client of its own.
        viewer = RedisPresence(url, prefix=prefix)
        query_trips = RoundTrips()
        viewer.client.connection_pool.connection_class = counting_connection(query_trips)
        try:
            await viewer.ping()
            nodes, by_site = await whole_tree(viewer)  # warm-up
            counted = sum(len(v) for v in by_site.values())
            times: list[float] = []
            trips_before = query_trips.count
            for _ in range(args.runs):
                started_query = time.perf_counter()
                nodes, by_site = await whole_tree(viewer)
                times.append(time.perf_counter() - started_query)
            query_rt = (query_trips.count - trips_before) / args.runs
        finally:
            await viewer.close()
        p90 = 1000 * percentile(times, 0.9)
        print("\nwhole-tree query (all nodes + all participants grouped by site)")
        print(f"  {len(nodes)} nodes, {counted} participants in {len(by_site)} sites")
        print(f"  {ms_summary(times)}")
        print(f"  round trips per query: {query_rt:.1f} measured")
        verdict = "OK" if p90 < QUERY_TARGET_MS else "OVER"
        print(f"  target < {QUERY_TARGET_MS:.0f} ms (p90 {p90:.1f} ms): {verdict}")
        if counted != args.sites * args.per_site:
            print(f"  WARNING: expected {args.sites * args.per_site} participants")
            return 2
        return 0
    finally:
        for client in clients.values():
            await client.close()
        await delete_prefix(url, prefix)


def run(args: argparse.Namespace, workdir: Path) -> int:
    url = redis_url_from_env()
    if url is not None:
        return asyncio.run(measure(args, url))
    with RedisServer() as server:
        print(f"redis-server: {server.url} (log {server.log})")
        return asyncio.run(measure(args, server.url))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=500)
    parser.add_argument("--per-site", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rooms", type=int, default=20, help="rooms the sites are spread over")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of heartbeats")
    parser.add_argument("--runs", type=int, default=50, help="whole-tree queries timed")
    args = parser.parse_args()
    if min(args.sites, args.per_site, args.nodes, args.rooms, args.runs) < 1:
        parser.error("every count must be at least 1")
    args.nodes = min(args.nodes, args.sites)
    return run_benchmark("presence", "giaoban-bench-presence-", args, setup, run)


if __name__ == "__main__":
    sys.exit(main())
