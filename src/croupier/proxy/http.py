"""HTTP/1.1 rules a proxy keeps (RFC 9110, RFC 9112), shared by both sides of the data plane.

- Hop-by-hop fields (RFC 9110 7.6.1) are never forwarded: Connection and every field it names,
  Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding (re-framed), Upgrade (except on
  an upgrade that is being tunnelled).
- Framing is ours on each side: a body arrives with Content-Length, chunked, or (responses
  only) until close; it leaves with Content-Length when we have one, else chunked to an
  HTTP/1.1 client, else until close.
- Every error croupier itself answers is a short text body that says who failed and why.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

# Hop-by-hop fields (RFC 9110 7.6.1): never copied from one connection to the next.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade",
})

# Tokens of a Connection header that do not name a field to drop.
CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection values, as commonly spelt, that name no field: no need to split them.
PLAIN_CONNECTION: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"Close", b"Keep-Alive",
                              b"Upgrade", b"Keep-alive"})

# Methods that may be replayed on another connection (RFC 9110 9.2.2).
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}

# Common request field names (lower-case), for `FieldNames`: a field name found there as
# sent needs no lower-casing to be classified, which is most of the per-field cost of a
# parser callback. (Response heads are not taken field by field: see upstream.py.)
COMMON_REQUEST_FIELDS: Final = (
    b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"accept-charset",
    b"authorization", b"cache-control", b"content-type", b"cookie", b"origin", b"pragma",
    b"referer", b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"if-range", b"range", b"dnt", b"upgrade-insecure-requests", b"x-requested-with",
    b"x-real-ip", b"x-request-id", b"traceparent", b"tracestate", b"sec-fetch-site",
    b"sec-fetch-mode", b"sec-fetch-dest", b"sec-fetch-user", b"sec-ch-ua", b"sec-ch-ua-mobile",
    b"sec-ch-ua-platform", b"sec-websocket-key", b"sec-websocket-version",
    b"sec-websocket-extensions", b"sec-websocket-protocol", b"forwarded", b"priority",
)

# Common names whose usual spelling is not Title-Case.
_IRREGULAR: Final = {b"te": b"TE", b"dnt": b"DNT"}


class FieldNames:
    """Which of a side's fields croupier acts on, by name as the parser hands it over.

    `kind(name)` is the lower-case name of a `special` field, or b"" for any other (copied
    as it came). Names as commonly spelt (lower, Title-Case, upper) are found in a table
    built here, in one dict lookup; any other spelling is lower-cased, as it must be."""

    __slots__ = ("special", "table")

    def __init__(self, special: frozenset[bytes], common: Iterable[bytes]) -> None:
        self.special = special
        self.table: dict[bytes, bytes] = {}
        for kind, names in ((b"", common), (None, special)):     # special wins
            for name in names:
                title = b"-".join(part[:1].upper() + part[1:] for part in name.split(b"-"))
                for spelt in (name, title, name.upper(), _IRREGULAR.get(name, title)):
                    self.table[spelt] = name if kind is None else kind

    def kind(self, name: bytes) -> bytes:
        lname = self.table.get(name)
        if lname is None:
            lname = name.lower()
            if lname not in self.special:
                return b""
        return lname


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason(status))


def simple_response(status: int, body: str, *, close: bool,
                    extra: tuple[tuple[bytes, bytes], ...] = (),
                    content_type: bytes = b"text/plain; charset=utf-8") -> bytes:
    """A complete response croupier answers itself (errors, redirects, lookups)."""
    payload = body.encode()
    parts = [status_line(status),
             b"Content-Type: ", content_type, b"\r\n",
             b"Content-Length: %d\r\n" % len(payload)]
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", payload)
    return b"".join(parts)


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a Connection header value."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def field_name(line: bytes) -> bytes:
    """The lower-case name of a b"Name: value\\r\\n" line of a head being built."""
    return line[:line.find(b":")].lower()


def host_without_port(host: bytes) -> bytes:
    """b"Example.com:8080" -> b"example.com"; IPv6 literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        return host[: end + 1] if end > 0 else host
    colon = host.rfind(b":")
    return host[:colon] if colon >= 0 else host


_NOT_IN_HOST: Final = b" \t/\\@?#"


def valid_host(host: bytes) -> bool:
    """A Host value a proxy may act on: uri-host [":" port], no spaces, no userinfo or path."""
    if not host or len(host) > 255:
        return False
    # translate() deleting the forbidden bytes is one C call; a changed length means one was there
    return len(host.translate(None, _NOT_IN_HOST)) == len(host)
