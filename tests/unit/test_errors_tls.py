"""server/errors.py (wire shape of errors) and server/tls.py (self-signed certificates)."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server import errors
from server.config import Config
from server.tls import make_self_signed, ssl_context

ALL_ERRORS = [
    errors.GiaoBanError,
    errors.ConfigError,
    errors.BadRequest,
    errors.TooLarge,
    errors.UnknownEvent,
    errors.NotJoined,
    errors.AlreadyJoined,
    errors.NotFound,
    errors.Conflict,
    errors.Forbidden,
    errors.LoginFailed,
    errors.StoreError,
    errors.Unauthenticated,
    errors.InvalidToken,
    errors.RoomEnded,
    errors.RoomLocked,
    errors.TooMany,
    errors.NoRecorder,
]
# Kinds of another error that keep its code (a taken name is a conflict).
SAME_CODE = {errors.AlreadyExists}


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_to_wire_shape(cls: type[errors.GiaoBanError]) -> None:
    wire = cls("chi tiết / detail").to_wire()
    assert list(wire) == ["error"]
    assert set(wire["error"]) == {"code", "message"}
    assert wire["error"]["code"] == cls.code
    message = wire["error"]["message"]
    vi, rest = message.split(" / ", 1)
    assert vi == cls.message_vi
    assert rest.startswith(cls.message_en + ": ")
    assert message.endswith(": chi tiết / detail")
    assert json.loads(json.dumps(wire, ensure_ascii=False)) == wire


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_message_without_detail(cls: type[errors.GiaoBanError]) -> None:
    err = cls()
    assert err.to_wire() == {
        "error": {"code": cls.code, "message": f"{cls.message_vi} / {cls.message_en}"}
    }
    assert str(err) == cls.message_en


def test_codes_are_unique_and_stable() -> None:
    codes = [cls.code for cls in ALL_ERRORS]
    assert len(set(codes)) == len(codes)
    assert {
        "internal",
        "config",
        "bad_request",
        "too_large",
        "unknown_event",
        "not_joined",
        "already_joined",
        "not_found",
        "conflict",
        "forbidden",
        "login_failed",
        "store",
        "unauthenticated",
        "invalid_token",
        "room_ended",
        "room_locked",
        "rate_limited",
        "no_recorder",
    } == set(codes)


def test_every_error_of_the_module_is_covered() -> None:
    defined = {
        obj
        for obj in vars(errors).values()
        if isinstance(obj, type) and issubclass(obj, errors.GiaoBanError)
    }
    assert defined == set(ALL_ERRORS) | SAME_CODE


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=lambda c: c.__name__)
def test_bilingual_messages(cls: type[errors.GiaoBanError]) -> None:
    assert cls.message_vi and cls.message_en
    assert cls.message_vi != cls.message_en
    assert cls.message_en.isascii()
    if cls is not errors.GiaoBanError:
        assert issubclass(cls, errors.GiaoBanError)
    # Vietnamese text has diacritics (the part people in the communes read)
    assert not cls.message_vi.isascii()


def test_detail_is_the_exception_text() -> None:
    err = errors.BadRequest("'room' is empty")
    assert str(err) == "'room' is empty"
    assert err.detail == "'room' is empty"
    with pytest.raises(errors.GiaoBanError):
        raise err


def test_too_large_is_not_a_bad_request() -> None:
    """The two codes stay distinct: callers catch GiaoBanError, not BadRequest, for both."""
    assert not issubclass(errors.TooLarge, errors.BadRequest)
    assert errors.TooLarge("x").to_wire()["error"]["code"] == "too_large"


# -- make_self_signed ---------------------------------------------------------------------------


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_self_signed_cert_loads_and_has_the_sans(tmp_path: Path) -> None:
    cert_path = tmp_path / "tls" / "node.crt"
    key_path = tmp_path / "tls" / "node.key"
    hosts = ["giaoban.local", "localhost", "127.0.0.1", "::1", "192.168.1.10"]
    make_self_signed(cert_path, key_path, hosts)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)  # raises if they do not match

    cert = load_cert(cert_path)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["giaoban.local", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.168.1.10"),
    ]
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "giaoban.local"
    assert cert.issuer == cert.subject  # self-signed
    now = datetime.datetime.now(datetime.UTC)
    assert cert.not_valid_before_utc <= now < cert.not_valid_after_utc
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=700)


def test_self_signed_signature_verifies(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(cert_path, key_path, ["localhost"])
    cert = load_cert(cert_path)
    cert.verify_directly_issued_by(cert)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


def test_private_key_is_not_world_readable(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    make_self_signed(cert_path, key_path, ["localhost"])
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_each_certificate_is_new(tmp_path: Path) -> None:
    make_self_signed(tmp_path / "a.crt", tmp_path / "a.key", ["localhost"])
    make_self_signed(tmp_path / "b.crt", tmp_path / "b.key", ["localhost"])
    a, b = load_cert(tmp_path / "a.crt"), load_cert(tmp_path / "b.crt")
    assert a.serial_number != b.serial_number
    assert (tmp_path / "a.key").read_bytes() != (tmp_path / "b.key").read_bytes()


def test_key_in_another_new_directory(tmp_path: Path) -> None:
    """The cert's directory is created; the key's must be too (e.g. /etc/ssl/private/...)."""
    cert_path = tmp_path / "certs" / "node.crt"
    key_path = tmp_path / "private" / "node.key"
    make_self_signed(cert_path, key_path, ["localhost"])
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)


# -- ssl_context --------------------------------------------------------------------------------


def test_no_tls_configured_gives_none(tmp_path: Path) -> None:
    assert ssl_context(Config(data_dir=tmp_path)) is None


def test_self_signed_context_is_made_once_and_reused(tmp_path: Path) -> None:
    config = Config(data_dir=tmp_path, tls_self_signed=True, ice_host_addresses=("10.1.2.3",))
    context = ssl_context(config)
    assert isinstance(context, ssl.SSLContext)
    cert_path = tmp_path / "tls" / "self-signed.crt"
    first = cert_path.read_bytes()
    san = load_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert "localhost" in san.value.get_values_for_type(x509.DNSName)
    ips = san.value.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("10.1.2.3") in ips
    assert isinstance(ssl_context(config), ssl.SSLContext)
    assert cert_path.read_bytes() == first  # not regenerated: browsers keep their exception


def test_given_cert_and_key_are_used(tmp_path: Path) -> None:
    cert_path, key_path = tmp_path / "given.crt", tmp_path / "given.key"
    make_self_signed(cert_path, key_path, ["hop.example.vn"])
    config = Config(data_dir=tmp_path / "data", tls_cert=cert_path, tls_key=key_path)
    assert isinstance(ssl_context(config), ssl.SSLContext)
    assert not (tmp_path / "data").exists()  # no self-signed one made


def test_mismatched_cert_and_key_fail(tmp_path: Path) -> None:
    make_self_signed(tmp_path / "a.crt", tmp_path / "a.key", ["localhost"])
    make_self_signed(tmp_path / "b.crt", tmp_path / "b.key", ["localhost"])
    config = Config(tls_cert=tmp_path / "a.crt", tls_key=tmp_path / "b.key")
    with pytest.raises(ssl.SSLError):
        ssl_context(config)
