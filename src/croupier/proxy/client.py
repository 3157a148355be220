"""The client side of the data plane: one `ClientConnection` per accepted connection.

Rules kept here (DESIGN.md, "Rules of the hot path"):
- No Task, coroutine or await per request: everything is a Protocol or parser callback.
- `feed_data` cannot be paused, so pipelined requests that arrive in one read are parsed at
  once: they wait in `queue` (bounded by `max_pipelined`) while reading is paused, and are
  answered strictly in order. Past the bound the parser is stopped and the connection closes
  after the queued requests are answered (RFC 9112 9.3.2 lets a client retry the rest).
- Reading is paused for several independent reasons (a bit each): queued requests, a member
  that cannot take more request body, a body held while the member connection opens.
- Request heads are read from the bytes as they came (`_take_head`), after llhttp validated
  them, not field by field; where each begins is kept from the stream (head end plus
  Content-Length). After a chunked body that ends inside a read that place is not known:
  a request pipelined there closes the connection once the ones before it are answered.
- httptools has no header-size limit: the head's bytes are counted here; 431 past the limit.
- Smuggling shapes (CL with TE, two CLs, bad chunk sizes, obs-fold, bare LF) are refused by
  llhttp in strict mode (leniencies are never switched on): 400 and the connection closes.
- Upgrades: h2c is stripped (croupier speaks HTTP/1.1 here) and the request answered as any
  other. Bytes behind another upgrade request are held, reading paused, until the member
  answers it: its 101 makes them the tunnel's, anything else makes them the next requests.
  Nothing the client sends reaches a member unparsed before that member switched protocols.
- An absolute-form target (`GET http://a.example/x`) is routed on its authority, which
  becomes the Host the member gets, with the target in origin-form (RFC 9112 3.2.2).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools
from mypy_extensions import i64

from croupier.proxy.downstream import Downstream
from croupier.proxy.exchange import (
    ANSWERED,
    SENT,
    TUNNEL,
    WAITING,
    Exchange,
    illegal_transition,
)
from croupier.proxy.http import (
    IDEMPOTENT,
    connection_named,
    equals_at,
    field_value,
    host_without_port,
    is_name,
    joined_runs,
    kept_run,
    length_value,
    origin_form,
    parse_error_text,
    request_id_ok,
    simple_response,
    valid_host,
    without_fields,
    without_h2c,
)
from croupier.proxy.proxy_header import proxy_header_for
from croupier.proxy.tls import client_cert_field, tls_summary
from croupier.proxy.upstream import IDLE as MEMBER_IDLE

if TYPE_CHECKING:
    from croupier.model.state import Member, Pool
    from croupier.proxy.listener import Listener
    from croupier.proxy.upstream import UpstreamConnection, UpstreamPool

log = logging.getLogger("croupier.proxy")

# send_proxy: idle member connections a client connection keeps for itself, at most.
PRIVATE_KEPT: Final = 5

# Body bytes held while the member connection opens, before reading pauses.
_CONNECT_BUFFER: Final = 65536

# Parsers kept for the next requests (see RequestParser), at most: past it one is freed.
PARSERS_KEPT: Final = 1024

# Seconds a closing connection keeps reading (and dropping) what the client still sends.
LINGER = 2.0


# The states of a client connection, and for each the states it may go to (a bit each), as
# the exchange's (proxy/exchange.py: the same strictness). Whether reading is paused, and
# why, and whether writing is, are flow control (`paused`, `write_paused`), not states.
OPEN: Final = 0         # between request heads: reading bodies, answering, waiting for more
HEAD: Final = 1         # a request head is being read (header_timeout)
UPGRADING: Final = 2    # an upgrade request is with its member; what came behind it is held
TUNNEL_OPEN: Final = 3  # the member switched protocols: bytes are copied both ways
CLOSING: Final = 4      # no more requests are read: those taken are answered, then it closes
LINGERING: Final = 5    # the answer is out and our side shut: what still comes is dropped
CLOSED: Final = 6       # its transport is gone
STATES: Final = ("OPEN", "HEAD", "UPGRADING", "TUNNEL", "CLOSING", "LINGERING", "CLOSED")
NEXT: Final = [         # a list: compiled, indexing a tuple constant boxes it anew
    1 << HEAD | 1 << UPGRADING | 1 << CLOSING | 1 << CLOSED,           # OPEN
    1 << OPEN | 1 << CLOSING | 1 << CLOSED,                             # HEAD
    1 << OPEN | 1 << TUNNEL_OPEN | 1 << CLOSING | 1 << CLOSED,          # UPGRADING
    1 << CLOSING | 1 << CLOSED,                                         # TUNNEL
    1 << LINGERING | 1 << CLOSED,                                       # CLOSING
    1 << CLOSED,                                                        # LINGERING
    0,                                                                  # CLOSED
]


class _Reject(Exception):
    """Raised from a parser callback to stop parsing; the reason is in `ClientConnection.error`."""


def client_protocol(listener: Listener) -> Callable[[], asyncio.Protocol]:
    """The protocol factory for a listener's server. The connection classes have no Python
    base class (mypyc compiles them to native classes, which cannot have one); uvloop only
    calls the protocol's methods."""
    return lambda: cast(asyncio.Protocol, ClientConnection(listener))


