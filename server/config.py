"""Node configuration: every setting comes from one environment variable, read once."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from server.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    env: str
    help: str


# The one table of settings: `giaoban serve --help` prints it, `Config.from_env` reads it.
SETTINGS: dict[str, Setting] = {
    "host": Setting("GIAOBAN_HOST", "address to listen on (default 0.0.0.0)"),
    "port": Setting("GIAOBAN_PORT", "TCP port (default 8080)"),
    "public_url": Setting(
        "GIAOBAN_PUBLIC_URL", "URL people open, used in links (default http://localhost:PORT)"
    ),
    "data_dir": Setting(
        "GIAOBAN_DATA_DIR", "directory for the database, recordings, TLS files (default ./data)"
    ),
    "redis_url": Setting("REDIS_URL", "Redis for presence across nodes (unset: in-process)"),
    "redis_prefix": Setting(
        "GIAOBAN_REDIS_PREFIX", "prefix of every Redis key of this cluster (default giaoban:)"
    ),
    "site": Setting("GIAOBAN_SITE", "code of the site this node serves (e.g. a province's code)"),
    "node_id": Setting(
        "GIAOBAN_NODE_ID", "this node's name in the cluster (default: host name and port)"
    ),
    "capacity": Setting(
        "GIAOBAN_CAPACITY", "participants this node is sized for, shown to operators (default 200)"
    ),
    "heartbeat_interval": Setting(
        "GIAOBAN_HEARTBEAT_INTERVAL", "seconds between presence heartbeats (default 5)"
    ),
    "node_dead_after": Setting(
        "GIAOBAN_NODE_DEAD_AFTER",
        "seconds without a heartbeat after which a node counts as dead (default 15)",
    ),
    "database_url": Setting(
        "DATABASE_URL", "PostgreSQL URL (unset: SQLite under the data directory)"
    ),
    "ice_servers": Setting(
        "GIAOBAN_ICE_SERVERS",
        "JSON list of RTCIceServer given to browsers and used by the node, e.g. "
        '[{"urls": ["turn:turn.example.vn:3478"], "username": "u", "credential": "p"}] '
        "(default: none)",
    ),
    "ice_host_addresses": Setting(
        "GIAOBAN_ICE_HOST_ADDRESSES",
        "comma-separated IP addresses the node offers as ICE host candidates "
        "(default: every interface but loopback)",
    ),
    "ice_public_address": Setting(
        "GIAOBAN_ICE_PUBLIC_ADDRESS",
        "public IP of a 1:1 NAT in front of the node: host candidates are offered with it too",
    ),
    "tls_cert": Setting("GIAOBAN_TLS_CERT", "PEM certificate file: serve HTTPS"),
    "tls_key": Setting("GIAOBAN_TLS_KEY", "PEM private key file for GIAOBAN_TLS_CERT"),
    "tls_self_signed": Setting(
        "GIAOBAN_TLS_SELF_SIGNED",
        "1: serve HTTPS with a self-signed certificate made on first start (LAN use)",
    ),
    "recorder": Setting(
        "GIAOBAN_RECORDER",
        "who records meetings: node (the node itself, default) or workers (`giaoban record` "
        "processes taking jobs from Redis; needs REDIS_URL)",
    ),
    "recorder_dead_after": Setting(
        "GIAOBAN_RECORDER_DEAD_AFTER",
        "seconds after which a recording job held by a silent worker goes to another (default 15)",
    ),
    "verify_interval_hours": Setting(
        "GIAOBAN_VERIFY_INTERVAL_HOURS",
        "hours between scheduled checksum checks of the recordings (default 24; 0: never)",
    ),
    "secret_key": Setting(
        "GIAOBAN_SECRET_KEY",
        "key that signs invitation links (default: made on first start in DATA_DIR/secret_key; "
        "every node of a cluster needs the same one)",
    ),
    "forwarding_loop": Setting(
        "GIAOBAN_FORWARDING_LOOP",
        "c (default: the forwarding loop and the subscribers' RTCP reader built at install) or "
        "python (the same in Python, at more CPU per subscriber: for comparison, or should the "
        "C one misbehave)",
    ),
    "log_level": Setting("GIAOBAN_LOG_LEVEL", "DEBUG, INFO, WARNING (default INFO)"),
}


RECORDERS = ("node", "workers")
FORWARDING_LOOPS = ("c", "python")  # server/sfu/fanout.py reads the setting at import


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _ice_servers(value: str) -> tuple[dict[str, Any], ...]:
    try:
        servers = json.loads(value)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"GIAOBAN_ICE_SERVERS is not JSON: {exc}") from exc
    if not isinstance(servers, list) or not all(
        isinstance(s, dict) and "urls" in s for s in servers
    ):
        raise ConfigError("GIAOBAN_ICE_SERVERS must be a JSON list of objects with 'urls'")
    return tuple(servers)


@dataclass(frozen=True)
class Config:
    """Everything a node needs to start; immutable once read."""

    host: str = "0.0.0.0"
    port: int = 8080
    public_url: str = ""
    data_dir: Path = Path("data")
    redis_url: str | None = None
    redis_prefix: str = "giaoban:"
    site: str | None = None
    node_id: str = ""
    capacity: int = 200
    heartbeat_interval: float = 5.0
    node_dead_after: float = 15.0
    verify_interval_hours: float = 24.0
    recorder: str = "node"
    recorder_dead_after: float = 15.0
    forwarding_loop: str = "c"
    database_url: str | None = None
    ice_servers: tuple[dict[str, Any], ...] = ()
    ice_host_addresses: tuple[str, ...] = ()
    ice_public_address: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    secret_key: str | None = None
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return "https" if (self.tls_cert or self.tls_self_signed) else "http"

    @property
    def node_name(self) -> str:
        """This node's id in the cluster."""
        return self.node_id or f"{socket.gethostname()}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.public_url or f"{self.scheme}://localhost:{self.port}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Config:
        """Read the settings from `environ` (default os.environ); `overrides` win (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, setting in SETTINGS.items():
            raw = env.get(setting.env, "").strip()
            if raw:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "port" in values:
            port = str(values["port"])
            if not port.isdigit() or not 0 <= int(port) <= 65535:
                raise ConfigError(f"GIAOBAN_PORT must be a port number (0-65535), not {port!r}")
            values["port"] = int(port)
        for key, kind in (
            ("capacity", int),
            ("heartbeat_interval", float),
            ("node_dead_after", float),
            ("verify_interval_hours", float),
            ("recorder_dead_after", float),
        ):
            if isinstance(values.get(key), str):
                try:
                    values[key] = kind(values[key])
                except ValueError:
                    raise ConfigError(
                        f"{SETTINGS[key].env} must be a number, not {values[key]!r}"
                    ) from None
                if values[key] < 0 or (values[key] == 0 and key != "verify_interval_hours"):
                    raise ConfigError(f"{SETTINGS[key].env} must be positive")
        if isinstance(values.get("ice_servers"), str):
            values["ice_servers"] = _ice_servers(values["ice_servers"])
        if isinstance(values.get("ice_host_addresses"), str):
            values["ice_host_addresses"] = _csv(values["ice_host_addresses"])
        for path_key in ("data_dir", "tls_cert", "tls_key"):
            if isinstance(values.get(path_key), str):
                values[path_key] = Path(values[path_key])
        if isinstance(values.get("tls_self_signed"), str):
            values["tls_self_signed"] = values["tls_self_signed"].lower() in ("1", "true", "yes")
        if bool(values.get("tls_cert")) != bool(values.get("tls_key")):
            raise ConfigError("GIAOBAN_TLS_CERT and GIAOBAN_TLS_KEY go together")
        recorder = values.get("recorder", "node")
        if recorder not in RECORDERS:
            raise ConfigError(f"GIAOBAN_RECORDER must be node or workers, not {recorder!r}")
        if recorder == "workers" and not values.get("redis_url"):
            raise ConfigError("GIAOBAN_RECORDER=workers needs REDIS_URL (the job queue)")
        loop = values["forwarding_loop"] = str(values.get("forwarding_loop", "c")).lower()
        if loop not in FORWARDING_LOOPS:
            raise ConfigError(f"GIAOBAN_FORWARDING_LOOP must be c or python, not {loop!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
