"""A listener: an address croupier accepts clients on, with its routes to pools."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING

from croupier.proxy.http import host_without_port

if TYPE_CHECKING:
    from croupier.config.schema import ListenerConfig
    from croupier.model.state import Pool
    from croupier.proxy.access_log import AccessLog
    from croupier.proxy.context import ProxyContext
    from croupier.proxy.exchange import Exchange
    from croupier.proxy.tls import ListenerTls


class Route:
    """First match wins. A path prefix matches on a segment boundary: "/meetings" takes
    "/meetings", "/meetings/x" and "/meetings?q", not "/meetingsroom"; a prefix that ends
    with "/" matches as written. A host matches exactly, or "*.example.com" any subdomain."""

    __slots__ = ("host", "host_suffix", "pool", "prefix", "prefix_dir")

    def __init__(self, pool: Pool, path_prefix: str | None, host: str | None) -> None:
        self.pool = pool
        self.prefix = path_prefix.encode() if path_prefix else None
        self.prefix_dir = bool(path_prefix) and path_prefix.endswith("/")  # type: ignore[union-attr]
        self.host: bytes | None = None
        self.host_suffix: bytes | None = None
        if host is not None:
            if host.startswith("*."):
                self.host_suffix = host[1:].encode()
            else:
                self.host = host.encode()

    def matches(self, host: bytes, path: bytes) -> bool:
        if self.host is not None and host != self.host:
            return False
        if self.host_suffix is not None and not host.endswith(self.host_suffix):
            return False
        prefix = self.prefix
        if prefix is not None:
            if not path.startswith(prefix):
                return False
            if not self.prefix_dir and len(path) > len(prefix) and path[len(prefix)] not in (
                    0x2F, 0x3F):     # "/" or "?"
                return False
        return True


class Listener:
    __slots__ = ("access_log", "body_timeout", "config", "context", "default_pool",
                 "header_timeout", "hsts", "keepalive_timeout", "known_host", "max_body_size",
                 "max_header_size", "max_pipelined", "mode", "name", "name_bytes",
                 "open_connections", "redirect_port", "routes", "scheme", "send_timeout",
                 "server", "time", "tls", "trusted", "tunnel_timeout")

    def __init__(self, context: ProxyContext, config: ListenerConfig,
                 pools: dict[str, Pool], access_log: AccessLog | None = None,
                 tls: ListenerTls | None = None, redirect_port: int = 0) -> None:
        self.context = context
        self.tls = tls                      # its contexts; None: plain HTTP
        self.scheme = b"https" if config.tls is not None else b"http"   # X-Forwarded-Proto
        self.time = context.time           # bound once: the hot path reads the clock often
        self.access_log = access_log
        self.name = config.name
        self.name_bytes = config.name.encode()
        self.open_connections = 0
        self.server: asyncio.Server | None = None
        # The last Host value a connection found valid: a new connection starts knowing it
        # (clients of one listener send one or a few), so a connection a request does not
        # check it anew each time.
        self.known_host = b""
        self.update(config, pools, redirect_port)

    def update(self, config: ListenerConfig, pools: dict[str, Pool],
               redirect_port: int = 0) -> None:
        """Take a new config in place (a reload): open connections see it on their next
        request, and none is dropped. `redirect_port`: the port of the TLS listener every
        request is redirected to (redirect_to_https), or 0."""
        self.config = config
        self.redirect_port = redirect_port
        # Strict-Transport-Security on every response of a TLS listener that sets it (the
        # member's own replaced): the field line, or b"".
        tls = config.tls
        self.hsts = (b"Strict-Transport-Security: %s\r\n" % tls.hsts.encode()
                     if tls is not None and tls.hsts else b"")
        self.mode = config.mode
        # The limits the hot path reads, as plain attributes: reading them off the pydantic
        # model costs a generic attribute lookup each time.
        self.header_timeout = config.header_timeout
        self.body_timeout = config.body_timeout
        self.keepalive_timeout = config.keepalive_timeout
        self.send_timeout = config.send_timeout
        self.tunnel_timeout = config.tunnel_timeout
        self.max_header_size = config.max_header_size
        self.max_body_size = config.max_body_size
        self.max_pipelined = config.max_pipelined
        self.trusted = [ipaddress.ip_network(n, strict=False) for n in config.trusted_proxies]
        self.default_pool = pools[config.pool]
        self.routes = [Route(pools[r.pool], r.path_prefix, r.host) for r in config.routes]

    def trusts(self, address: bytes) -> bool:
        """Whether `address` is one of trusted_proxies' (once a connection, or once an
        X-Forwarded-For entry; never when there are none)."""
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address.strip().decode("latin-1"))
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def client_address(self, xff: bytes, peer: bytes) -> bytes:
        """The client behind trusted proxies: the rightmost X-Forwarded-For entry that is
        not one of them (each proxy appends the address it saw)."""
        for entry in reversed(xff.split(b",")):
            entry = entry.strip()
            if not self.trusts(entry):
                return entry or peer
        return peer

    def route(self, req: Exchange) -> Pool:
        """The pool for `req`: the first route that matches, else the listener's pool. (The
        client calls it only when there are routes: most listeners have none.)"""
        routes = self.routes
        # An absolute-form target was made origin-form, its authority the host, when read.
        host = host_without_port(req.host) if req.host is not None else b""
        url = req.url
        for route in routes:
            if route.matches(host, url):
                return route.pool
        return self.default_pool
