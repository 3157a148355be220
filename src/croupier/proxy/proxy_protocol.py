"""The PROXY protocol (v1 and v2, HAProxy's spec), for a listener behind an L4 balancer: the
header that opens the connection says which client the balancer accepted.

Rules kept here:
- Only a peer in the listener's trusted_proxies may send one; any other connection is closed
  unread, as is one whose header is malformed or does not come within header_timeout.
- The header is read here, then the TCP transport is handed to the listener's own protocol
  (`set_protocol`: no layer left in the way of the bytes), which is told the client's
  address: the one it logs, forwards and balances on.
- LOCAL (v2) and UNKNOWN (v1) headers, as a balancer's health checks send, keep the peer's
  own address.

The header's bytes, read and written, are proxy_header.py's.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

from croupier.proxy.client import ClientConnection
from croupier.proxy.proxy_header import BadHeader, parse
from croupier.proxy.tls_layer import TlsLayer

if TYPE_CHECKING:
    from croupier.proxy.listener import Listener

class ProxyHeaderReader:
    """The protocol of a proxy_protocol listener's connection until its header is read."""

    __slots__ = ("buffer", "inner", "listener", "raw", "timer")

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.inner: ClientConnection | TlsLayer = (
            TlsLayer(listener) if listener.tls is not None else ClientConnection(listener))
        self.buffer = b""
        self.raw: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = self.raw = cast(asyncio.Transport, transport)
        peer = raw.get_extra_info("peername")
        if not peer or not self.listener.trusts(str(peer[0]).encode()):
            raw.abort()                         # not a balancer it may believe
            return
        self.timer = self.listener.context.loop.call_later(self.listener.header_timeout,
                                                           self._too_slow)

    def _too_slow(self) -> None:
        self.timer = None
        if self.raw is not None:
            self.raw.abort()

    def data_received(self, data: bytes) -> None:
        raw = self.raw
        if raw is None:
            return
        self.buffer += data
        try:
            used, client = parse(self.buffer)
        except BadHeader:
            raw.abort()
            return
        if not used:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        rest = self.buffer[used:]
        self.buffer = b""
        inner = self.inner
        raw.set_protocol(cast(asyncio.BaseProtocol, inner))
        self.raw = None
        if isinstance(inner, TlsLayer):
            inner.client = client
            inner.connection_made(raw)
        else:
            inner.connection_made(raw)
            if client is not None:
                inner.use_client_address(client[0], client[1])
        if rest:
            inner.data_received(rest)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.raw = None

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass


def proxy_protocol(listener: Listener) -> Any:
    """The protocol factory of a proxy_protocol listener's server."""
    return lambda: cast(asyncio.Protocol, ProxyHeaderReader(listener))
