"""The node's secret key: signs invitation links. From GIAOBAN_SECRET_KEY, or a random key kept
in the data directory (made on first start, readable by the node's user only)."""

from __future__ import annotations

import logging
import os
import secrets

from server.config import Config
from server.errors import ConfigError

log = logging.getLogger(__name__)

SECRET_KEY_FILE = "secret_key"
MIN_KEY_LENGTH = 32


def load_secret_key(config: Config) -> bytes:
    """The key from the config, else from the data directory's file (created when missing)."""
    if config.secret_key:
        key = config.secret_key.encode()
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"GIAOBAN_SECRET_KEY must have at least {MIN_KEY_LENGTH} characters")
        return key
    path = config.data_dir / SECRET_KEY_FILE
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            # Written whole under another name, then linked: two processes starting at once
            # keep one key, and neither reads a half-written file.
            tmp = path.with_name(f".{SECRET_KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_urlsafe(48).encode() + b"\n")
            try:
                os.link(tmp, path)
                log.info("secret key made in %s", path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read or create the secret key {path}: {exc}") from exc
    if len(key) < MIN_KEY_LENGTH:
        raise ConfigError(f"{path} holds a key shorter than {MIN_KEY_LENGTH} characters")
    return key
