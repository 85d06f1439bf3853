"""Forwarding A/B: the node's CPU per forwarded packet for two revisions, alternated.

    .venv/bin/python bench/forwarding_ab.py REV_A REV_B [--subscribers 64] [--rounds 2]
                                            [--windows 3] [--duration 10]

Figures from one forwarding run move with the machine (on a shared virtual machine the same
code measured 19.7 and 38.2 µs per packet on one day), so a change is judged by alternating it
with its base in one session. Each revision is checked out in a temporary git worktree; per
round, for each revision in turn, its node starts, the publisher and --subscribers subscribers
connect, and --windows windows of --duration seconds each print the node's CPU µs per
forwarded packet and its CPU divided by the subscriber processes' CPU (they do the same work
per packet whatever the node runs, so the ratio moves less with the machine than µs do). The
end prints each revision's means and B against A. The clients are those of this checkout's
HEAD, the same for both, run (with this script) from a worktree of their own: editing the
checkout during a run changes nothing. Both revisions must use the database schema of HEAD
(the room is scheduled with its code).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    FORWARDED_METRIC,
    REPO,
    machine,
    node_server,
    publishing,
    versions,
    wait_ready,
)


def worktree(revision: str, root: Path) -> Path:
    """`revision` checked out under `root` (detached), with this checkout's web packages."""
    path = root / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), revision],
        check=True,
        capture_output=True,
    )
    modules = REPO / "web" / "node_modules"
    if modules.is_dir() and not (path / "web" / "node_modules").exists():
        (path / "web" / "node_modules").symlink_to(modules)
    if any((path / "server" / "sfu").glob("_*.c")):
        # The revision's C modules, built in place as `pip install -e .` builds them.
        subprocess.run(
            [sys.executable, "-c", BUILD_IN_PLACE],
            cwd=path,
            check=True,
            capture_output=True,
        )
    return path


BUILD_IN_PLACE = """
from pathlib import Path
from setuptools import Distribution, Extension
sources = sorted(Path("server/sfu").glob("_*.c"))
modules = [Extension("server.sfu." + source.stem, [str(source)]) for source in sources]
dist = Distribution({"ext_modules": modules})
build = dist.get_command_obj("build_ext")
build.inplace = True
dist.run_command("build_ext")
"""


def measure(tree: Path, args: argparse.Namespace, label: str) -> list[tuple[float, float]]:
    """(µs per forwarded packet, node CPU / subscriber CPU) per window, for the node of `tree`."""
    workdir = Path(tempfile.mkdtemp(prefix="giaoban-ab-"))
    server = node_server(workdir, tree)
    results = []
    with publishing(server, 3, args.video_bitrate, workdir, "ab") as helpers:
        subscribing = helpers[1:]
        half = args.subscribers // 2
        for helper, count in zip(subscribing, (half, args.subscribers - half), strict=True):
            helper.subscribers = helper.call({"cmd": "add", "count": count})["subscribers"]
        wait_ready(subscribing, server, args.subscribers, 20 + args.subscribers, "ab")
        time.sleep(args.warmup)
        for _ in range(args.windows):
            packets0 = server.counters()[FORWARDED_METRIC]
            cpu0 = server.cpu_seconds()
            clients0 = sum(h.cpu_seconds() for h in subscribing)
            start = time.monotonic()
            time.sleep(args.duration)
            cpu = server.cpu_seconds() - cpu0
            wall = time.monotonic() - start
            clients = sum(h.cpu_seconds() for h in subscribing) - clients0
            packets = server.counters()[FORWARDED_METRIC] - packets0
            us, ratio = 1e6 * cpu / packets, cpu / clients
            results.append((us, ratio))
            print(
                f"  {label}: {us:6.1f} µs/pkt   node/subscribers CPU {ratio:.3f}   "
                f"node {100 * cpu / wall:5.1f} %   {packets / wall:6.0f} pkts/s",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs=2, metavar="REV", help="git revisions: A, then B")
    parser.add_argument("--subscribers", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--windows", type=int, default=3, help="measured windows per node")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--video-bitrate", type=int, default=800_000)
    args = parser.parse_args(argv)
    if args.subscribers < 2 or args.rounds < 1 or args.windows < 1 or args.duration <= 0:
        parser.error("needs --subscribers ≥ 2, --rounds ≥ 1, --windows ≥ 1, --duration > 0")

    if CLIENTS_ENV not in os.environ:
        return _from_snapshot(argv if argv is not None else sys.argv[1:])
    print("Giao Ban forwarding A/B")
    print(f"machine: {machine()}")
    print(f"versions: {versions()}")
    print(f"clients: {os.environ[CLIENTS_ENV]} (a worktree of the checkout's HEAD)")
    print(
        f"{args.subscribers} subscribers; {args.rounds} rounds of A then B, "
        f"{args.windows} × {args.duration:g} s each"
    )
    root = Path(tempfile.mkdtemp(prefix="giaoban-ab-trees-"))
    trees: dict[str, Path] = {}
    try:
        for revision in args.revisions:
            trees[revision] = worktree(revision, root)
        results: dict[str, list[tuple[float, float]]] = {r: [] for r in args.revisions}
        for round_ in range(1, args.rounds + 1):
            print(f"round {round_}", flush=True)
            for name, revision in zip("AB", args.revisions, strict=True):
                label = f"{name} {revision}"
                results[revision] += measure(trees[revision], args, label)
        means = {
            r: (statistics.mean(u for u, _ in v), statistics.mean(q for _, q in v))
            for r, v in results.items()
        }
        for name, revision in zip("AB", args.revisions, strict=True):
            us, ratio = means[revision]
            print(f"{name} {revision}: mean {us:.2f} µs/pkt, node/subscribers CPU {ratio:.3f}")
        (us_a, ratio_a), (us_b, ratio_b) = (means[r] for r in args.revisions)
        print(
            f"B against A: µs per packet {100 * (us_b / us_a - 1):+.1f} %, "
            f"node/subscribers CPU {100 * (ratio_b / ratio_a - 1):+.1f} %"
        )
    finally:
        for path in trees.values():
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
                check=False,
                capture_output=True,
            )
    return 0


CLIENTS_ENV = "GIAOBAN_AB_CLIENTS"


def _from_snapshot(argv: list[str]) -> int:
    """Run this A/B again from a worktree of HEAD: its clients (and this script) are then the
    same for the whole run, whatever happens to the checkout meanwhile."""
    root = Path(tempfile.mkdtemp(prefix="giaoban-ab-clients-"))
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    clients = worktree(head, root)
    try:
        script = clients / "bench" / Path(__file__).name
        env = {**os.environ, CLIENTS_ENV: head}
        return subprocess.run([sys.executable, str(script), *argv], env=env, check=False).returncode
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(clients)],
            check=False,
            capture_output=True,
        )


if __name__ == "__main__":
    sys.exit(main())
