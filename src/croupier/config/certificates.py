"""Certificates and keys as TLS listeners use them: loaded, checked and named once, by `check`
and by `run` alike, so that `check` refuses every file `run` would.

A certificate file holds the leaf first, then its chain; each must be issued by the next.
The names a certificate serves are its subjectAltName DNS names (its common name only when it
has none, as old certificates do), matched exactly or, for `*.example.com`, one label deep.
"""

from __future__ import annotations

import os
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where a certificate is read: a config without TLS never loads it
# (several MB a process).

# Mozilla's "intermediate" profile for TLS 1.2 (TLS 1.3's suites are all good and fixed).
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")

EXPIRY_WARNING = timedelta(days=14)


class CertificateError(Exception):
    """A certificate or key that cannot serve: `file` is the one at fault."""

    def __init__(self, file: Path, reason: str) -> None:
        self.file = file
        self.reason = reason
        super().__init__(f"{file}: {reason}")


@dataclass(frozen=True, slots=True)
class Certificate:
    cert: Path
    key: Path
    names: tuple[str, ...]      # lower case; "*.example.com" for a wildcard
    not_after: datetime
    key_type: str               # "rsa", "ecdsa" or another: two of one name must differ


def server_context(min_version: str, client_ca: Path | None = None,
                   client_verify: str = "require") -> ssl.SSLContext:
    """A server context with croupier's protocol settings and no certificate yet; with
    `client_ca`, clients are asked for a certificate that CA issued ("require": no
    connection without one; "optional": one without goes on, none is passed on)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if client_verify == "require" else ssl.CERT_OPTIONAL
    ctx.minimum_version = (ssl.TLSVersion.TLSv1_3 if min_version == "1.3"
                           else ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers(INTERMEDIATE_CIPHERS)
    ctx.set_alpn_protocols(["http/1.1"])    # never advertise what is not served
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def member_context(ca: Path | None, verify: bool, cert: Path | None,
                   key: Path | None) -> ssl.SSLContext:
    """A client context for TLS to members (OSError or ssl.SSLError when a file will not
    do)."""
    ctx = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def check_client_ca(path: Path) -> None:
    """A CA file clients' certificates are checked against (CertificateError naming it)."""
    try:
        server_context("1.2", path)
    except FileNotFoundError as e:
        raise CertificateError(path, e.strerror or str(e)) from None
    except ssl.SSLError as e:
        raise CertificateError(path, f"holds no usable CA certificate ({e.reason or e})") from None


def load_certificate(cert: Path, key: Path) -> Certificate:
    """Read and check one certificate and its key (CertificateError naming the file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    try:
        pem = cert.read_bytes()
    except OSError as e:
        raise CertificateError(cert, e.strerror or str(e)) from None
    try:
        chain = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise CertificateError(cert, "holds no PEM certificate") from None
    for i in range(len(chain) - 1):
        if chain[i].issuer != chain[i + 1].subject:
            raise CertificateError(
                cert, f"the chain is out of order: certificate {i + 1} was not issued by "
                      f"certificate {i + 2} (the leaf comes first, then each issuer)")
    try:
        key.stat()
    except OSError as e:
        raise CertificateError(key, e.strerror or str(e)) from None
    def encrypted() -> bytes:
        raise CertificateError(key, "is encrypted with a passphrase; croupier needs it "
                                    "unencrypted, readable by its user only")
    try:
        server_context("1.2").load_cert_chain(cert, key, password=encrypted)
    except ssl.SSLError as e:
        reason = ("does not match the certificate " + str(cert)
                  if "KEY_VALUES_MISMATCH" in str(e) else f"cannot be used: {e.reason or e}")
        raise CertificateError(key, reason) from None
    leaf = chain[0]
    public = leaf.public_key()
    key_type = ("ecdsa" if isinstance(public, ec.EllipticCurvePublicKey)
                else "rsa" if isinstance(public, rsa.RSAPublicKey) else type(public).__name__)
    return Certificate(cert, key, _names(leaf), leaf.not_valid_after_utc, key_type)


def certificate_end(cert: Path) -> datetime:
    """When the first certificate of a PEM file expires (ValueError: none there)."""
    from cryptography import x509
    return x509.load_pem_x509_certificates(cert.read_bytes())[0].not_valid_after_utc


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [n.lower() for n in san.value.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        names = []
    if not names:
        names = [str(a.value).lower()
                 for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return tuple(names)


def warnings(certificate: Certificate, now: datetime | None = None) -> list[str]:
    """What an operator should hear about, short of refusing to start."""
    now = now or datetime.now(UTC)
    out = []
    left = certificate.not_after - now
    if left <= timedelta(0):
        out.append(f"{certificate.cert}: expired on {certificate.not_after:%Y-%m-%d}")
    elif left <= EXPIRY_WARNING:
        out.append(f"{certificate.cert}: expires on {certificate.not_after:%Y-%m-%d}, "
                   f"in {left.days} days")
    mode = os.stat(certificate.key).st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        out.append(f"{certificate.key}: the private key is readable by others "
                   f"(mode {stat.S_IMODE(mode):o}; 600 keeps it to its owner)")
    return out


def name_matches(name: str, pattern: str) -> bool:
    """`name` (lower case) is served by `pattern`: equal, or a wildcard one label deep."""
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return name == pattern
