"""server/config.py: Config.from_env reads every setting from an environment mapping."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from server.config import SETTINGS, Config
from server.errors import ConfigError

ICE_JSON = (
    '[{"urls": ["turn:turn.example.vn:3478"], "username": "u", "credential": "p"},'
    ' {"urls": "turns:turn2.example.vn:5349"}]'
)

FULL_ENV = {
    "GIAOBAN_HOST": "127.0.0.1",
    "GIAOBAN_PORT": "9443",
    "GIAOBAN_PUBLIC_URL": "https://hop.tinh.gov.vn",
    "GIAOBAN_DATA_DIR": "/var/lib/giaoban",
    "REDIS_URL": "redis://redis:6379/0",
    "GIAOBAN_REDIS_PREFIX": "tinh-01:",
    "GIAOBAN_SITE": "01",
    "GIAOBAN_NODE_ID": "node-tinh",
    "GIAOBAN_CAPACITY": "300",
    "GIAOBAN_HEARTBEAT_INTERVAL": "2.5",
    "GIAOBAN_NODE_DEAD_AFTER": "12",
    "GIAOBAN_VERIFY_INTERVAL_HOURS": "0",
    "GIAOBAN_RECORDER": "workers",
    "GIAOBAN_RECORDER_DEAD_AFTER": "20",
    "DATABASE_URL": "postgresql://gb:pw@db/gb",
    "GIAOBAN_ICE_SERVERS": ICE_JSON,
    "GIAOBAN_ICE_HOST_ADDRESSES": " 10.0.0.5, 192.168.1.10 ,,fd00::5 ",
    "GIAOBAN_ICE_PUBLIC_ADDRESS": "203.0.113.7",
    "GIAOBAN_TLS_CERT": "/etc/giaoban/cert.pem",
    "GIAOBAN_TLS_KEY": "/etc/giaoban/key.pem",
    "GIAOBAN_TLS_SELF_SIGNED": "1",
    "GIAOBAN_SECRET_KEY": "k" * 40,
    "GIAOBAN_FORWARDING_LOOP": "Python",
    "GIAOBAN_LOG_LEVEL": "DEBUG",
}


def test_defaults_from_empty_environment() -> None:
    config = Config.from_env({})
    assert config == Config()
    assert config.host == "0.0.0.0"
    assert config.port == 8080
    assert config.data_dir == Path("data")
    assert config.redis_url is None
    assert config.database_url is None
    assert config.ice_servers == ()
    assert config.ice_host_addresses == ()
    assert config.ice_public_address is None
    assert config.tls_cert is None and config.tls_key is None
    assert config.tls_self_signed is False
    assert config.log_level == "INFO"
    assert config.scheme == "http"
    assert config.base_url == "http://localhost:8080"


def test_every_setting_is_parsed() -> None:
    config = Config.from_env(FULL_ENV)
    assert config.host == "127.0.0.1"
    assert config.port == 9443
    assert config.public_url == "https://hop.tinh.gov.vn"
    assert config.data_dir == Path("/var/lib/giaoban")
    assert config.redis_url == "redis://redis:6379/0"
    assert config.redis_prefix == "tinh-01:"
    assert (config.site, config.node_name, config.capacity) == ("01", "node-tinh", 300)
    assert (config.heartbeat_interval, config.node_dead_after) == (2.5, 12.0)
    assert config.verify_interval_hours == 0.0  # 0 turns the scheduled check off
    assert (config.recorder, config.recorder_dead_after) == ("workers", 20.0)
    assert config.database_url == "postgresql://gb:pw@db/gb"
    assert config.ice_servers == (
        {"urls": ["turn:turn.example.vn:3478"], "username": "u", "credential": "p"},
        {"urls": "turns:turn2.example.vn:5349"},
    )
    assert config.ice_host_addresses == ("10.0.0.5", "192.168.1.10", "fd00::5")
    assert config.ice_public_address == "203.0.113.7"
    assert config.tls_cert == Path("/etc/giaoban/cert.pem")
    assert config.tls_key == Path("/etc/giaoban/key.pem")
    assert config.tls_self_signed is True
    assert config.secret_key == "k" * 40
    assert config.forwarding_loop == "python"
    assert config.log_level == "DEBUG"
    assert config.scheme == "https"
    assert config.base_url == "https://hop.tinh.gov.vn"


def test_recorder_is_node_or_workers_and_workers_need_redis() -> None:
    assert Config.from_env({}).recorder == "node"
    with pytest.raises(ConfigError, match="node or workers"):
        Config.from_env({"GIAOBAN_RECORDER": "elsewhere"})
    with pytest.raises(ConfigError, match="needs REDIS_URL"):
        Config.from_env({"GIAOBAN_RECORDER": "workers"})
    with pytest.raises(ConfigError, match="GIAOBAN_RECORDER_DEAD_AFTER must be positive"):
        Config.from_env({"GIAOBAN_RECORDER_DEAD_AFTER": "0"})


def test_forwarding_loop_is_c_or_python() -> None:
    assert Config.from_env({}).forwarding_loop == "c"
    with pytest.raises(ConfigError, match="c or python"):
        Config.from_env({"GIAOBAN_FORWARDING_LOOP": "rust"})


def test_settings_table_covers_every_field() -> None:
    """The one table (`serve --help`) and the dataclass must not drift apart."""
    field_names = {f.name for f in dataclasses.fields(Config)} - {"extra"}
    assert set(SETTINGS) == field_names
    assert set(FULL_ENV) == {s.env for s in SETTINGS.values()}
    assert all(s.help for s in SETTINGS.values())


def test_unrelated_environment_is_ignored() -> None:
    config = Config.from_env({"PATH": "/usr/bin", "HOME": "/root", "GIAOBAN_NONSENSE": "1"})
    assert config == Config()


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_blank_values_mean_default(blank: str) -> None:
    env = {setting.env: blank for setting in SETTINGS.values()}
    assert Config.from_env(env) == Config()


def test_values_are_stripped() -> None:
    config = Config.from_env({"GIAOBAN_PORT": " 8443 ", "GIAOBAN_HOST": " ::1 "})
    assert config.port == 8443
    assert config.host == "::1"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("0", False),
        ("false", False),
        ("no", False),
        ("off", False),
    ],
)
def test_tls_self_signed_values(raw: str, expected: bool) -> None:
    config = Config.from_env({"GIAOBAN_TLS_SELF_SIGNED": raw})
    assert config.tls_self_signed is expected
    assert config.scheme == ("https" if expected else "http")


def test_base_url_follows_scheme_and_port() -> None:
    config = Config.from_env({"GIAOBAN_PORT": "8443", "GIAOBAN_TLS_SELF_SIGNED": "yes"})
    assert config.base_url == "https://localhost:8443"


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["abc", "80a", "8080.0", "0x50", "8 080"])
def test_bad_port_is_config_error(port: str) -> None:
    with pytest.raises(ConfigError, match="GIAOBAN_PORT") as info:
        Config.from_env({"GIAOBAN_PORT": port})
    assert info.value.code == "config"
    assert repr(port) in str(info.value.detail)


@pytest.mark.parametrize("port", ["70000", "65536", "-1"])
def test_out_of_range_port_is_config_error(port: str) -> None:
    with pytest.raises(ConfigError, match="GIAOBAN_PORT"):
        Config.from_env({"GIAOBAN_PORT": port})


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("[{", "not JSON"),
        ("turn:turn.example.vn", "not JSON"),
        ("{'urls': 'stun:x'}", "not JSON"),
        ('{"urls": "stun:x"}', "JSON list of objects"),
        ('["stun:x"]', "JSON list of objects"),
        ('[{"url": "stun:x"}]', "JSON list of objects"),
        ('[{"urls": "stun:x"}, 3]', "JSON list of objects"),
        ("null", "JSON list of objects"),
        ("42", "JSON list of objects"),
    ],
)
def test_bad_ice_servers_is_config_error(raw: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        Config.from_env({"GIAOBAN_ICE_SERVERS": raw})
    assert "GIAOBAN_ICE_SERVERS" in info.value.detail


def test_empty_ice_list_is_fine() -> None:
    assert Config.from_env({"GIAOBAN_ICE_SERVERS": "[]"}).ice_servers == ()


@pytest.mark.parametrize(
    "env",
    [
        {"GIAOBAN_TLS_CERT": "/etc/cert.pem"},
        {"GIAOBAN_TLS_KEY": "/etc/key.pem"},
        {"GIAOBAN_TLS_CERT": "/etc/cert.pem", "GIAOBAN_TLS_KEY": "  "},
    ],
    ids=["cert-only", "key-only", "blank-key"],
)
def test_tls_cert_and_key_go_together(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="GIAOBAN_TLS_CERT and GIAOBAN_TLS_KEY"):
        Config.from_env(env)


# -- CLI overrides ------------------------------------------------------------------------------


def test_overrides_win_over_environment() -> None:
    config = Config.from_env(
        {"GIAOBAN_PORT": "9000", "GIAOBAN_HOST": "10.0.0.1", "GIAOBAN_LOG_LEVEL": "DEBUG"},
        port=7000,
        host="127.0.0.1",
    )
    assert config.port == 7000
    assert config.host == "127.0.0.1"
    assert config.log_level == "DEBUG"  # not overridden: from the environment


def test_none_overrides_are_ignored() -> None:
    config = Config.from_env({"GIAOBAN_PORT": "9000"}, port=None, host=None)
    assert config.port == 9000
    assert config.host == "0.0.0.0"


def test_string_overrides_are_parsed_like_environment() -> None:
    config = Config.from_env(
        {},
        port="8443",
        data_dir="/srv/gb",
        ice_host_addresses="10.0.0.1,10.0.0.2",
        ice_servers='[{"urls": "stun:x"}]',
        tls_self_signed="true",
    )
    assert config.port == 8443
    assert config.data_dir == Path("/srv/gb")
    assert config.ice_host_addresses == ("10.0.0.1", "10.0.0.2")
    assert config.ice_servers == ({"urls": "stun:x"},)
    assert config.tls_self_signed is True


def test_typed_overrides_are_kept() -> None:
    config = Config.from_env(
        {"GIAOBAN_TLS_SELF_SIGNED": "1"}, tls_self_signed=False, data_dir=Path("/x")
    )
    assert config.tls_self_signed is False
    assert config.data_dir == Path("/x")


def test_bad_port_override_is_config_error() -> None:
    with pytest.raises(ConfigError):
        Config.from_env({"GIAOBAN_PORT": "8080"}, port="eighty")


def test_override_completing_tls_pair() -> None:
    config = Config.from_env({"GIAOBAN_TLS_CERT": "/c.pem"}, tls_key="/k.pem")
    assert config.tls_key == Path("/k.pem")
    assert config.scheme == "https"


def test_unknown_overrides_are_ignored() -> None:
    overrides: dict[str, Any] = {"verbose": True, "command": "serve"}
    assert Config.from_env({}, **overrides) == Config()


def test_from_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in SETTINGS.values():
        monkeypatch.delenv(setting.env, raising=False)
    monkeypatch.setenv("GIAOBAN_PORT", "8181")
    assert Config.from_env().port == 8181


def test_config_is_immutable() -> None:
    config = Config.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GIAOBAN_CAPACITY", "many", "must be a number"),
        ("GIAOBAN_HEARTBEAT_INTERVAL", "0", "must be positive"),
        ("GIAOBAN_NODE_DEAD_AFTER", "-3", "must be positive"),
    ],
)
def test_bad_cluster_numbers_are_refused(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config.from_env({variable: value})


def test_the_node_name_defaults_to_host_and_port() -> None:
    import socket

    assert Config(port=8443).node_name == f"{socket.gethostname()}:8443"
