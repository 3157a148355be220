"""The PROXY protocol's header (v1 and v2, HAProxy's spec), read (`parse`: what a
proxy_protocol listener is sent) and written (`proxy_header_for`: what a send_proxy pool sends
its members). The listener side's protocol is proxy_protocol.py."""

from __future__ import annotations

import ipaddress
from typing import Final

V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX: Final = 107             # the spec's longest v1 line, CRLF included
# Headers that name no client (a check's, or a client with no address): the peer's own stands.
V2_LOCAL: Final = V2_SIGNATURE + b"\x20\x00\x00\x00"
V1_UNKNOWN: Final = b"PROXY UNKNOWN\r\n"


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


def proxy_header_for(version: int, src: bytes, sport: int, dst: str, dport: int) -> bytes:
    """A PROXY protocol header (v1 or v2, HAProxy's spec) for a TCP connection from
    `src`:`sport` to `dst`:`dport` (addresses of different families: both as IPv6)."""
    try:
        client = ipaddress.ip_address(src.decode("ascii"))
        local = ipaddress.ip_address(dst)
    except ValueError:          # no address to name: say so, as the spec allows
        return V1_UNKNOWN if version == 1 else V2_LOCAL
    if client.version != local.version:
        client, local = (ipaddress.IPv6Address(f"::ffff:{a}") if a.version == 4 else a
                         for a in (client, local))
    if version == 1:
        return b"PROXY TCP%d %s %s %d %d\r\n" % (client.version, str(client).encode(),
                                                 str(local).encode(), sport, dport)
    body = client.packed + local.packed + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    return (V2_SIGNATURE + b"\x21" + (b"\x11" if client.version == 4 else b"\x21")
            + len(body).to_bytes(2, "big") + body)
