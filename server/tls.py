"""HTTPS for the node: browsers give camera and microphone only to https:// or localhost."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from server.config import Config

log = logging.getLogger(__name__)


def make_self_signed(cert_path: Path, key_path: Path, hostnames: list[str]) -> None:
    """Write a self-signed certificate (valid 2 years) for the given host names and IPs."""
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hostnames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Giao Ban (self-signed)"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=730))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The TLS context for the node, making a self-signed certificate on first start if asked."""
    if config.tls_cert and config.tls_key:
        cert, key = config.tls_cert, config.tls_key
    elif config.tls_self_signed:
        cert = config.data_dir / "tls" / "self-signed.crt"
        key = config.data_dir / "tls" / "self-signed.key"
        if not cert.exists():
            hosts = ["localhost", "127.0.0.1", socket.gethostname(), *config.ice_host_addresses]
            make_self_signed(cert, key, list(dict.fromkeys(hosts)))
            log.warning(
                "made a self-signed certificate %s: browsers will warn once per device", cert
            )
    else:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context
