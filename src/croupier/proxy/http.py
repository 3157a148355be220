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

from http import HTTPStatus
from typing import Final

from mypy_extensions import i64

# Tokens of a Connection header that do not name a field to drop.
CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive", b"upgrade"})
# Connection values, as commonly spelt, that name no field: no need to split them.
PLAIN_CONNECTION: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"Close", b"Keep-Alive",
                              b"Upgrade", b"Keep-alive"})

# Methods that may be replayed on another connection (RFC 9110 9.2.2).
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

_REASONS: Final = {s.value: s.phrase.encode() for s in HTTPStatus}

# Heads are read from the bytes as they came, which llhttp has validated (strict: no obs-fold,
# no bare CR or LF, no space before a colon, names are tokens): plain "Name: value" CRLF
# lines. Compiled, these walk them with native integers, a few instructions a byte, and
# make no bytes object until one is kept; bytes.find() and friends parse their arguments
# through a format string (~500 instructions a call).

def is_name(raw: bytes, at: i64, name: bytes) -> bool:
    """Whether the field line at `raw[at:]` has this lower-case name. `| 0x20` lower-cases
    letters and maps no other token byte onto a letter or "-"."""
    n: i64 = len(name)
    if at + n >= len(raw) or raw[at + n] != 0x3A:     # ":" right after it: no space allowed
        return False
    j: i64 = 0
    while j < n:
        if raw[at + j] | 0x20 != name[j]:
            return False
        j += 1
    return True


def equals_at(raw: bytes, at: i64, literal: bytes) -> bool:
    """Whether `raw[at:]` starts with `literal` (no slice made to compare)."""
    n: i64 = len(literal)
    if at + n > len(raw):
        return False
    j: i64 = 0
    while j < n:
        if raw[at + j] != literal[j]:
            return False
        j += 1
    return True


def _trimmed(raw: bytes, at: i64, end: i64) -> tuple[i64, i64]:
    """`at, end` moved past the optional whitespace (SP, HTAB) around a field value."""
    while at < end and (raw[at] == 32 or raw[at] == 9):
        at += 1
    while end > at and (raw[end - 1] == 32 or raw[end - 1] == 9):
        end -= 1
    return at, end


def field_value(raw: bytes, at: i64, end: i64) -> bytes:
    """`raw[at:end]` less the optional whitespace (SP, HTAB) around a field value."""
    at, end = _trimmed(raw, at, end)
    return raw[at:end]


def length_value(raw: bytes, at: i64, end: i64) -> int:
    """The Content-Length value at `raw[at:end]` (llhttp let only digits through, between
    optional whitespace), read without a bytes object; int() for what i64 cannot hold."""
    at, end = _trimmed(raw, at, end)
    if end - at > 18:
        return int(raw[at:end])
    n: i64 = 0
    while at < end:
        n = n * 10 + raw[at] - 48
        at += 1
    return n


def kept_run(kept: bytes, runs: list[bytes] | None, raw: bytes, start: i64,
             end: i64) -> tuple[bytes, list[bytes] | None]:
    """Adds the field lines `raw[start:end]` to those a head walk keeps: the first run alone
    in `kept`, a list only from the second (most heads keep one run). The tuple is a C
    struct once compiled: no object per call."""
    if not kept:
        return raw[start:end], None
    if runs is None:
        return kept, [kept, raw[start:end]]
    runs.append(raw[start:end])
    return kept, runs


def joined_runs(kept: bytes, runs: list[bytes] | None) -> bytes:
    return kept if runs is None else b"".join(runs)


def reason(status: int) -> bytes:
    return _REASONS.get(status, b"Unknown")


def status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason(status))


# How a response body leaves for the client (`response_framing`).
OUT_NONE: Final = 0         # no body (HEAD, 1xx, 204, 304)
OUT_RAW: Final = 1          # Content-Length from the member, bytes copied as they come
OUT_CHUNKED: Final = 2      # chunked or close-delimited from the member, chunked to HTTP/1.1
OUT_UNTIL_CLOSE: Final = 3  # close-delimited to an HTTP/1.0 client
# What a response head had, for its framing (bits).
F_LENGTH: Final = 1
F_CHUNKED: Final = 2


def response_framing(head_request: bool, status: int, fields: int, http11: bool) -> int:
    """How the client gets a response's body (RFC 9112 6.3), the one place it is decided:
    none after HEAD, 1xx, 204 and 304; as it came with a Content-Length (and no
    Transfer-Encoding, which would override it); otherwise (chunked, or ending when the
    member closes) chunked to an HTTP/1.1 client and until the close to an HTTP/1.0 one,
    which cannot read chunks."""
    if head_request or status < 200 or status == 204 or status == 304:
        return OUT_NONE
    if fields & (F_LENGTH | F_CHUNKED) == F_LENGTH:
        return OUT_RAW
    return OUT_CHUNKED if http11 else OUT_UNTIL_CLOSE


