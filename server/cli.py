"""`giaoban` command line: `giaoban serve` starts a node."""

from __future__ import annotations

import argparse
import logging
import sys

from aiohttp import web

from server.config import SETTINGS, Config
from server.errors import ConfigError


def _settings_help() -> str:
    width = max(len(s.env) for s in SETTINGS.values())
    lines = ["environment variables:"]
    lines += [f"  {s.env:<{width}}  {s.help}" for s in SETTINGS.values()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="giaoban",
        description="Giao Ban: họp giao ban trực tuyến / online briefings, self-hosted.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="start a node (embedded default: no Redis, SQLite, local files)",
        description="Start a node. Settings come from the environment; flags override them.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address to listen on (GIAOBAN_HOST)")
    serve.add_argument("--port", type=int, help="TCP port (GIAOBAN_PORT)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env(host=args.host, port=args.port)
    except ConfigError as exc:
        print(f"giaoban: {exc.message}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aioice/aiortc log every STUN exchange at INFO in some paths; keep the node's log readable.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

    from server.app import make_app
    from server.tls import ssl_context

    context = ssl_context(config)
    app = make_app(config)
    shown_host = "localhost" if config.host in ("0.0.0.0", "::") else config.host
    print(f"Giao Ban: {config.scheme}://{shown_host}:{config.port}", flush=True)
    from server.app import SHUTDOWN_TIMEOUT

    web.run_app(
        app,
        host=config.host,
        port=config.port,
        ssl_context=context,
        print=None,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
