"""Composition root: the only place that wires the node's parts together."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
import socketio
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from recording.jobs import RedisJobQueue
from server.accounts import has_admin
from server.admission import Gate
from server.cluster import NodePresence
from server.config import Config
from server.errors import StoreError
from server.integrity import IntegrityCheck
from server.memory_trim import MemoryTrimmer
from server.metrics import Metrics
from server.presence import make_presence
from server.recording_control import RecordingControl
from server.rooms import Rooms
from server.secret_key import load_secret_key
from server.sfu import aiortc_tap, fanout
from server.sfu.connections import MediaSettings
from server.sfu.ice import restrict_host_addresses
from server.sfu.stats import SfuStats
from server.store.db import Database, database_url
from signaling.namespace import MeetingNamespace

log = logging.getLogger(__name__)

PING_INTERVAL = 10
PING_TIMEOUT = 10
# Seconds a stopping node waits for open requests. Its websockets would hold it for the whole
# wait, and browsers reconnect only once their connection closes: keep it short.
SHUTDOWN_TIMEOUT = 2.0

CONFIG = web.AppKey("config", Config)
ROOMS = web.AppKey("rooms", Rooms)
METRICS = web.AppKey("metrics", Metrics)
SIGNALING = web.AppKey("signaling", MeetingNamespace)
STATS = web.AppKey("stats", SfuStats)
DATABASE = web.AppKey("database", Database)
SECRET_KEY = web.AppKey("secret_key", bytes)
INTEGRITY = web.AppKey("integrity", IntegrityCheck)
RECORDING = web.AppKey("recording", RecordingControl)
CLUSTER = web.AppKey("cluster", NodePresence)

FIRST_ADMIN_COMMAND = "giaoban users add admin --role admin"


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready while presence takes this node's heartbeats (always, in the embedded default);
    meetings already running go on either way."""
    cluster = request.app[CLUSTER]
    body = {"rooms": len(request.app[ROOMS].by_name), "node": cluster.node_id}
    if not cluster.healthy:
        return web.json_response({"status": "presence unavailable", **body}, status=503)
    return web.json_response({"status": "ready", **body})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].render()
    return web.Response(
        body=body,
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


def presence_url(config: Config) -> str:
    """REDIS_URL without its password, for logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(config.redis_url or "")
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    return urlunsplit(parts)


def make_app(config: Config) -> web.Application:
    """Build a node: HTTP routes, Socket.IO signaling, the SFU."""
    # Process-wide (aioice has no per-connection setting). Only a configured list is applied:
    # building an app with the default must not undo an earlier restriction (tests keep media
    # on loopback this way), and a process serves one config anyway.
    if config.ice_host_addresses:
        restrict_host_addresses(config.ice_host_addresses)
    app = web.Application(client_max_size=1024 * 1024)
    stats = SfuStats()
    media = MediaSettings(ice_servers=config.ice_servers, public_address=config.ice_public_address)
    rooms = Rooms(media, stats)
    node_metrics = Metrics(rooms, stats)
    # A dead browser (or a dead node, for the browser) is noticed within ~20 s instead of
    # Engine.IO's default 45 s: a commune link that drops should not hold a seat that long.
    # With Redis, an emit reaches sockets on every node (JSON on the wire, never pickle).
    client_manager = (
        socketio.AsyncRedisManager(config.redis_url, channel=f"{config.redis_prefix}socketio")
        if config.redis_url
        else None
    )
    sio = socketio.AsyncServer(
        client_manager=client_manager,
        ping_interval=PING_INTERVAL,
        ping_timeout=PING_TIMEOUT,
        async_mode="aiohttp",
        max_http_buffer_size=256 * 1024,
        logger=False,
        engineio_logger=False,
    )
    # No I/O yet: the lifecycle below connects and migrates.
    database = Database(database_url(config))
    secret_key = load_secret_key(config)
    gate = Gate(database, secret_key)
    presence = make_presence(
        config.redis_url,
        prefix=config.redis_prefix,
        participant_ttl=2 * config.heartbeat_interval,
        dead_after=config.node_dead_after,
    )
    cluster = NodePresence(presence, config, rooms, stats)
    by_workers = config.recorder == "workers" and config.redis_url
    jobs_redis = aioredis.from_url(config.redis_url) if by_workers else None
    recording = RecordingControl(
        database,
        config.data_dir,
        node_metrics,
        jobs=(
            RedisJobQueue(jobs_redis, config.redis_prefix, dead_after=config.recorder_dead_after)
            if jobs_redis is not None
            else None
        ),
        node_url=config.base_url,
    )
    integrity = IntegrityCheck(
        database, recording.root, node_metrics, config.verify_interval_hours * 3600
    )
    namespace = MeetingNamespace(
        rooms, node_metrics, list(config.ice_servers), gate, cluster, recording
    )
    rooms.notifier = namespace
    recording.dismiss_recorders = namespace.dismiss_recorders
    sio.register_namespace(namespace)
    sio.attach(app)

    app[CONFIG] = config
    app[ROOMS] = rooms
    app[METRICS] = node_metrics
    app[SIGNALING] = namespace
    app[STATS] = stats
    app[DATABASE] = database
    app[SECRET_KEY] = secret_key
    app[CLUSTER] = cluster
    app[INTEGRITY] = integrity
    app[RECORDING] = recording
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

    from server.api import setup_api
    from server.archive_pages import setup_archive_pages
    from server.attendance_pages import setup_attendance_pages
    from server.auth import setup_auth
    from server.dashboard_pages import setup_dashboard_pages
    from server.pages import setup_pages  # web UI routes, written with the templates
    from server.room_pages import setup_room_pages
    from server.site_pages import setup_site_pages

    setup_pages(app, config)
    setup_auth(app)  # sessions, CSRF, /login and /logout
    setup_room_pages(app)  # /rooms: list, schedule, detail, invitation links
    setup_api(app)  # /api/v1 (JSON, bearer tokens), /account/tokens
    setup_attendance_pages(app)  # /rooms/{slug}/attendance: report and CSV (hosts)
    setup_site_pages(app)  # /admin/sites: the site tree, CSV import (admins)
    setup_dashboard_pages(app)  # /dashboard: live sites and rooms (admins, hosts)
    setup_archive_pages(app)  # /archive: recordings, player, access log, retention

    trimmer = MemoryTrimmer()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        try:
            await database.migrate()
            async with database.session() as session:
                first_start = not await has_admin(session)
        except SQLAlchemyError as exc:
            await database.close()
            raise StoreError(f"{database.display_url}: {exc}".splitlines()[0]) from exc
        except BaseException:
            await database.close()
            raise
        log.info("database ready: %s", database.display_url)
        # Stays a crash left open end at this start; people back within minutes are merged.
        try:
            closed = await gate.close_stays()
        except SQLAlchemyError:
            log.exception("open attendance stays of the last run not closed")
        else:
            if closed:
                log.warning("closed %d attendance stays left open by the last run", closed)
        if first_start:
            log.warning(
                "no admin account yet: create the first one with `%s` "
                "(chưa có tài khoản quản trị: hãy tạo bằng lệnh trên)",
                FIRST_ADMIN_COMMAND,
            )
        try:
            await recording.recover()
        except SQLAlchemyError:
            log.exception("recordings cut off by the last stop not recovered")
        await cluster.start()
        integrity.start()
        if config.redis_url:
            state = "registered" if cluster.healthy else "not reachable yet, retrying"
            log.info(
                "presence in Redis (%s): node %s %s", presence_url(config), cluster.node_id, state
            )
        # What imports and start-up made stays for the node's life (~150k objects); a full
        # collection over them stalls the event loop, so every forwarded packet, for ~0.1 s.
        # Frozen, the collector only walks what the meetings themselves allocate.
        gc.collect()
        gc.freeze()
        trimmer.start()  # what glibc keeps after free goes back to the system, every minute
        if fanout.WANTED == "python":
            log.info("forwarding loop: python (GIAOBAN_FORWARDING_LOOP=python)")
        elif not fanout.NATIVE:
            log.warning(
                "the forwarding loop in C is not built (server/sfu/_fanout.c needs a C compiler "
                "and Python's headers at install): forwarding runs in Python, at more CPU"
            )
        elif not aiortc_tap.RTCP_IN_C:
            log.warning(
                "the subscribers' RTCP reader in C is not built (server/sfu/_rtcp_reader.c): "
                "their reports are read in Python, at more CPU"
            )
        log.info("node ready on %s", config.base_url)
        yield
        try:
            await trimmer.close()
            await rooms.close()
            await sio.shutdown()
            await integrity.close()
            await recording.close()
            if jobs_redis is not None:
                await jobs_redis.aclose()
            await cluster.close()
        finally:
            await database.close()

    app.cleanup_ctx.append(lifecycle)
    return app
