"""`giaoban` command line: `giaoban serve` starts a node, `giaoban users ...` manages accounts,
`giaoban tokens ...` REST API tokens, `giaoban sites ...` the site tree."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from server.config import SETTINGS, Config
from server.errors import BadRequest, ConfigError, GiaoBanError, StoreError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from server.sites import SiteNode


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
    serve.add_argument("--site", help="code of the site this node serves (GIAOBAN_SITE)")
    record = commands.add_parser(
        "record",
        help="run a recording worker taking jobs from Redis (nodes with GIAOBAN_RECORDER=workers)",
        description=(
            "Run a recording worker: it takes recording jobs from Redis (REDIS_URL), joins each "
            "room as its hidden recorder and writes into GIAOBAN_DATA_DIR/recordings and the "
            "database the nodes use. Several workers may run; each job goes to one."
        ),
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument(
        "--name", help="this worker's name in the queue (default: HOST-recorder; one per worker)"
    )
    record.add_argument("--port", type=int, help="serve /healthz and /metrics on this port")
    record.add_argument(
        "--jobs", type=int, default=8, help="recordings this worker carries at once (default 8)"
    )
    _add_users_parser(commands)
    _add_tokens_parser(commands)
    _add_sites_parser(commands)
    return parser


def _add_users_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = commands.add_parser(
        "users",
        help="manage accounts (tài khoản): add, list, passwd, disable",
        description="Manage accounts in the node's database (GIAOBAN_DATA_DIR or DATABASE_URL).",
    )
    actions = users.add_subparsers(dest="users_command", required=True)
    add = actions.add_parser("add", help="create an account")
    add.add_argument("username", help="3-64 characters of a-z 0-9 . _ - (stored lower-cased)")
    add.add_argument("--role", required=True, help="admin, host, member or archivist")
    add.add_argument("--name", help='display name, e.g. "Nguyễn Văn An" (default: the username)')
    add.add_argument("--site", help="code of the account's site")
    add.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    actions.add_parser("list", help="show every account")
    passwd = actions.add_parser("passwd", help="set an account's password")
    passwd.add_argument("username")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    disable = actions.add_parser("disable", help="disable an account (it can no longer sign in)")
    disable.add_argument("username")


def _add_tokens_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    tokens = commands.add_parser(
        "tokens",
        help="manage REST API tokens (mã truy cập API): add, list, revoke",
        description="Manage API tokens in the node's database (GIAOBAN_DATA_DIR or DATABASE_URL).",
    )
    actions = tokens.add_subparsers(dest="tokens_command", required=True)
    add = actions.add_parser("add", help="make a token for an account and print it (once)")
    add.add_argument("username", help="the account the token acts for")
    add.add_argument("name", help='what uses the token, e.g. "lịch họp tuần"')
    show = actions.add_parser("list", help="show the tokens (never the tokens themselves)")
    show.add_argument("username", nargs="?", help="only this account's tokens")
    revoke = actions.add_parser("revoke", help="revoke a token (by the id `list` shows)")
    revoke.add_argument("id", type=int)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("Mật khẩu / Password: ")
    second = getpass.getpass("Nhập lại / Repeat: ")
    if first != second:
        raise BadRequest("the two passwords differ")
    return first


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@contextlib.asynccontextmanager
async def _transaction(config: Config) -> AsyncIterator[AsyncSession]:
    """One transaction on the node's database for a command; store failures become StoreError."""
    from sqlalchemy.exc import SQLAlchemyError

    from server.store.db import open_database

    database = await open_database(config)
    try:
        async with database.session() as session, session.begin():
            yield session
    except SQLAlchemyError as exc:  # e.g. the database is locked or went away
        raise StoreError(str(getattr(exc, "orig", None) or exc).splitlines()[0]) from exc
    finally:
        await database.close()


