"""TLS for clients: the contexts a TLS listener wraps its connections with.

Rules kept here (DESIGN.md, "Pitfalls"):
- A listener wraps every connection with one session context, made once and kept for the
  listener's life: OpenSSL seals session tickets with the keys of the context a connection
  was first wrapped with, not of the one the SNI callback switches to. The callback picks the
  certificate's context by the name the client asked for, from a table (`SniTable`) that a
  reload may replace.
- Python cannot set ticket keys: a context makes its own, at random, when it is created. So
  with workers, the session contexts are made once in the supervisor (`keep_sessions`) before
  its fork server starts, and every worker forked from it wraps with the same ones: a ticket
  one worker issued resumes on any other, and on a worker started later in its place.
- Certificates of the same names with different key types (RSA and ECDSA) share one context:
  OpenSSL then serves the one the client's signature algorithms allow.
- uvloop's TLS transport does the record layer; the data plane sees plain bytes, and knows a
  connection is TLS once, from its listener (`Listener.scheme`).
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from pathlib import Path
from typing import Final

from croupier.config.certificates import (
    Certificate,
    CertificateError,
    load_certificate,
    name_matches,
    server_context,
)
from croupier.config.schema import ListenerConfig, ListenerTlsConfig

SNI_ATTRIBUTE: Final = "croupier_sni"

# Session contexts made before the workers were forked, by listener name, with the settings
# they were made with and the certificate loaded into them (runtime/forkserver.py).
_KEPT: Final[dict[str, tuple[tuple[str, str | None, str], Certificate, ssl.SSLContext]]] = {}


class SniTable:
    """Names to certificate contexts; the first certificate's is the default."""

    def __init__(self, config: ListenerTlsConfig, certificates: list[Certificate],
                 client_ca: Path | None = None) -> None:
        self.certificates = certificates
        self.client_ca = client_ca
        by_names: dict[tuple[str, ...], ssl.SSLContext] = {}
        self.contexts: list[tuple[tuple[str, ...], ssl.SSLContext]] = []
        for cert in certificates:
            ctx = by_names.get(cert.names)
            if ctx is None:
                ctx = by_names[cert.names] = server_context(config.min_version, client_ca,
                                                            config.client_verify)
                self.contexts.append((cert.names, ctx))
            ctx.load_cert_chain(cert.cert, cert.key)
        self.default = self.contexts[0][1]
        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcards: list[tuple[str, ssl.SSLContext]] = []
        for names, ctx in self.contexts:
            for name in names:
                if name.startswith("*."):
                    self.wildcards.append((name, ctx))
                else:
                    self.exact.setdefault(name, ctx)

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        if server_name is None:
            return self.default
        name = server_name.lower()
        ctx = self.exact.get(name)
        if ctx is not None:
            return ctx
        for pattern, ctx in self.wildcards:
            if name_matches(name, pattern):
                return ctx
        return self.default


def load_table(config: ListenerTlsConfig, beside: Path) -> SniTable:
    """Every certificate of a listener, loaded (CertificateError naming the file)."""
    return SniTable(config, [load_certificate(beside / c.cert, beside / c.key)
                             for c in config.certificates],
                    beside / config.client_ca if config.client_ca is not None else None)


def _settings(config: ListenerTlsConfig) -> tuple[str, str | None, str]:
    return (config.min_version, config.client_ca, config.client_verify)


class ListenerTls:
    """A TLS listener's session context (kept) and its SNI table (replaced on reload)."""

    def __init__(self, name: str, config: ListenerTlsConfig, table: SniTable) -> None:
        self.config = config
        self.table = table
        first = table.certificates[0]
        kept = _KEPT.get(name)
        if kept is not None and kept[0] == _settings(config):
            # Made before this worker was forked: its ticket keys are every worker's.
            self.context, loaded = kept[2], kept[1]
            self.inherited = True
        else:
            # Client certificates are asked for and checked alike by every context: the one
            # a connection starts with and the one the SNI callback may switch it to.
            self.context = server_context(config.min_version, table.client_ca,
                                          config.client_verify)
            # Its own certificate is the default's: a client without SNI gets it even where
            # the callback is not asked.
            self.context.load_cert_chain(first.cert, first.key)
            loaded = first
            self.inherited = False
        # Switching a connection's context copies its certificate in: skipped while the
        # session context's own certificate is the default's (until a reload replaces it).
        self.default: ssl.SSLContext | None = table.default if loaded == first else None
        self.context.sni_callback = self._pick

    def replace(self, table: SniTable) -> None:
        """A reload's certificates: from now on every connection switches to its context."""
        self.table = table
        self.default = None

    def _pick(self, conn: ssl.SSLObject, server_name: str | None,
              ctx: ssl.SSLContext) -> None:
        chosen = self.table.context_for(server_name)
        if chosen is not self.default:
            conn.context = chosen
        # The server side's SSLObject does not keep the name: kept for tls_summary.
        setattr(conn, SNI_ATTRIBUTE, server_name or "")


def keep_sessions(listeners: list[ListenerConfig], beside: Path) -> list[str]:
    """Make the session contexts of these TLS listeners now, to be inherited by every worker
    forked after (a listener whose certificates do not load is left to its workers, which
    report why). The names of the listeners kept."""
    kept = []
    for lc in listeners:
        if lc.tls is None:
            continue
        try:
            table = load_table(lc.tls, beside)
            tls = ListenerTls(lc.name, lc.tls, table)
        except (CertificateError, ssl.SSLError, OSError):
            continue
        tls.context.sni_callback = None     # each worker sets its own, on its own table
        _KEPT[lc.name] = (_settings(lc.tls), table.certificates[0], tls.context)
        kept.append(lc.name)
    return kept


def client_cert_field(transport: asyncio.BaseTransport) -> bytes:
    """The client's verified certificate as RFC 9440's Client-Cert value (its DER in base64
    between colons, a structured-field byte sequence), or b"" when it sent none. (Python 3.11
    does not give the chain a client sent, so Client-Cert-Chain is not sent.)"""
    obj = transport.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True) if obj is not None else None
    return b":%s:" % base64.b64encode(der) if der else b""


def tls_summary(transport: asyncio.BaseTransport) -> tuple[bytes, bytes, bytes]:
    """A TLS connection's version, cipher and the name its client asked for (b"": none), for
    the access log: read once, when the connection is made."""
    obj = transport.get_extra_info("ssl_object")
    if obj is None:
        return (b"", b"", b"")
    cipher = obj.cipher()
    return ((obj.version() or "").encode(), (cipher[0] if cipher else "").encode(),
            str(getattr(obj, SNI_ATTRIBUTE, "")).encode("ascii", "replace"))