class RequestParser:
    """httptools' request parser, lent to a client connection from a request's first byte to
    the end of the read that completes it, and between requests kept in `_STOCK` for the
    next one, of any connection. An idle kept-alive connection holds none: a parser is 784
    bytes (llhttp's state and settings, httptools' object, a bound method per callback), a
    third of an idle connection; and memory freed after some idle time would stay with the
    process, which does not give back what the allocator once took. A connection of one
    request makes none either (llhttp's state is reset by the request's end).

    Its callbacks go to the connection it is lent to. llhttp's keep-alive leniency is on: a
    request marked as the last (`Connection: close`, HTTP/1.0) would otherwise leave the
    parser refusing every later byte, unfit for another connection; what a client sends
    behind such a request is refused by the connection instead (on_message_begin)."""

    __slots__ = ("conn", "llhttp")

    def __init__(self) -> None:
        self.conn: ClientConnection | None = None
        self.llhttp: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.llhttp.set_dangerous_leniencies(lenient_keep_alive=True)

    def on_message_begin(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_message_begin()

    def on_headers_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_headers_complete()

    def on_body(self, body: bytes) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_body(body)

    def on_message_complete(self) -> None:
        conn = self.conn
        assert conn is not None
        conn.on_message_complete()

    def free(self) -> None:
        """Not to be used again (mid-request, failed, or after an upgrade): the cycle through
        its bound callbacks broken, so that it is freed at once, not by the cyclic GC."""
        self.conn = None
        self.llhttp = None


class ParserStock:
    """The parsers between requests, at most PARSERS_KEPT. One is kept aside from the list:
    a list emptied and filled again by every request would reallocate its array both times."""

    __slots__ = ("more", "spare")

    def __init__(self) -> None:
        self.spare: RequestParser | None = None
        self.more: list[RequestParser] = []

    def take(self, conn: ClientConnection) -> RequestParser:
        parser = self.spare
        if parser is not None:
            self.spare = None
        elif self.more:
            parser = self.more.pop()
        else:
            parser = RequestParser()
        parser.conn = conn
        return parser

    def give(self, parser: RequestParser) -> None:
        parser.conn = None
        if self.spare is None:
            self.spare = parser
        elif len(self.more) < PARSERS_KEPT:
            self.more.append(parser)
        else:
            parser.free()


_STOCK: Final = ParserStock()


class ClientConnection(Downstream):
    # Why reading is paused (a bit each). Final: compiled, a plain class attribute would be
    # a field of every connection.
    PAUSE_QUEUE: Final = 1
    PAUSE_UPSTREAM: Final = 2
    PAUSE_CONNECT: Final = 4
    PAUSE_UPGRADE: Final = 8

    __slots__ = (
        "_begin",
        "_data",
        "_fed",
        "_feeding",
        "_next_start",
        "_out",
        "_out_sink",
        "_raw",
        "client_cert",
        "client_eof",
        "current",
        "deadline",
        "error",
        "final_seen",
        "held",
        "last_host",
        "listener",
        "log_client",
        "parser",
        "parsing",
        "paused",
        "peer",
        "peer_port",
        "private",
        "proxy_header",
        "queue",
        "refused",
        "state",
        "tls_info",
        "transport",
        "trusted",
        "tunnel",
        "tunnel_req",
        "upgrading",
        "write_paused",
    )

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        # Lent while a request is being parsed (see RequestParser)
        self.parser: RequestParser | None = None
        self.parsing: Exchange | None = None     # the request whose bytes are being parsed
        self.current: Exchange | None = None     # the request being answered
        # Parsed, waiting for `current` to finish; made only when pipelining needs it (an
        # empty deque is 600 bytes, a third of an idle connection).
        self.queue: deque[Exchange] | None = None
        self.paused = 0
        self.state = OPEN
        # Where heads are in the stream (offsets from the connection's first byte), to read
        # each from the bytes as they came: see _take_head.
        self._fed = 0                   # bytes fed to the parser before this read
        self._next_start = 0            # where the next request begins; -1: not known
        self._begin = 0                 # where the request being parsed began
        self._data = b""                # this read, while it is fed
        self._raw = b""                 # a head's bytes from earlier reads, while it is cut
        self.error: tuple[int, str] | None = None
        self.tunnel: UpstreamConnection | None = None
        self.tunnel_req: Exchange | None = None
        # An upgrade request not answered yet, and the bytes the client sent behind it, held
        # (reading paused) until the member's answer says whether they are the tunnel's or
        # the next requests (see _upgrade_requested).
        self.upgrading: Exchange | None = None
        self.held: bytes | None = None
        self.deadline = 0.0
        # A request marked as the client's last was read: nothing after it is (RFC 9112 9.6)
        self.final_seen = False
        self.client_eof = False         # the client half-closed: no lingering needed
        # (the flags side by side: compiled, each would take 8 bytes between two pointers)
        self.write_paused = False
        self.trusted = False            # the peer is one of the listener's trusted_proxies
        self._feeding = False
        self.peer = b""
        self.peer_port = 0
        self.log_client = b""           # see Exchange.log_client
        self.tls_info: tuple[bytes, bytes, bytes] | None = None   # version, cipher, SNI
        self.client_cert = b""          # the verified client certificate, as Client-Cert
        self.refused: Exchange | None = None    # the request the parser stopped on
        self.last_host = listener.known_host    # the last Host value found valid
        self._out: list[bytes] | None = None
        self._out_sink: UpstreamConnection | None = None
        # send_proxy: this client's own idle member connections (one a member, the last
        # PRIVATE_KEPT used), and the PROXY header (by version) that names it to members,
        # made at its first use
        self.private: list[UpstreamConnection] | None = None
        self.proxy_header: tuple[int, bytes] | None = None

    # ---- asyncio protocol interface ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0] if peer else "unknown").encode()
        self.peer_port = peer[1] if peer else 0
        listener = self.listener
        self.trusted = bool(listener.trusted) and listener.trusts(self.peer)
        if listener.tls is not None:    # uvloop calls this once the handshake is done
            self.tls_info = tls_summary(transport)
            if listener.tls.config.client_ca is not None:
                self.client_cert = client_cert_field(transport)
        access_log = listener.access_log
        if access_log is not None:
            self.log_client = access_log.client_piece(self.peer, self.peer_port,
                                                      listener.name_bytes, self.tls_info)
        self.listener.context.connections.add(self)
        self.listener.open_connections += 1
        self.deadline = self.listener.time() + self.listener.keepalive_timeout

    def use_client_address(self, peer: bytes, port: int) -> None:
        """The client a PROXY header named (proxy/proxy_protocol.py): the address this
        connection logs, forwards and balances on from now on."""
        self.peer = peer
        self.peer_port = port
        listener = self.listener
        self.trusted = bool(listener.trusted) and listener.trusts(peer)
        if listener.access_log is not None:
            self.log_client = listener.access_log.client_piece(peer, port, listener.name_bytes,
                                                               self.tls_info)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.send(data)
            self.deadline = self.refresh_tunnel_deadline()
            if self.tunnel_req is not None:
                self.tunnel_req.bytes_in += len(data)
            return
        if self.state >= CLOSING:
            return
        if self.held is not None:       # reading is paused then; a read already under way
            self.held += data
            return
        listener = self.listener
        self._feeding = True
        while True:
            try:
                self._data = data
                parser = self.parser
                if parser is None:
                    parser = self.parser = _STOCK.take(self)
                llhttp = parser.llhttp
                assert llhttp is not None
                llhttp.feed_data(data)
            except httptools.HttpParserUpgrade as e:
                rest = self._upgrade_requested(data, e.args[0])
                if rest is None:
                    return
                data = rest             # an h2c request: what follows is parsed on
                continue
            except httptools.HttpParserCallbackError:
                self._feeding = False
                self._flush_up()
                self._parse_failed()
                return
            except httptools.HttpParserError as e:
                self._feeding = False
                self._flush_up()
                self.error = (400, parse_error_text(str(e)))
                self._parse_failed()
                return
            break
        self._feeding = False
        self._data = b""
        if self._out_sink is not None:
            self._flush_up()
        start = self._fed
        self._fed = start + len(data)
        parsing = self.parsing
        if parsing is None:
            self._next_start = self._fed    # every request in this read is whole
            parser = self.parser
            if parser is not None:          # between requests: back to the stock
                self.parser = None
                _STOCK.give(parser)
        elif self.state == HEAD:
            # A head cut by the end of the read: keep its bytes (from where it began) for
            # _take_head, within the limit.
            raw = self._raw
            raw = self._raw = raw + data if raw else data[self._begin - start:]
            if len(raw) > listener.max_header_size:
                self._head_too_large(long_line=len(raw) >= 8192 and b"\r" not in raw[:8192])
                self._parse_failed()
                return
        if parsing is not None and not parsing.body_done and self.state != HEAD:
            self.deadline = self.listener.time() + listener.body_timeout
        elif self.deadline < 0.0:       # a head began in this read and is not answered yet
            self.deadline = self.listener.time() + listener.header_timeout

    def eof_received(self) -> bool | None:
        # A client that half-closes after a whole request still gets its answer; one that
        # stops mid-request, or with nothing in flight, is closed. So is one whose answer is
        # out while we linger: the lingering was only to wait for this end.
        if (self.tunnel is not None or self.parsing is not None or self.current is None
                or self.state == LINGERING):
            return False
        if self.state < CLOSING:
            self.to(CLOSING)        # nothing more will come; close once answered
        self.client_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        listener = self.listener
        listener.context.connections.discard(self)
        listener.open_connections -= 1
        self.transport = None
        self._free_parser()
        self.to(CLOSED)
        tunnel, self.tunnel = self.tunnel, None
        if tunnel is not None:
            tunnel.detach()
        tunnel_req, self.tunnel_req = self.tunnel_req, None
        if tunnel_req is not None:
            self._release_member(tunnel_req, failed=False)
            tunnel_req.finish(b"CT")
        parsing = self.parsing
        if parsing is not None and parsing is not self.current:
            parsing.finish(b"CR")
        current = self.current
        if current is not None:
            current.finish(b"CD" if current.response_started else
                           b"CH" if current.body_done else b"CR")
        for req in (self.current, *(self.queue or ())):
            if req is not None:
                self._release_member(req, failed=False)
                sink = req.sink
                if sink is not None:
                    req.sink = None
                    sink.detach()
        self.current = None
        self.queue = None
        private, self.private = self.private, None
        for conn in private or ():
            if conn.transport is not None:
                conn.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        req = self.current
        if req is not None and req.sink is not None:
            req.sink.pause_reading()
        elif self.tunnel is not None:
            self.tunnel.pause_reading()
        self.deadline = self.listener.time() + self.listener.send_timeout

    def resume_writing(self) -> None:
        self.write_paused = False
        req = self.current
        if req is not None and req.sink is not None:
            req.sink.resume_reading()
        elif self.tunnel is not None:
            self.tunnel.resume_reading()
            self.deadline = self.refresh_tunnel_deadline()
        else:
            self.deadline = 0.0 if self.current is not None else self._idle_deadline()

    # ---- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.final_seen:
            self.error = (0, "a request after one marked as the last")
            raise _Reject()
        queue = self.queue
        if queue is not None and len(queue) >= self.listener.max_pipelined:
            self.error = (0, "too many pipelined requests")
            raise _Reject()
        begin = self._next_start
        if begin < 0:
            # After a chunked body that ended in this read: llhttp does not say where it
            # ended, so this head cannot be found. Answer the requests before it and close;
            # a pipelining client must retry the rest (RFC 9112 9.3.2).
            self.error = (0, "a pipelined request after a chunked body")
            raise _Reject()
        self._begin = begin
        self.parsing = Exchange(self.listener, self.peer, self.peer_port, self.log_client)
        self.to(HEAD)
        # The head's deadline is set once this read is parsed (see data_received), unless
        # the request is complete by then: no clock reading for most requests.
        self.deadline = -1.0

    def on_headers_complete(self) -> None:
        self.to(OPEN)
        req = self.parsing
        assert req is not None
        lent = self.parser
        assert lent is not None
        parser = lent.llhttp
        assert parser is not None
        method = req.method = parser.get_method()
        raw = self._raw
        if raw:                         # the head began in an earlier read
            self._raw = b""
            src = raw + self._data
            start = 0
            base = self._fed - len(raw)
        else:
            src = self._data
            base = self._fed
            start = self._begin - base
        end = self._take_head(req, src, start, method)
        req.to(WAITING)
        req.bytes_in = end - start
        if self.trusted and req.xff:
            req.peer = self.listener.client_address(req.xff, self.peer)
            access_log = self.listener.access_log
            if access_log is not None:
                req.log_client = access_log.client_piece(req.peer, req.peer_port,
                                                         self.listener.name_bytes, self.tls_info)
        if not req.request_id:
            req.request_id = self.listener.context.new_request_id()
        limit = self.listener.max_header_size
        if end - start > limit:
            self._head_too_large(long_line=len(req.url) >= 8192)
            raise _Reject()
        self._next_start = (-1 if req.chunked
                            else base + end + (req.content_length if req.content_length > 0
                                               else 0))
        # The version as _take_head read it; without a Connection field llhttp keeps alive
        # exactly the HTTP/1.1 requests, so the parser is asked only when one came.
        http11 = req.http11
        keep_alive = parser.should_keep_alive() if req.connection_field else http11
        if not keep_alive:
            req.close_after = True
            self.final_seen = True
        # llhttp upgrades only with an Upgrade field (or CONNECT, refused below); croupier
        # serves HTTP/1.1, so an h2c upgrade is left out and the request answered as is.
        if req.upgrade_value:
            req.upgrade_value = without_h2c(req.upgrade_value)
            req.upgrade = bool(req.upgrade_value) and parser.should_upgrade()
        host = req.host
        problem = None
        if host is None:
            if http11:
                problem = (400, "an HTTP/1.1 request needs a Host header")
        elif host != self.last_host:
            if not valid_host(host):
                problem = (400, "bad Host header")
            else:
                # a client sends the same Host again and again, and clients do too
                self.last_host = self.listener.known_host = host
        if method == b"CONNECT" and problem is None:
            problem = (405, "CONNECT is not supported by a reverse proxy")
        limit = self.listener.max_body_size
        if limit and req.content_length > limit and problem is None:
            problem = (413, f"request body of {req.content_length} bytes is over the "
                            f"limit of {limit}")
        if problem is not None:
            self.error = problem
            raise _Reject()
        if self.current is None:
            self._start(req)
        else:
            if self.queue is None:
                self.queue = deque()
            self.queue.append(req)
            self.pause_reading(self.PAUSE_QUEUE)

    def _head_too_large(self, long_line: bool) -> None:
        """A head over max_header_size: 414 when its request line alone is 8 KiB or more
        (the URL is what grew), else 431."""
        self.error = ((414, "request URI too long") if long_line
                      else (431, "request header fields too large"))

    def _take_head(self, req: Exchange, src: bytes, start: i64, method: bytes) -> i64:
        """Read the request head that llhttp has just validated, from `src[start:]`, the
        bytes as they came: the URL, the fields croupier acts on, and the field lines the
        member gets (all but the hop-by-hop and forwarding ones, in runs sliced out whole).
        Refuses what RFC 9112 says a server must refuse. Returns where the head ends.

        No parser callback per field (httptools makes two bytes objects and a Python call
        a field, more than the rest of this walk); the walk starts where the stream says
        the request began, and the method llhttp read must be there."""
        i: i64 = start
        while src[i] == 13 or src[i] == 10:     # empty lines before a request: allowed
            i += 1
        n: i64 = len(method)
        if not equals_at(src, i, method) or src[i + n] != 32:
            log.error("client %s: request head not where it was expected", self.peer.decode())
            self.error = (400, "bad request")
            raise _Reject()
        i += n
        while src[i] == 32:
            i += 1
        at: i64 = i
        # Not "/...", "*", nor CONNECT's authority-form (refused later).
        absolute = src[at] != 0x2F and src[at] != 0x2A and method != b"CONNECT"
        while src[i] != 32 and src[i] != 13:    # llhttp lets no space into a URL
            i += 1
        req.url = src[at:i]
        while src[i] == 32:
            i += 1
        if src[i] == 13:                        # no version: what llhttp takes as 0.9
            req.http11 = False
        elif equals_at(src, i, b"HTTP/"):       # llhttp takes 1.0, 1.1 and 2.0 here
            req.http11 = equals_at(src, i + 5, b"1.1\r")
            while src[i] != 13:
                i += 1
        else:
            self.error = (400, "not an HTTP request")     # llhttp also takes RTSP
            raise _Reject()
        i += 2
        keep_from: i64 = i
        kept = b""
        runs: list[bytes] | None = None
        while True:
            at = i
            first = src[i]
            if first == 13:                     # the empty line that ends the head
                break
            while src[i] != 13:
                i += 1
            i += 2
            first |= 0x20
            drop = False
            if first == 0x68:                                               # h
                if is_name(src, at, b"host"):
                    if req.host is not None:
                        self.error = (400, "more than one Host header")
                        raise _Reject()
                    req.host = field_value(src, at + 5, i - 2)
                else:
                    drop = is_name(src, at, b"http2-settings")      # h2c: never relayed
            elif first == 0x63:                                             # c
                if is_name(src, at, b"content-length"):
                    # llhttp (strict) let only digits through, and only one of it
                    req.content_length = length_value(src, at + 15, i - 2)
                elif is_name(src, at, b"connection"):
                    drop = True
                    req.connection_field = True
                    named = connection_named(field_value(src, at + 11, i - 2))
                    if named:
                        req.drop = (req.drop or []) + named
                else:       # RFC 9440's fields: only croupier's own reach the member
                    drop = is_name(src, at, b"client-cert") or is_name(src, at,
                                                                       b"client-cert-chain")
            elif first == 0x74:                                             # t
                if is_name(src, at, b"transfer-encoding"):
                    req.chunked = True  # llhttp accepted it, so chunked is the final coding
                    drop = True
                else:
                    drop = is_name(src, at, b"te") or is_name(src, at, b"trailer")
            elif first == 0x75:                                             # u
                if is_name(src, at, b"upgrade"):
                    req.upgrade_value = field_value(src, at + 8, i - 2)
                    drop = True
                elif is_name(src, at, b"user-agent"):
                    req.user_agent = field_value(src, at + 11, i - 2)
            elif first == 0x6B:                                             # k
                drop = is_name(src, at, b"keep-alive")
            elif first == 0x70:                                             # p
                drop = is_name(src, at, b"proxy-connection")
            elif first == 0x65:                                             # e
                if is_name(src, at, b"expect"):
                    value = field_value(src, at + 7, i - 2)
                    if value.lower() != b"100-continue":
                        self.error = (417, f"unsupported expectation "
                                           f"{value.decode('latin-1')!r}")
                        raise _Reject()
            elif first == 0x78:                                             # x
                if is_name(src, at, b"x-forwarded-for"):
                    value = field_value(src, at + 16, i - 2)
                    req.xff = req.xff + b", " + value if req.xff else value
                    drop = True
                elif is_name(src, at, b"x-forwarded-proto"):
                    req.forwarded_proto = field_value(src, at + 18, i - 2)
                    drop = True
                elif is_name(src, at, b"x-forwarded-host"):
                    req.forwarded_host = field_value(src, at + 17, i - 2)
                    drop = True
                elif is_name(src, at, b"x-request-id"):
                    # Kept only from a trusted peer and well formed: what the exchange
                    # holds is safe to log unescaped.
                    value = field_value(src, at + 13, i - 2)
                    if self.trusted and request_id_ok(value):
                        req.request_id = value
                    drop = True
            elif first == 0x76 and is_name(src, at, b"via"):                # v
                value = field_value(src, at + 4, i - 2)
                req.via = req.via + b", " + value if req.via else value
                drop = True
            if drop:
                if at > keep_from:
                    kept, runs = kept_run(kept, runs, src, keep_from, at)
                keep_from = i
        if i > keep_from:
            kept, runs = kept_run(kept, runs, src, keep_from, i)
        req.fields = joined_runs(kept, runs)
        if absolute:
            self._take_absolute_form(req)
        return i + 2

    def _take_absolute_form(self, req: Exchange) -> None:
        """A target in absolute-form (`GET http://a.example/x`): as RFC 9112 3.2.2 asks of a
        proxy, its authority is the request's host, whatever the Host field says; routing
        and the member both see it, and the member gets the target in origin-form, so that a
        Host field cannot steer the route while the authority picks the member's site."""
        split = origin_form(req.url)
        if split is None:
            self.error = (400, "bad request target: an absolute URL needs http:// or "
                               "https://, a valid host, and no user name")
            raise _Reject()
        if req.host is None and req.http11:
            self.error = (400, "an HTTP/1.1 request needs a Host header")
            raise _Reject()
        authority, req.url = split
        req.host = authority
        req.fields = b"Host: %s\r\n%s" % (authority, without_fields(req.fields, [b"host"]))

    def on_body(self, body: bytes) -> None:
        req = self.parsing
        assert req is not None
        if req.discard:
            return
        req.body_size += len(body)
        limit = self.listener.max_body_size
        if limit and req.body_size > limit:
            self.error = (413, f"request body is over the limit of {limit} bytes")
            raise _Reject()
        if req.chunked:
            pieces: tuple[bytes, ...] = (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            pieces = (body,)
        if req.replayable and req.body_size > req.replay_limit:
            req.replayable = False
            req.replay = None
        sink = req.sink
        if sink is not None:
            self._send_up(sink, pieces)
            if req.replayable:
                req.keep_for_replay(pieces)
        else:
            req.hold(pieces)
            if req is self.current and req.body_size > _CONNECT_BUFFER:
                self.pause_reading(self.PAUSE_CONNECT)

    def on_message_complete(self) -> None:
        req = self.parsing
        assert req is not None
        self.parsing = None
        req.body_done = True
        if req.upgrade:
            self.upgrading = req        # llhttp stops after it: see _upgrade_requested
        if not req.discard and req.chunked:
            if req.sink is not None:
                self._send_up(req.sink, (b"0\r\n\r\n",))
                if req.replayable:
                    req.keep_for_replay((b"0\r\n\r\n",))
            else:
                req.hold((b"0\r\n\r\n",))
        if req is self.current:
            self.deadline = 0.0
            if req.response_done:
                sink = req.sink
                if sink is not None:        # the rest of an early-answered request is sent
                    req.sink = None
                    self._flush_up()
                    sink.request_sent()
                self._next()

    # ---- request inspection and dispatch -------------------------------------------------

    def _start(self, req: Exchange) -> None:
        """Route `req`, pick a member, and send it on (or answer it ourselves)."""
        self.current = req
        listener = self.listener
        if listener.redirect_port:
            self._redirect_to_https(req, listener.redirect_port)
            return
        pool = listener.route(req) if listener.routes else listener.default_pool
        mode = listener.mode
        member = pool.policy.pick(req)
        if member is None:
            req.pool = pool
            self._answer(req, 503, f"croupier: no member of pool {pool.name!r} may take the "
                                   f"request ({pool.describe_unavailable()})\n",
                         extra=((b"Retry-After", b"1"),), termination=b"PQ")
            return
        if mode != "proxy":
            self._answer_without_proxy(req, pool, member, mode)
            return
        req.pool = pool
        req.replay_limit = pool.retry_body_limit
        self._send_to(req, member, fresh=False)

    def _send_to(self, req: Exchange, member: Member, fresh: bool) -> None:
        """One attempt: `member` takes `req`, on a kept-alive connection unless `fresh`."""
        member.in_flight += 1
        member.requests += 1
        req.to(SENT)
        req.member = member
        req.served_by = member
        req.attempts += 1
        req.sent_at = now = self.listener.time()
        if not req.begun:
            req.begun = now     # the loop's time when the head was read, in proxy mode
        # The model knows a member's connections only as its Upstream protocol; every member
        # the data plane sees has an UpstreamPool (cast: a native call, not a generic one).
        upstream = cast("UpstreamPool", member.upstream)
        if upstream.send_proxy:
            self._send_private(req, upstream, fresh, now)
            return
        conn = None if fresh else upstream.acquire()
        if conn is not None:
            self._attach(req, conn, now)
        else:
            upstream.connect(self, req)

    def _send_private(self, req: Exchange, upstream: UpstreamPool, fresh: bool,
                      now: float) -> None:
        """send_proxy: on this client's own connection to the member, or a new one that a
        PROXY header naming this client opens."""
        private = self.private
        if private is not None and not fresh:
            for conn in private:
                if conn.pool is upstream:
                    private.remove(conn)
                    if conn.state == MEMBER_IDLE:
                        upstream.private.discard(conn)
                        conn.reused = True
                        self._attach(req, conn, now)
                        return
                    break
        header = self.proxy_header
        if header is None or header[0] != upstream.send_proxy:
            sockname = self.transport.get_extra_info("sockname") if self.transport else None
            dst, dport = (sockname[0], sockname[1]) if sockname else ("0.0.0.0", 0)
            header = self.proxy_header = (upstream.send_proxy, proxy_header_for(
                upstream.send_proxy, self.peer, self.peer_port, dst, dport))
        upstream.connect(self, req, header[1])

    def keep(self, conn: UpstreamConnection) -> bool:
        if self.transport is None:
            return False
        private = self.private
        if private is None:
            private = self.private = []
        # Round robin sends a client's requests to member after member: one kept for each
        # of the last few (as HAProxy's max-session-srv-conns), the oldest let go.
        for old in [c for c in private if c.pool is conn.pool and c is not conn]:
            private.remove(old)
            if old.transport is not None:
                old.transport.close()
        if conn not in private:
            private.append(conn)
        if len(private) > PRIVATE_KEPT:
            old = private.pop(0)
            if old.transport is not None:
                old.transport.close()
        return True

    def _attach(self, req: Exchange, conn: UpstreamConnection, now: float) -> None:
        conn.attach(self, req, now)
        req.sink = conn
        member = req.member
        assert member is not None
        head = self._request_head(req, member)
        replay = req.replay
        if req.content_length <= 0 and not req.chunked and not replay and not req.body:
            # No body will follow in this read: nothing to join the head with.
            conn.send(head)
        else:
            self._send_body(req, conn, head)
        if self.write_paused:
            conn.pause_reading()
        if self.paused:
            self.resume_reading(self.PAUSE_CONNECT)

    def _send_body(self, req: Exchange, conn: UpstreamConnection, head: bytes) -> None:
        """The head with what is held of the body: replayed, or read while connecting."""
        pieces = [head]
        replay = req.replay
        if replay:
            pieces += replay            # a retry: what the failed attempt had sent
        body = req.body
        if body:
            pieces += body
            if req.replayable:
                req.keep_for_replay(body)
            req.body = None
        self._send_up(conn, pieces)

    def upstream_connected(self, req: Exchange, conn: UpstreamConnection) -> None:
        if req is not self.current or self.transport is None:
            conn.release()              # the client left while we connected; keep it
            return
        now = self.listener.time()      # the connect took a while
        req.connect_time = now - req.sent_at
        self._attach(req, conn, now)

    def upstream_failed(self, req: Exchange, why: str, *, status: int = 502,
                        sent_to_client: bool = False, stale: bool = False,
                        connect: bool = False, termination: bytes = b"") -> None:
        """An attempt failed. Retry it where that is safe, else answer `status` (or, when part
        of the response is already out, cut the connection: nothing else can say so)."""
        member = req.member
        req.sink = None
        self._release_member(req, failed=not stale)
        if member is not None and not stale:
            self.listener.context.member_failed(member, why)
        if self.transport is None or req is not self.current:
            return
        where = f"pool {member.pool.name!r} member {member.name}" if member else "?"
        if sent_to_client:
            log.warning("%s failed mid-response, client cut: %s", where, why)
            req.finish(b"SD")
            self.transport.abort()
            return
        refused = self._retry(req, member, why, connect=connect, stale=stale)
        if refused is None:
            return
        log.warning("%s failed: %s; not retried: %s", where, why, refused)
        req.close_after = req.close_after or not req.body_done
        if not termination:
            termination = ((b"sC" if connect else b"sH") if status == 504
                           else b"SC" if connect else b"SH")
        self._answer(req, status, f"croupier: {where} failed: {why}\n", termination=termination)

    def _retry(self, req: Exchange, failed: Member | None, why: str, *, connect: bool,
               stale: bool) -> str | None:
        """Send `req` again if that is safe; None if it was, else why not.

        Safe: a connect that failed sent nothing, so any method may go elsewhere; once the
        request may have reached a member, only idempotent methods are replayed (RFC 9110
        9.2.2), and only while their body is still held whole. Never the same member twice,
        except after a stale kept-alive connection, which is retried once on a fresh one."""
        pool = req.pool
        if pool is None or failed is None:
            return "no pool"
        if not connect and req.method not in IDEMPOTENT:
            return f"{req.method.decode('latin-1')} is not idempotent and may have been processed"
        if not req.replayable:
            return f"the body is larger than retry_body_limit ({req.replay_limit} bytes)"
        config = pool.config
        retries = config.retries if config is not None else 0
        if stale and req.attempts <= retries + 1 and failed.may_take_request():
            log.info("pool %r member %s: kept-alive connection was closed (%s); "
                     "retrying on a new connection", pool.name, failed.name, why)
            self._send_to(req, failed, fresh=True)
            return None
        if req.attempts > retries:
            return f"{retries} retries already made" if retries else "retries = 0"
        tried = req.tried
        if tried is None:
            tried = req.tried = []
        tried.append(failed)
        # The budget first: a retry it refuses must not move the rotation on (the next
        # request would meet the failed member again: 3 failures in 4, not 1 in 2).
        if not pool.take_retry():
            return "the pool's retry budget is spent"
        member = None
        for _ in range(len(pool.eligible)):
            candidate = pool.policy.pick(None)   # no key: a retry goes elsewhere
            if candidate is None:
                break
            if candidate not in tried:
                member = candidate
                break
        if member is None:
            pool.give_back_retry()
            return "no other member may take it"
        member.retries += 1
        log.info("pool %r member %s failed (%s); retrying on %s", pool.name, failed.name, why,
                 member.name)
        self._send_to(req, member, fresh=False)
        return None

    def response_done(self, req: Exchange, now: float = -1.0) -> None:
        """The member's response was passed on whole (`now`: the loop's time, if read)."""
        member = req.member
        if member is not None:
            member.answered += 1
            if now < 0.0:
                now = self.listener.time()
            member.latency_total += now - req.sent_at
            if req.status >= 500:
                outlier = member.pool.config.outlier if member.pool.config else None
                if outlier is not None and outlier.include_5xx:
                    self.listener.context.member_failed(member, f"status {req.status}")
            elif member.consecutive_failures:
                member.consecutive_failures = 0
        if member is not None:      # as _release_member, without the call
            req.member = None
            member.in_flight -= 1
        req.finish(b"--", now)
        sink = req.sink
        if sink is not None and not sink.body_pending:
            req.sink = sink = None
        if req is not self.current or self.transport is None:
            return
        if not req.body_done and sink is None:
            req.close_after = True      # answered early, nobody takes the rest: do not read on
        req.response_done = True
        if req.close_after:
            self._close_after_write()
        elif req.body_done:
            self._next(now)

    def body_sink_lost(self, req: Exchange) -> None:
        """The member that answered early stopped taking the rest of the body."""
        req.sink = None
        req.discard = True
        if req is self.current and not req.body_done:
            req.close_after = True
            self._close_after_write()

    def _release_member(self, req: Exchange, failed: bool) -> None:
        member = req.member
        if member is not None:
            req.member = None
            member.in_flight -= 1
            if failed:
                member.failures += 1

    def _next(self, now: float = -1.0) -> None:
        """`current` is answered; start the next queued request, or wait for one."""
        self.current = None
        if self.queue:
            req = self.queue.popleft()
            if not self.queue:
                self.resume_reading(self.PAUSE_QUEUE)
            self._start(req)
        else:
            if self.paused:
                self.resume_reading(self.PAUSE_QUEUE)
            if self.state >= CLOSING:
                self._answer_error_and_close()
            elif self.held is not None:
                self._parse_held(now)
            elif self.parsing is None:
                self.deadline = self._idle_deadline(now)

    def _answer(self, req: Exchange, status: int, body: str,
                extra: tuple[tuple[bytes, bytes], ...] = (),
                content_type: bytes = b"text/plain; charset=utf-8",
                termination: bytes = b"--") -> None:
        """Answer `req` ourselves (error, redirect, lookup)."""
        req.to(ANSWERED)
        req.status = status
        req.discard = True
        req.body = None
        req.response_done = True
        if not req.body_done and (req.chunked or req.content_length > 0):
            req.close_after = True      # a body still to come is not read: close instead
        if self.transport is None:
            req.finish(b"CH")
            return
        if req.request_id:
            extra = (*extra, (b"X-Request-ID", req.request_id))
        answer = simple_response(status, body, close=req.close_after, extra=extra,
                                 content_type=content_type, lines=self.listener.hsts)
        req.bytes_out += len(answer)
        req.finish(termination)
        self.transport.write(answer)
        if req.close_after:
            self._close_after_write()
        elif req.body_done:
            self._next()

    def _redirect_to_https(self, req: Exchange, port: int) -> None:
        """redirect_to_https: the same target, on the TLS listener (308 keeps the method)."""
        if req.host is None:
            self._answer(req, 400, "croupier: no Host to redirect to\n", termination=b"PR")
            return
        host = host_without_port(req.host)
        location = (b"https://%s%s" % (host, req.url) if port == 443
                    else b"https://%s:%d%s" % (host, port, req.url))
        self._answer(req, 308, f"croupier: {location.decode('latin-1')}\n",
                     extra=((b"Location", location),))

    def _answer_without_proxy(self, req: Exchange, pool: Pool, member: Member,
                              mode: str) -> None:
        url = member.url_for(req.url.decode("latin-1"))     # origin-form (or "*")
        member.requests += 1
        req.pool = pool
        req.served_by = member
        if mode == "redirect":
            self._answer(req, 307, f"croupier: {url}\n",
                         extra=((b"Location", url.encode("latin-1")),
                                (b"Cache-Control", b"no-store")))
        else:
            body = json.dumps({"pool": pool.name, "member": member.name,
                               "host": member.host.name, "address": member.address,
                               "port": member.port, "url": url})
            self._answer(req, 200, body + "\n", extra=((b"Cache-Control", b"no-store"),),
                         content_type=b"application/json")

    def _request_head(self, req: Exchange, member: Member) -> bytes:
        """The request head for the member: the copied fields, then the forwarding ones."""
        fields = req.fields
        drop = req.drop
        if drop is not None:        # fields the client's Connection named are hop-by-hop
            fields = without_fields(fields, drop)
        # From a trusted proxy its forwarding fields go on (X-Forwarded-For appended to);
        # from anyone else they are replaced: a client cannot forge them.
        xff = req.xff
        via = req.via
        trusted = self.trusted
        forwarded_for = xff + b", " + self.peer if xff and trusted else self.peer
        via = via + b", 1.1 croupier" if via else b"1.1 croupier"
        proto = (req.forwarded_proto if trusted and req.forwarded_proto
                 else self.listener.scheme)
        extra = b""
        if req.chunked:
            extra = b"Transfer-Encoding: chunked\r\n"
        if req.upgrade:
            extra += b"Connection: upgrade\r\nUpgrade: %s\r\n" % req.upgrade_value
        if self.client_cert:
            extra += b"Client-Cert: %s\r\n" % self.client_cert
        # One build for the whole head: no intermediate bytes.
        host = req.host
        if host is not None:
            if trusted and req.forwarded_host:
                host = req.forwarded_host
            return (b"%s %s HTTP/1.1\r\n%sX-Forwarded-Host: %s\r\nX-Forwarded-For: %s\r\n"
                    b"X-Forwarded-Proto: %s\r\nVia: %s\r\nX-Request-ID: %s\r\n%s\r\n"
                    % (req.method, req.url, fields, host, forwarded_for, proto, via,
                       req.request_id, extra))
        return (b"%s %s HTTP/1.1\r\n%sHost: %s:%d\r\nX-Forwarded-For: %s\r\n"
                b"X-Forwarded-Proto: %s\r\nVia: %s\r\nX-Request-ID: %s\r\n%s\r\n"
                % (req.method, req.url, fields, member.address.encode(), member.port,
                   forwarded_for, proto, via, req.request_id, extra))

    # ---- writing to the member ------------------------------------------------------------

    def _send_up(self, sink: UpstreamConnection, pieces: tuple[bytes, ...] | list[bytes]) -> None:
        """Batch writes to the member during one feed: one syscall per client read."""
        if self._feeding:
            out_sink = self._out_sink
            if out_sink is sink:
                out = self._out
                assert out is not None
                out.extend(pieces)
                return
            if out_sink is not None:    # another member's bytes first (rare)
                self._flush_up()
            self._out_sink = sink
            self._out = list(pieces)
        else:
            sink.send_pieces(list(pieces))

    def _flush_up(self) -> None:
        out, sink = self._out, self._out_sink
        self._out = None
        self._out_sink = None
        if out and sink is not None:
            sink.send_pieces(out)

    # ---- tunnels (Upgrade, WebSocket) ------------------------------------------------------

    def _upgrade_requested(self, data: bytes, end: int) -> bytes | None:
        """llhttp stopped at `end` of this read, after a request that asked to upgrade, and
        parses no further by itself. An upgrade croupier does not relay (h2c), or one
        already answered, is an ordinary request: returns the bytes past it, to be parsed
        as the next requests by a fresh parser. Otherwise they are held (None), reading
        paused, until the member answers: after its 101 they go into the tunnel
        (start_tunnel), after anything else they are parsed (_parse_held). Relaying them at
        once would hand the member raw bytes croupier never routed."""
        self._fed += end                # the stream's offsets go on from `end`
        self._next_start = self._fed
        rest = data[end:]
        self._data = rest
        req, self.upgrading = self.upgrading, None
        self._free_parser()                 # what follows is parsed by another
        if self.state >= CLOSING:       # answered with a close: nothing more is read
            rest = b""
        elif req is None or req.response_done:
            return rest
        else:
            self.upgrading = req
            self.held = rest
            self.to(UPGRADING)
            self.pause_reading(self.PAUSE_UPGRADE)
        self._feeding = False
        self._flush_up()
        self._data = b""
        if self.deadline < 0.0:         # queued behind another request: its member's time
            self.deadline = self.listener.time() + self.listener.header_timeout
        return None

    def _parse_held(self, now: float) -> None:
        """The upgrade request was answered without a switch: what the client sent behind
        it is the next requests."""
        held = self.held
        self.held = None
        self.upgrading = None
        self.to(OPEN)
        self.deadline = self._idle_deadline(now)
        self.resume_reading(self.PAUSE_UPGRADE)
        if held:
            self.data_received(held)

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The member switched protocols: from now on bytes are copied both ways, starting
        with those the client sent behind its request."""
        req = self.current
        self.tunnel = conn
        self.to(TUNNEL_OPEN)
        self.tunnel_req = req           # its member stays in flight while the tunnel is open
        if req is not None:
            req.to(TUNNEL)
            req.sink = None
        self.current = None
        self._free_parser()
        held = self.held
        self.held = None
        self.upgrading = None
        self.resume_reading(self.PAUSE_QUEUE | self.PAUSE_CONNECT | self.PAUSE_UPGRADE)
        if rest and self.transport is not None:
            self.transport.write(rest)
            if req is not None:
                req.bytes_out += len(rest)
        if held:
            conn.send(held)
            if req is not None:
                req.bytes_in += len(held)
        self.deadline = self.refresh_tunnel_deadline()    # it covers both directions

    def refresh_tunnel_deadline(self) -> float:
        return self.listener.time() + self.listener.tunnel_timeout

    # ---- the downstream interface (proxy/downstream.py): what the member side may do ------

    def send(self, data: bytes | memoryview) -> bool:
        transport = self.transport
        if transport is None:
            return False
        transport.write(data)
        return True

    def send_pieces(self, pieces: list[bytes | memoryview] | list[bytes]) -> bool:
        transport = self.transport
        if transport is None:
            return False
        transport.writelines(pieces)
        return True

    def buffered(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def pause(self) -> None:
        self.pause_reading(self.PAUSE_UPSTREAM)

    def resume(self) -> None:
        self.resume_reading(self.PAUSE_UPSTREAM)

    def tunnel_activity(self) -> None:
        self.deadline = self.refresh_tunnel_deadline()

    def tunnel_closed(self) -> None:
        self.tunnel = None
        if self.state == TUNNEL_OPEN:
            self.to(CLOSING)            # nothing it still sends is parsed
        req, self.tunnel_req = self.tunnel_req, None
        if req is not None:
            self._release_member(req, failed=False)
            req.finish(b"ST")
        if self.transport is not None:
            self.transport.close()

    # ---- states, flow control, timeouts, closing -------------------------------------------

    def to(self, state: int) -> None:
        """Move to `state`, as NEXT allows."""
        if not (NEXT[self.state] >> state) & 1:
            illegal_transition(f"client connection from {self.peer.decode()}: "
                               f"{STATES[self.state]} -> {STATES[state]} is not a transition")
        self.state = state

    def pause_reading(self, reason: int) -> None:
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason: int) -> None:
        was = self.paused
        self.paused &= ~reason
        if was and not self.paused and self.transport is not None:
            self.transport.resume_reading()

    def on_timeout(self) -> None:
        transport = self.transport
        if transport is None:
            return
        if self.state == LINGERING:
            transport.close()
            return
        if self.tunnel is not None or self.write_paused:
            ended = self.tunnel_req if self.tunnel is not None else self.current
            if ended is not None:
                ended.finish(b"sT" if self.tunnel is not None else b"cD")
            transport.abort()           # a peer that stopped reading or talking
        elif self.state == HEAD:
            self.error = (408, "request head not received in time")
            self._parse_failed()
        elif self.parsing is not None:
            self.error = (408, "request body not received in time")
            self._parse_failed()
        elif self.current is None:
            transport.close()           # idle keep-alive connection
        else:
            self.deadline = 0.0         # waiting on a member: its own deadline applies

    def _parse_failed(self) -> None:
        """The parser stopped on `self.error`. Requests before the bad one are still answered
        in order; then the error is answered and the connection closes."""
        if self.state < CLOSING:
            self.to(CLOSING)
        bad = self.parsing
        if bad is not None and not bad.method:
            self._take_refused_line(bad)
        self._data = self._raw = b""
        self.parsing = None
        self.refused = bad
        current = self.current
        if current is not None and current is not bad:
            return      # answered, with the error, once the requests before it are done
        if current is not None:
            # The bad bytes were the body of the request being answered: end that exchange.
            self.current = None
            self._release_member(current, failed=False)
            sink, current.sink = current.sink, None
            if sink is not None:
                sink.detach()
            if current.response_started:
                current.finish(b"PD")
                if self.transport is not None:
                    self.transport.abort()
                return
        self._answer_error_and_close()

    def _take_refused_line(self, req: Exchange) -> None:
        """The parser stopped inside a request line or head it refused: what the request
        line said, as it came, for the access log (at most the first 8 KiB of it)."""
        raw = self._raw
        src = raw + self._data if raw else self._data
        start = 0 if raw else self._begin - self._fed
        if not 0 <= start < len(src):
            return
        end = src.find(b"\r\n", start, start + 8192)
        parts = src[start:end if end >= 0 else start + 8192].split(b" ")
        req.method = parts[0]
        if len(parts) > 1:
            req.url = parts[1]
        req.http11 = len(parts) < 3 or parts[2] == b"HTTP/1.1"

    def _answer_error_and_close(self) -> None:
        self.queue = None
        transport = self.transport
        if transport is None:
            return
        status, why = self.error or (0, "")
        if status:
            log.info("client %s: %d %s", self.peer.decode(), status, why)
            answer = simple_response(status, f"croupier: {why}\n", close=True,
                                     lines=self.listener.hsts)
            req = self.refused
            if req is None:     # refused before a request began (bytes no request starts with)
                req = Exchange(self.listener, self.peer, self.peer_port, self.log_client)
            req.status = status
            req.bytes_out += len(answer)
            req.finish(b"cR" if status == 408 else b"PR")
            transport.write(answer)
        self._close_after_write()

    def _close_after_write(self) -> None:
        """Close once the answer is out. A client may still be sending (the rest of a body,
        the next pipelined requests): closing with its bytes unread would make the kernel
        send a reset that can destroy the answer before the client reads it. So shut down
        our side, read and drop what comes for LINGER seconds, then close (nginx's
        lingering close). Like nginx, only when the client may still be sending: after a
        whole request, with nothing read past it and no error, close at once."""
        transport = self.transport
        if transport is None or self.state == LINGERING:
            return
        if self.state < CLOSING:
            self.to(CLOSING)
        req = self.current
        read_all = (self.error is None and self.parsing is None and not self.queue
                    and (req is None or req.body_done))
        if self.client_eof or read_all or not transport.can_write_eof():
            transport.close()           # after what is buffered has been sent
            return
        self.to(LINGERING)
        transport.write_eof()           # after what is buffered has been sent
        if self.paused:
            self.paused = 0
            transport.resume_reading()
        self.deadline = self.listener.time() + LINGER

    def shutdown(self) -> None:
        """The process is stopping: an idle connection closes now, one with a request in
        flight closes once that is answered (with `Connection: close` when its head has not
        gone out yet); a tunnel runs on until the stop's grace ends."""
        transport = self.transport
        if transport is None or self.tunnel is not None:
            return
        req = self.current
        if req is None:
            transport.close()       # nothing asked of us: nothing is lost
        else:
            req.close_after = True

    def _idle_deadline(self, now: float = -1.0) -> float:
        if now < 0.0:
            now = self.listener.time()
        return now + self.listener.keepalive_timeout

    def _free_parser(self) -> None:
        parser = self.parser
        if parser is not None:
            self.parser = None
            parser.free()

