"""A node as its own process (`python -m server.cli serve`), for tests of several nodes, and a
recording worker as its own process (`python -m server.cli record`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.redis_server import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class NodeProcess:
    """One node on 127.0.0.1 with its own id and site, sharing a data dir and a Redis."""

    def __init__(
        self,
        node_id: str,
        site: str,
        data_dir: Path,
        redis_url: str | None = None,
        prefix: str = "giaoban:",
        env: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.site = site
        self.port = free_port()
        self.log_path = data_dir.parent / f"{node_id}.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "GIAOBAN_DATA_DIR": str(data_dir),
            "GIAOBAN_PUBLIC_URL": self.url,
            "GIAOBAN_NODE_ID": node_id,
            "GIAOBAN_ICE_HOST_ADDRESSES": "127.0.0.1",
            "GIAOBAN_REDIS_PREFIX": prefix,
            # Fast enough for a test: a dead node is noticed in 3 s, its people gone in 2 s.
            "GIAOBAN_HEARTBEAT_INTERVAL": "1",
            "GIAOBAN_NODE_DEAD_AFTER": "3",
            "GIAOBAN_LOG_LEVEL": "INFO",
        }
        for variable in ("DATABASE_URL", "GIAOBAN_ICE_SERVERS", "GIAOBAN_SECRET_KEY", "REDIS_URL"):
            self.env.pop(variable, None)
        if redis_url is not None:  # else the embedded default: presence in the process
            self.env["REDIS_URL"] = redis_url
        self.env.update(env or {})
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int | None = None) -> None:
        """Start (again, on `port` if given) and return once /healthz answers (polled)."""
        if port is not None:
            self.port = port
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server.cli", *self.arguments()],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(f"{self.url}/healthz"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {self.node_id} did not start:\n{self.log_tail()}")
            time.sleep(0.05)  # polling interval, not a synchronisation

    def arguments(self) -> list[str]:
        return ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--site", self.site]

    def kill(self) -> None:
        """SIGKILL: a crash, nothing is cleaned up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


class WorkerProcess(NodeProcess):
    """A `giaoban record` worker named `name`, serving /healthz and /metrics on its port."""

    def __init__(self, name: str, data_dir: Path, redis_url: str, prefix: str, dead_after: float):
        super().__init__(
            name,
            "",
            data_dir,
            redis_url,
            prefix,
            env={"GIAOBAN_RECORDER_DEAD_AFTER": str(dead_after), "GIAOBAN_HOST": "127.0.0.1"},
        )

    def arguments(self) -> list[str]:
        return ["record", "--name", self.node_id, "--port", str(self.port)]

    def metric(self, name: str) -> float:
        """A metric's value from the worker's /metrics, summed over its labels (0 if absent)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=2) as response:
            text = response.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.split("{")[0].split(" ")[0] == name:
                total += float(line.rsplit(" ", 1)[1])
        return total
