"""Session-wide test set-up: media stays on loopback, logs stay readable."""

from __future__ import annotations

import logging

from server.sfu.ice import restrict_host_addresses

# aioice leaves 127.0.0.1 out and offers every other interface: in tests the node and the
# test peers offer 127.0.0.1 only, so no media leaves loopback.
restrict_host_addresses(["127.0.0.1"])

for noisy in ("aioice", "aiortc", "aiohttp.access", "engineio", "socketio"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
