"""`giaoban users ...` end to end as a subprocess, and the first-admin hint of `giaoban serve`."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from server import accounts
from server.app import DATABASE, FIRST_ADMIN_COMMAND, make_app
from server.config import Config
from server.errors import Forbidden, LoginFailed
from server.store.db import open_database
from server.store.models import Site, SiteLevel

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "mật khẩu ban đầu"


def giaoban(
    data_dir: Path, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environ.update(GIAOBAN_DATA_DIR=str(data_dir), PYTHONIOENCODING="utf-8", **env)
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environ,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def rows(output: str) -> dict[str, list[str]]:
    """`users list` rows by username: [name, role, site, disabled] (cells split on 2+ spaces)."""
    lines = output.splitlines()
    assert lines[0].split() == ["username", "name", "role", "site", "disabled"]
    result = {}
    for line in lines[1:]:
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        result[cells[0]] = cells[1:]
    return result


async def _add_site(data_dir: Path, code: str, name: str) -> None:
    database = await open_database(Config(data_dir=data_dir))
    try:
        async with database.session() as session, session.begin():
            session.add(Site(code=code, name=name, level=SiteLevel.COMMUNE))
    finally:
        await database.close()


async def _add_admin(data_dir: Path) -> None:
    database = await open_database(Config(data_dir=data_dir))
    try:
        async with database.session() as session, session.begin():
            await accounts.create_account(session, "admin", PASSWORD, role="admin")
    finally:
        await database.close()


async def _usernames(data_dir: Path) -> list[str]:
    database = await open_database(Config(data_dir=data_dir))
    try:
        async with database.session() as session:
            return [a.username for a in await accounts.list_accounts(session)]
    finally:
        await database.close()


async def _authenticate(data_dir: Path, username: str, password: str) -> str:
    database = await open_database(Config(data_dir=data_dir))
    try:
        async with database.session() as session, session.begin():
            return (await accounts.authenticate(session, username, password)).username
    finally:
        await database.close()


async def test_users_add_list_passwd_disable(tmp_path: Path) -> None:
    added = giaoban(
        tmp_path,
        *("users", "add", "Admin", "--role", "admin", "--name", "Nguyễn Văn Quản Trị"),
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert added.returncode == 0, added.stderr
    assert "admin (admin)" in added.stdout
    assert (tmp_path / "giaoban.sqlite3").is_file()

    await _add_site(tmp_path, "26734", "Phường Bến Nghé")
    host = giaoban(
        tmp_path,
        *("users", "add", "lan", "--role", "host", "--site", "26734", "--password-stdin"),
        stdin=PASSWORD + "\n",
    )
    assert host.returncode == 0, host.stderr

    listed = giaoban(tmp_path, "users", "list")
    assert listed.returncode == 0, listed.stderr
    assert rows(listed.stdout) == {
        "admin": ["Nguyễn Văn Quản Trị", "admin", "-", "no"],
        "lan": ["lan", "host", "26734", "no"],
    }
    assert await _authenticate(tmp_path, "admin", PASSWORD) == "admin"

    new = "một mật khẩu mới hơn"
    changed = giaoban(tmp_path, "users", "passwd", "ADMIN", "--password-stdin", stdin=new + "\n")
    assert changed.returncode == 0, changed.stderr
    assert await _authenticate(tmp_path, "admin", new) == "admin"
    with pytest.raises(LoginFailed):
        await _authenticate(tmp_path, "admin", PASSWORD)

    disabled = giaoban(tmp_path, "users", "disable", "lan")
    assert disabled.returncode == 0, disabled.stderr
    assert rows(giaoban(tmp_path, "users", "list").stdout)["lan"][-1] == "yes"
    with pytest.raises(Forbidden):
        await _authenticate(tmp_path, "lan", PASSWORD)

    for run in (added, host, listed, changed, disabled):  # logged, but never the secrets
        assert PASSWORD not in run.stderr and new not in run.stderr
        assert "$argon2" not in run.stderr


@pytest.mark.parametrize(
    ("args", "stdin", "expected"),
    [
        (
            ("add", "ADMIN", "--role", "host"),
            PASSWORD,
            "Đã tồn tại / Already exists: username 'admin' is taken",
        ),
        (
            ("add", "lan", "--role", "host", "--site", "00000"),
            PASSWORD,
            "Không tìm thấy / Not found: no site with code '00000'",
        ),
        (
            ("add", "lan", "--role", "host"),
            "ngắn",
            "Yêu cầu không hợp lệ / Bad request: password must have at least 10 characters",
        ),
        (
            ("add", "lan", "--role", "chief"),
            PASSWORD,
            "Yêu cầu không hợp lệ / Bad request: role must be one of",
        ),
        (("passwd", "nobody"), PASSWORD, "Không tìm thấy / Not found: no account 'nobody'"),
        (("disable", "nobody"), "", "Không tìm thấy / Not found: no account 'nobody'"),
    ],
    ids=["duplicate", "unknown-site", "short-password", "bad-role", "passwd-unknown", "disable"],
)
async def test_users_errors_exit_2_with_one_line(
    tmp_path: Path, args: tuple[str, ...], stdin: str, expected: str
) -> None:
    await _add_admin(tmp_path)
    args = (*args, "--password-stdin") if args[0] in ("add", "passwd") else args
    result = giaoban(tmp_path, "users", *args, stdin=stdin + "\n")
    assert result.returncode == 2
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if line.startswith("giaoban: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert await _usernames(tmp_path) == ["admin"]


@pytest.mark.parametrize("command", [("users", "list"), ("serve", "--port", "0")])
def test_unreachable_database_exits_2(tmp_path: Path, command: tuple[str, ...]) -> None:
    result = giaoban(
        tmp_path, *command, DATABASE_URL="postgresql://gb:s3cr3t-pw@127.0.0.1:1/giaoban"
    )
    assert result.returncode == 2
    assert "giaoban: Lỗi cơ sở dữ liệu / Database error: cannot open the database" in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cr3t-pw" not in result.stderr


async def _start_and_stop(config: Config) -> None:
    runner = web.AppRunner(make_app(config))
    await runner.setup()  # runs the lifecycle up to its yield
    try:
        assert runner.app is not None
        database = runner.app[DATABASE]
        async with database.session() as session:
            await accounts.list_accounts(session)  # migrated and open
    finally:
        await runner.cleanup()


async def test_serve_tells_how_to_create_the_first_admin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = Config(host="127.0.0.1", port=0, data_dir=tmp_path, ice_host_addresses=("127.0.0.1",))
    caplog.set_level(logging.INFO, logger="server.app")
    await _start_and_stop(config)
    hints = [
        r for r in caplog.records if r.levelno == logging.WARNING and "no admin" in r.getMessage()
    ]
    assert len(hints) == 1
    assert "`giaoban users add admin --role admin`" in hints[0].getMessage()
    assert FIRST_ADMIN_COMMAND == "giaoban users add admin --role admin"

    await _add_admin(tmp_path)
    caplog.clear()
    await _start_and_stop(config)
    assert not [r for r in caplog.records if "no admin" in r.getMessage()]
    assert any("node ready" in r.getMessage() for r in caplog.records)


def test_every_command_reports_errors_in_one_line_without_a_traceback(tmp_path: Path) -> None:
    cases = [
        (("users", "passwd", "nobody", "--password-stdin"), "new password\n"),
        (("users", "add", "someone", "--role", "member", "--password-stdin"), ""),  # no password
        (("tokens", "revoke", "999"), ""),
        (("sites", "list", "--province", "NOPE"), ""),
        (("record", "--jobs", "0"), ""),
    ]
    for args, stdin in cases:
        result = giaoban(tmp_path, *args, stdin=stdin, REDIS_URL="redis://127.0.0.1:1/0")
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        errors = [line for line in result.stderr.splitlines() if line.startswith("giaoban: ")]
        assert len(errors) == 1 and "Traceback" not in result.stderr, (args, result.stderr)