# llhttp's reasons, in words a client's developer understands (its own wording names its
# internals: "Pause on PRI/Upgrade" is an HTTP/2 preface). First match, lower case.
_PARSE_ERRORS: Final = (
    ("pri/upgrade", "an HTTP/2 connection preface: this port speaks HTTP/1.1 (no h2 "
                    "without TLS and ALPN)"),
    ("can't be present with", "Content-Length together with Transfer-Encoding (a request "
                              "smuggling shape)"),
    ("duplicate content-length", "more than one Content-Length"),
    ("content-length", "a Content-Length that is not a plain number"),
    ("transfer-encoding", "a Transfer-Encoding whose final coding is not chunked"),
    ("chunk", "a malformed chunked body (chunk size or its line end)"),
    ("whitespace after header value", "a folded header line (obs-fold): send each field on "
                                      "one line"),
    ("header value", "a header value with a forbidden character (a control character, a "
                     "bare CR or LF)"),
    ("header token", "a malformed header name (a space before the colon, or a character "
                     "names may not have)"),
    ("method", "a request line with an unknown or malformed method"),
    ("url", "a malformed request target (a space or a control character in it)"),
    ("crlf", "lines that do not end with CRLF"),
    ("version", "a request line without a valid HTTP/1.x version"),
    ("lf", "lines that do not end with CRLF"),
)


def parse_error_text(reason: str) -> str:
    """What a 400 says of what llhttp refused."""
    low = reason.lower()
    for key, text in _PARSE_ERRORS:
        if key in low:
            return f"bad request: {text}"
    return "bad request: not a well-formed HTTP/1.1 request"


def request_id_ok(value: bytes) -> bool:
    """An X-Request-ID worth passing on: 1 to 200 bytes of letters, digits and -_.:+/=
    (what UUIDs, ULIDs and HAProxy's or nginx's IDs are made of)."""
    n: i64 = len(value)
    if n == 0 or n > 200:
        return False
    i: i64 = 0
    while i < n:
        c = value[i]
        if not (0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A
                or c == 0x2D or c == 0x5F or c == 0x2E or c == 0x3A or c == 0x2B
                or c == 0x2F or c == 0x3D):
            return False
        i += 1
    return True


def simple_response(status: int, body: str, *, close: bool,
                    extra: tuple[tuple[bytes, bytes], ...] = (),
                    content_type: bytes = b"text/plain; charset=utf-8",
                    lines: bytes = b"") -> bytes:
    """A complete response croupier answers itself (errors, redirects, lookups); `lines`:
    whole field lines the listener adds to every response (Strict-Transport-Security)."""
    payload = body.encode()
    parts = [status_line(status),
             b"Content-Type: ", content_type, b"\r\n",
             b"Content-Length: %d\r\n" % len(payload), lines]
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts += (b"\r\n", payload)
    return b"".join(parts)


def tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a comma-separated field value (Connection, Upgrade)."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def connection_named(value: bytes) -> list[bytes]:
    """The field names a Connection value lists (hop-by-hop for this message): its tokens
    less the options close, keep-alive and upgrade."""
    if value in PLAIN_CONNECTION:
        return []
    return [t for t in tokens(value) if t not in CONNECTION_OPTIONS]


def field_name(line: bytes) -> bytes:
    """The lower-case name of a b"Name: value\\r\\n" line of a head being built."""
    return line[:line.find(b":")].lower()


def without_fields(fields: bytes, names: list[bytes]) -> bytes:
    """Field lines (b"Name: value\\r\\n" each) less those with one of these lower-case
    names. Only for heads whose Connection named fields: not the common path."""
    return b"".join([line + b"\r\n" for line in fields.split(b"\r\n")
                     if line and field_name(line) not in names])


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
    """A Host value a proxy may act on: uri-host [":" port], no spaces, no userinfo or path,
    and a port, if any, of digits."""
    if not host or len(host) > 255:
        return False
    # translate() deleting the forbidden bytes is one C call; a changed length means one was there
    if len(host.translate(None, _NOT_IN_HOST)) != len(host):
        return False
    colon = host.rfind(b":")
    if colon < 0 or colon < host.rfind(b"]"):       # no port (an IPv6 literal has colons)
        return True
    return colon + 1 == len(host) or host[colon + 1:].isdigit()


def origin_form(url: bytes) -> tuple[bytes, bytes] | None:
    """An absolute-form request target (RFC 9112 3.2.2) split into its authority and the
    origin-form target a member gets: b"http://a.example:8080?q" -> (b"a.example:8080",
    b"/?q"). None for what a reverse proxy must refuse: another scheme than http(s), no
    authority, userinfo (RFC 9110 4.2.4), or an authority that is no valid Host."""
    scheme_end = url.find(b"://")
    if scheme_end < 0 or url[:scheme_end].lower() not in (b"http", b"https"):
        return None
    start = scheme_end + 3
    end = len(url)
    for stop in (b"/", b"?", b"#"):
        at = url.find(stop, start)
        if 0 <= at < end:
            end = at
    authority = url[start:end]
    if not valid_host(authority):
        return None
    target = url[end:].partition(b"#")[0]       # a fragment is never sent (RFC 9110 4.2.5)
    if not target.startswith(b"/"):
        target = b"/" + target
    return authority, target


def without_h2c(value: bytes) -> bytes:
    """An Upgrade value less h2c: croupier speaks HTTP/1.1 to clients, and an h2c upgrade
    relayed to a member would open an HTTP/2 connection past every route (RFC 9113 3.1
    deprecates the upgrade anyway). Empty when h2c was all it asked for."""
    kept = [t.strip() for t in value.split(b",")
            if t.strip() and t.strip().lower().partition(b"/")[0] != b"h2c"]
    return b", ".join(kept)


def switch_allowed(asked: bytes, answered: bytes) -> bool:
    """Whether a member's 101 switches to protocols the client asked for (RFC 9110 7.8): every
    protocol its Upgrade names must be one the request's Upgrade named."""
    offered = tokens(asked)
    chosen = tokens(answered)
    return bool(chosen) and all(p in offered for p in chosen)
