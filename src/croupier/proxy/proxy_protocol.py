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
"""

from __future__ import annotations

import asyncio
import ipaddress
from typing import TYPE_CHECKING, Any, Final, cast

from croupier.proxy.client import ClientConnection
from croupier.proxy.tls_layer import TlsLayer

if TYPE_CHECKING:
    from croupier.proxy.listener import Listener

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX: Final = 107             # the spec's longest v1 line, CRLF included


class BadHeader(Exception):
    pass


def parse(data: bytes) -> tuple[int, tuple[bytes, int] | None]:
    """(bytes the header takes, the client's address and port or None to keep the peer's);
    (0, None) while more bytes are needed. BadHeader when it is no PROXY header."""
    if data.startswith(V2_SIGNATURE[:min(len(data), 12)]) and data[:1] == b"\r":
        if len(data) < 16:
            return 0, None
        ver_cmd, family = data[12], data[13]
        length = int.from_bytes(data[14:16], "big")
        if ver_cmd >> 4 != 2 or ver_cmd & 0x0F > 1:
            raise BadHeader("PROXY v2: unknown version or command")
        if len(data) < 16 + length:
            return 0, None
        end = 16 + length
        if ver_cmd & 0x0F == 0:                 # LOCAL
            return end, None
        body = data[16:end]
        if family == 0x11 and length >= 12:     # TCP over IPv4
            return end, (str(ipaddress.IPv4Address(body[0:4])).encode(),
                         int.from_bytes(body[8:10], "big"))
        if family == 0x21 and length >= 36:     # TCP over IPv6
            return end, (str(ipaddress.IPv6Address(body[0:16])).encode(),
                         int.from_bytes(body[32:34], "big"))
        return end, None                        # UNSPEC, UDP, unix: the peer's own
    if data.startswith(b"PROXY "[:min(len(data), 6)]):
        end = data.find(b"\r\n")
        if end < 0:
            if len(data) >= V1_MAX:
                raise BadHeader("PROXY v1: no end of line")
            return 0, None
        parts = data[:end].split(b" ")
        if len(parts) >= 2 and parts[1] == b"UNKNOWN":
            return end + 2, None
        if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
            raise BadHeader("PROXY v1: malformed")
        try:
            address = ipaddress.ip_address(parts[2].decode("ascii"))
            port = int(parts[4])
        except ValueError:
            raise BadHeader("PROXY v1: malformed address") from None
        if not 0 <= port <= 65535:
            raise BadHeader("PROXY v1: port out of range")
        return end + 2, (str(address).encode(), port)
    raise BadHeader("no PROXY header")


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
