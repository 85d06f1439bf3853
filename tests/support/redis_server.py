"""A private redis-server for tests and benchmarks, key prefixes, and a round-trip counter.

`RedisServer` runs Debian's /usr/bin/redis-server on a free 127.0.0.1 port with no persistence
(`--save "" --appendonly no`), so `restart()` brings it back empty, like a crashed Redis. Tests
never FLUSH a Redis: each works under its own prefix (`unique_prefix`) and deletes its own keys
(`delete_prefix`, SCAN MATCH + DEL), so a shared server (REDIS_URL) stays untouched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection

REDIS_SERVER = "/usr/bin/redis-server"
START_TIMEOUT = 15.0  # seconds a fresh server gets to answer PING


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unique_prefix(label: str = "test") -> str:
    """A key prefix no other test or run uses."""
    return f"{label}:{uuid4().hex}:"


def answers_ping(url: str, timeout: float = 0.5) -> bool:
    """True when the Redis at `url` answers PING now."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


class RedisServer:
    """One redis-server process on a fixed port; start, stop (SIGTERM or SIGKILL), restart."""

    def __init__(self, port: int | None = None, binary: str = REDIS_SERVER) -> None:
        found = shutil.which(binary)
        if found is None:
            raise RuntimeError(
                f"no {binary}: install Debian's redis-server (./giaoban.sh test does) "
                "or set REDIS_URL to a Redis the tests may use under their own key prefixes"
            )
        self.binary = found
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="giaoban-redis-"))
        self.log = self.dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING (polled, with a deadline)."""
        if self.process is not None and self.process.poll() is None:
            return
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not answers_ping(self.url):
            if self.process.poll() is not None or time.monotonic() >= deadline:
                status = self.process.poll()
                self.stop(kill=True)
                log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(
                    f"redis-server on port {self.port} did not answer PING within "
                    f"{START_TIMEOUT:.0f}s (exit status {status}):\n{log}"
                )
            time.sleep(0.02)  # polling interval, not a synchronisation

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server: SIGTERM and wait, or SIGKILL (`kill=True`) like a crash."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port; the data is gone (no persistence)."""
        self.stop(kill=kill)
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def redis_url_from_env() -> str | None:
    """REDIS_URL when set: a Redis the tests share, used only under their own prefixes."""
    return os.environ.get("REDIS_URL", "").strip() or None


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN MATCH + DEL, never FLUSH); how many went."""
    if not prefix or prefix in ("*", ":"):
        raise ValueError(f"refusing to delete under prefix {prefix!r}")
    client = aioredis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    deleted = 0
    try:
        pattern = _glob_escape(prefix) + "*"
        batch: list[bytes] = []
        async for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch.clear()
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


def _glob_escape(text: str) -> str:
    # SCAN MATCH is a glob: a prefix holding * ? [ ] \ must match itself only.
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


@dataclass
class RoundTrips:
    """Writes to Redis sockets: one per command, one per pipeline (each is a round trip)."""

    count: int = 0


def counting_connection(counter: RoundTrips) -> type[Connection]:
    """A redis-py asyncio Connection class that adds one to `counter` per packed send.

    Install with `client.connection_pool.connection_class = cls` before the pool connects
    (or after `disconnect()`); the connection's own handshake (HELLO, CLIENT SETINFO) counts
    too, so measure after a warm-up command.
    """

    class CountingConnection(Connection):
        async def send_packed_command(self, command, check_health=True):  # type: ignore[no-untyped-def]
            counter.count += 1
            return await super().send_packed_command(command, check_health)

    return CountingConnection
