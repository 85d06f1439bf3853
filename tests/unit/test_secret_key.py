"""server/secret_key.py: one key per data directory, private to the node's user."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.config import Config
from server.errors import ConfigError
from server.secret_key import SECRET_KEY_FILE, load_secret_key


def test_first_start_makes_a_private_key_and_later_starts_reuse_it(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path / "data")
    first = load_secret_key(config)
    assert len(first) >= 32
    path = tmp_path / "data" / SECRET_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_secret_key(config) == first
    assert sorted(p.name for p in path.parent.iterdir()) == [SECRET_KEY_FILE]


def test_two_data_directories_get_different_keys(tmp_path: Path) -> None:
    assert load_secret_key(Config(data_dir=tmp_path / "a")) != load_secret_key(
        Config(data_dir=tmp_path / "b")
    )


def test_processes_starting_together_agree_on_one_key(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path)
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: load_secret_key(config), range(32)))
    assert keys == {(tmp_path / SECRET_KEY_FILE).read_bytes().strip()}


def test_the_environment_wins_and_must_be_long(tmp_path: Path) -> None:
    assert load_secret_key(Config(data_dir=tmp_path, secret_key="s" * 32)) == b"s" * 32
    assert not (tmp_path / SECRET_KEY_FILE).exists()
    with pytest.raises(ConfigError, match="at least 32"):
        load_secret_key(Config(data_dir=tmp_path, secret_key="short"))


def test_a_truncated_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / SECRET_KEY_FILE).write_text("abc\n")
    with pytest.raises(ConfigError, match="shorter than 32"):
        load_secret_key(Config(data_dir=tmp_path))