def _run_command(action: Callable[[], str | None]) -> int:
    """Print what `action` returns (exit 0); a GiaoBanError or ^C is one line on stderr (2)."""
    from server.site_csv import CsvRejected

    try:
        output = action()
        if output is not None:
            print(output)
    except CsvRejected as exc:
        print(
            f"giaoban: tệp bị từ chối, không nhập gì / file refused, nothing imported: "
            f"{len(exc.problems)} problem(s)",
            file=sys.stderr,
        )
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except GiaoBanError as exc:
        print(f"giaoban: {exc.message}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, EOFError):
        print("giaoban: cancelled / đã huỷ", file=sys.stderr)
        return 2
    return 0


async def _users(args: argparse.Namespace, config: Config, password: str | None) -> str:
    """Run one `giaoban users` command; returns what to print."""
    from server import accounts
    from server.auth import end_account_sessions

    async with _transaction(config) as session:
        if args.users_command == "add":
            assert password is not None
            account = await accounts.create_account(
                session,
                args.username,
                password,
                role=args.role,
                display_name=args.name,
                site_code=args.site,
            )
            return f"Đã tạo tài khoản / account created: {account.username} ({account.role.value})"
        if args.users_command == "passwd":
            assert password is not None
            account = await accounts.set_password(session, args.username, password)
            await end_account_sessions(session, account.id)  # signed out everywhere
            return f"Đã đổi mật khẩu / password changed: {account.username}"
        if args.users_command == "disable":
            account = await accounts.disable_account(session, args.username)
            await end_account_sessions(session, account.id)
            return f"Đã khoá tài khoản / account disabled: {account.username}"
        rows = [["username", "name", "role", "site", "disabled"]]
        for account in await accounts.list_accounts(session):
            rows.append(
                [
                    account.username,
                    account.display_name,
                    account.role.value,
                    account.site.code if account.site is not None else "-",
                    "yes" if account.disabled else "no",
                ]
            )
        return _table(rows)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment is not None else "-"


async def _tokens(args: argparse.Namespace, config: Config) -> str:
    """Run one `giaoban tokens` command; returns what to print."""
    from server import accounts, api_tokens

    async with _transaction(config) as session:
        if args.tokens_command == "add":
            account = await accounts.get_account(session, args.username)
            row, token = await api_tokens.create_api_token(session, account, args.name)
            # The token alone on the last line: `| tail -n1` hands it to a script.
            return (
                f"Đã tạo mã {row.id} cho {account.username} / token {row.id} made for "
                f"{account.username}; it is shown only now:\n{token}"
            )
        if args.tokens_command == "revoke":
            row = await api_tokens.revoke_api_token(session, None, args.id)
            return f"Đã thu hồi mã / token revoked: {row.id} ({row.name})"
        found = await api_tokens.list_all_api_tokens(session)
        if args.username:
            owner = await accounts.get_account(session, args.username)
            found = [row for row in found if row.account_id == owner.id]
        rows = [["id", "username", "name", "created", "last used", "revoked"]]
        for row in found:
            rows.append(
                [
                    str(row.id),
                    row.account.username,
                    row.name,
                    _when(row.created_at),
                    _when(row.last_used_at),
                    _when(row.revoked_at),
                ]
            )
        return _table(rows)


def _run_tokens(args: argparse.Namespace, config: Config) -> int:
    return _run_command(lambda: asyncio.run(_tokens(args, config)))


def _run_users(args: argparse.Namespace, config: Config) -> int:
    def run() -> str:
        password = None
        if args.users_command in ("add", "passwd"):
            password = _read_password(args.password_stdin)
        return asyncio.run(_users(args, config, password))

    return _run_command(run)


def _add_sites_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sites = commands.add_parser(
        "sites",
        help="manage the site tree (đơn vị): import, list, provinces",
        description=(
            "Manage the site tree in the node's database (GIAOBAN_DATA_DIR or DATABASE_URL)."
        ),
    )
    actions = sites.add_subparsers(dest="sites_command", required=True)
    load = actions.add_parser(
        "import",
        help="import a province and its communes, or an operator's CSV file",
        description=(
            "Import a province and its communes/wards from the vietnam-provinces package (2025 "
            "structure), or a CSV file with the header code,name,level,parent_code. A file with "
            "any problem is refused whole: nothing is imported, every problem is listed."
        ),
    )
    source = load.add_mutually_exclusive_group(required=True)
    source.add_argument("--province", metavar="CODE", help="official province code, e.g. 12")
    source.add_argument("--csv", metavar="FILE", help="UTF-8 CSV file ('-': standard input)")
    load.add_argument("--parent", metavar="CODE", help="with --province: the site above it")
    show = actions.add_parser("list", help="show the tree, indented")
    show.add_argument("--province", metavar="CODE", help="only this site and the sites under it")
    actions.add_parser("provinces", help="list the province codes the package knows")


def _tree_lines(nodes: list[SiteNode], depth: int = 0) -> list[str]:
    lines: list[str] = []
    for node in nodes:
        lines.append(f"{'  ' * depth}{node.code}  {node.name}  ({node.level.value})")
        lines += _tree_lines(node.children, depth + 1)
    return lines


def _read_csv(path: str) -> str:
    from server.sites import decode_csv

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    return decode_csv(data)


async def _sites(args: argparse.Namespace, config: Config) -> str:
    """Run one `giaoban sites` command (but `provinces`); returns what to print."""
    from server import sites

    text = _read_csv(args.csv) if getattr(args, "csv", None) else None
    async with _transaction(config) as session:
        if args.sites_command == "import" and text is not None:
            rows = sites.parse_site_csv(text, await sites.stored_parents(session))
            result = await sites.import_sites(session, rows)
            return f"Đã nhập / imported {args.csv}: {result}"
        if args.sites_command == "import":
            result = await sites.import_province(session, args.province, parent_code=args.parent)
            return f"Đã nhập tỉnh / province imported {args.province}: {result}"
        tree = await sites.site_tree(session)
    if args.province:
        tree = sites.subtree(tree, args.province)
    if not tree:
        return (
            "Chưa có đơn vị nào / no sites yet: giaoban sites import --province CODE "
            "(giaoban sites provinces lists the codes)"
        )
    counts = sites.level_counts(tree)
    total = ", ".join(f"{level.value} {n}" for level, n in counts.items() if n)
    return "\n".join([*_tree_lines(tree), f"Tổng / total: {sum(counts.values())} ({total})"])


def _provinces() -> str:
    from server.sites import PACKAGE_VERSION, package_provinces

    rows = [["code", "name", "type"]]
    rows += [[p.code, p.name, p.division_type] for p in package_provinces()]
    return f"{_table(rows)}\n(vietnam-provinces {PACKAGE_VERSION})"


def _run_sites(args: argparse.Namespace, config: Config) -> int:
    if args.sites_command == "import" and args.parent and not args.province:
        print(
            "giaoban: --parent goes with --province / --parent chỉ dùng với --province",
            file=sys.stderr,
        )
        return 2
    return _run_command(
        lambda: (
            _provinces() if args.sites_command == "provinces" else asyncio.run(_sites(args, config))
        )
    )


def _run_record(args: argparse.Namespace, config: Config) -> int:
    from server.record_worker import default_worker_name, serve_worker

    def run() -> None:
        if args.jobs < 1:
            raise ConfigError("--jobs must be 1 or more")
        asyncio.run(serve_worker(config, args.name or default_worker_name(), args.port, args.jobs))

    return _run_command(run)


def _setup_logging(config: Config) -> None:
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aioice/aiortc log every STUN exchange at INFO in some paths; alembic announces its
    # context on every start. Keep the node's log readable.
    for noisy in ("aioice", "aiortc", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = Config.from_env(
            host=getattr(args, "host", None),
            port=getattr(args, "port", None) if args.command == "serve" else None,
            site=getattr(args, "site", None),
        )
    except ConfigError as exc:
        print(f"giaoban: {exc.message}", file=sys.stderr)
        return 2
    _setup_logging(config)
    if args.command == "users":
        return _run_users(args, config)
    if args.command == "tokens":
        return _run_tokens(args, config)
    if args.command == "sites":
        return _run_sites(args, config)
    if args.command == "record":
        return _run_record(args, config)

    from server.app import SHUTDOWN_TIMEOUT, make_app
    from server.tls import ssl_context

    try:
        context = ssl_context(config)
        app = make_app(config)
        shown_host = "localhost" if config.host in ("0.0.0.0", "::") else config.host
        print(f"Giao Ban: {config.scheme}://{shown_host}:{config.port}", flush=True)
        web.run_app(
            app,
            host=config.host,
            port=config.port,
            ssl_context=context,
            print=None,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
    except GiaoBanError as exc:  # e.g. the database cannot be opened: one line, no traceback
        print(f"giaoban: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
