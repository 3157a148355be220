"""The member side of the data plane: kept-alive connections and the per-member pool of them.

Protocol interface first, then parser callbacks, then the exchange's end; as in uvicorn's
httptools protocol. One `UpstreamConnection` carries one exchange at a time (no upstream
pipelining); between exchanges it waits, LIFO, in its member's `UpstreamPool`.

Rules kept here:
- the response parser cannot be told a response answers HEAD (httptools issue 47), so for HEAD
  we stop the parser at the end of the head ourselves and start a fresh one;
- a body that ends at close (no Content-Length, not chunked) ends at connection_lost, because
  httptools has no llhttp_finish;
- 1xx interim responses go to the client as they come; 101 turns both sides into a tunnel;
- a connection goes back to the pool only when the response said keep-alive, the request was
  sent whole, and nothing is left over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools

from croupier.proxy.http import (
    COMMON_RESPONSE_FIELDS,
    CONNECTION_OPTIONS,
    HOP_BY_HOP,
    PLAIN_CONNECTION,
    FieldNames,
    connection_tokens,
    field_name,
    reason,
)

if TYPE_CHECKING:
    from croupier.model.state import Member
    from croupier.proxy.client import ClientConnection, Request
    from croupier.runtime.server import Balancer

log = logging.getLogger("croupier.upstream")

# How the response body leaves for the client.
OUT_NONE: Final = 0         # no body (HEAD, 204, 304)
OUT_RAW: Final = 1          # Content-Length from the member, bytes copied as they come
OUT_CHUNKED: Final = 2      # chunked or close-delimited from the member, chunked to HTTP/1.1
OUT_UNTIL_CLOSE: Final = 3  # close-delimited to an HTTP/1.0 client

# Fields of a response croupier acts on (lower-case); every other field is copied as it came.
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"content-length"}
_RESPONSE_FIELDS: Final = FieldNames(_RESPONSE_SPECIAL, COMMON_RESPONSE_FIELDS)
# Which of those a response head had (bits of `_fields`).
F_LENGTH: Final = 1
F_CHUNKED: Final = 2
F_NAMED: Final = 4         # its Connection field named other fields, which are hop-by-hop then
_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason(code))
                        for code in range(100, 600) if reason(code) != b"Unknown"}


class _StopAtHead(Exception):
    """Raised from on_headers_complete to end a HEAD response at its head."""


class UpstreamConnection:
    __slots__ = ("_close_delimited", "_fields", "_final", "_in_head",
                 "_interim", "_keep_alive", "_message_done", "_named", "_out", "_parts",
                 "_received", "_to_client", "_tunnel_rest", "_upgrade", "body_pending", "client",
                 "closed", "deadline", "idle", "out_mode", "parser", "paused", "pool", "req",
                 "response_started", "reused", "transport", "tunnel")

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientConnection | None = None
        self.req: Request | None = None
        self.closed = False
        self.idle = False
        self.reused = False
        self.tunnel = False
        self.body_pending = False       # answered; still being sent the request's body
        self.paused = False
        self.deadline = 0.0
        self._parts: list[bytes] = []
        self._in_head = False
        self._fields = 0
        self._final = False
        self._message_done = False
        self._received = False
        self._to_client = False
        self.response_started = False
        self._interim = False
        self._keep_alive = False
        self._close_delimited = False
        self.out_mode = OUT_NONE
        self._named: list[bytes] = []
        self._upgrade = b""
        self._out: list[bytes] | None = None
        self._tunnel_rest = b""

    # ---- asyncio protocol interface ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.pool.balancer.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            client = self.client
            if client is not None and client.transport is not None:
                client.transport.write(data)
                client.deadline = client.refresh_tunnel_deadline()
            return
        req = self.req
        if req is None or self.body_pending:
            # Bytes on an idle connection, or after the answer to a request still being sent:
            # the member broke framing or is closing. Never reuse.
            if self.body_pending:
                self._lose_pending_body()
            else:
                self._abandon()
            return
        self.deadline = self.pool.time() + self.pool.response_timeout
        self._received = True
        out: list[bytes] = []
        self._out = out
        stopped_at_head = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self._tunnel_rest = data[e.args[0]:]
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _StopAtHead):
                stopped_at_head = True
            else:
                raise
        except httptools.HttpParserError as e:
            self._flush(out)
            self._fail(f"invalid response: {e}")
            return
        self._flush(out)
        if stopped_at_head:
            # Anything past the head would be a body the member should not have sent.
            keep = self.parser.should_keep_alive() and data.endswith(b"\r\n\r\n")
            self.parser = httptools.HttpResponseParser(self)
            self._finish(reusable=keep)
        elif self.tunnel:
            self._start_tunnel()
        elif self._message_done:
            self._finish(reusable=self._keep_alive)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.balancer.connections.discard(self)
        if self.idle:
            self.idle = False
            self.pool.forget(self)
            return
        self.pool.open -= 1
        client = self.client
        req = self.req
        if client is None or req is None:
            return
        if self.body_pending:
            self._lose_pending_body()
        elif self.tunnel:
            self.client = self.req = None
            client.tunnel_closed()
        elif self._close_delimited and self._final and not self._message_done:
            # The member ended a close-delimited body: that is the end of the message.
            if self.out_mode == OUT_CHUNKED and client.transport is not None:
                client.transport.write(b"0\r\n\r\n")
            self._message_done = True
            self._finish(reusable=False)
        else:
            why = "connection reset" if exc is not None else "connection closed"
            self._fail(f"{why} before the response was complete"
                       if self.response_started else f"{why} before a response")

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.pause_reading(client.PAUSE_UPSTREAM)

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.resume_reading(client.PAUSE_UPSTREAM)

    # ---- parser callbacks ------------------------------------------------------------------

    def _begin_head(self) -> None:
        """Before each response head (at the start of an exchange and after an interim one;
        cheaper than an on_message_begin callback per response). The head for the client is
        built as the fields come: the status line goes in front, our framing at the end."""
        self._parts = [b""]
        self._in_head = True
        self._fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:       # headers after the body are trailers: dropped
            return
        lname = _RESPONSE_FIELDS.kind(name)
        if lname:
            if lname == b"content-length":
                self._fields |= F_LENGTH        # and copied, below
            else:                               # hop-by-hop: never copied
                if lname == b"transfer-encoding":
                    self._fields |= F_CHUNKED
                elif lname == b"connection" and value not in PLAIN_CONNECTION:
                    named = [t for t in connection_tokens(value)
                             if t not in CONNECTION_OPTIONS]
                    if named:
                        self._named = (self._named if self._fields & F_NAMED else []) + named
                        self._fields |= F_NAMED
                elif lname == b"upgrade":
                    self._upgrade = value
                return
        # One piece per field: compiled, a bytes format is one allocation, and the join
        # pays per piece.
        self._parts.append(b"%s: %s\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self.parser.get_status_code()
        req = self.req
        out = self._out
        assert req is not None and out is not None
        if status < 200 and status != 101:
            self._interim = True
            if req.http11:           # an HTTP/1.0 client cannot take interim responses
                out.append(self._head(status, b""))
            return
        self._interim = False
        self._final = True
        self.response_started = True
        req.response_started = True
        req.status = status
        if status == 101:
            self.tunnel = True
            out.append(self._head(status,
                                  b"Connection: upgrade\r\nUpgrade: %s\r\n" % self._upgrade))
            return
        fields = self._fields
        framing = b""
        close_delimited = False
        if req.method == b"HEAD" or status == 204 or status == 304:
            self.out_mode = OUT_NONE
        elif fields & (F_LENGTH | F_CHUNKED) == F_LENGTH:
            self.out_mode = OUT_RAW
        else:
            close_delimited = not fields & F_CHUNKED
            if req.http11:
                self.out_mode = OUT_CHUNKED
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                self.out_mode = OUT_UNTIL_CLOSE
                req.close_after = True
        self._close_delimited = close_delimited
        if req.set_cookie is not None:
            framing += b"Set-Cookie: " + req.set_cookie + b"\r\n"
        if req.close_after:
            framing += b"Connection: close\r\n"
        elif not req.http11:
            framing += b"Connection: keep-alive\r\n"
        out.append(self._head(status, framing))
        if req.method == b"HEAD":
            raise _StopAtHead()

    def on_body(self, body: bytes) -> None:
        if self._interim or not body:
            return
        out = self._out
        assert out is not None
        mode = self.out_mode
        if mode == OUT_CHUNKED:
            out += (b"%x\r\n" % len(body), body, b"\r\n")
        elif mode != OUT_NONE:
            out.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._begin_head()
            return
        if self.tunnel:
            return
        if self.out_mode == OUT_CHUNKED:
            out = self._out
            assert out is not None
            out.append(b"0\r\n\r\n")
        # Read here: once the callback returns, llhttp resets the flags it is computed from.
        self._keep_alive = self.parser.should_keep_alive()
        self._message_done = True

    # ---- building and sending --------------------------------------------------------------

    def _head(self, status: int, framing: bytes) -> bytes:
        """The response head for the client: the copied fields between our status line and
        our framing."""
        parts = self._parts
        drop = self._named if self._fields & F_NAMED else None
        if status == 204 and self._fields & F_LENGTH:
            drop = [*(drop or ()), b"content-length"]   # RFC 9110 8.6: none on a 204
        if drop is not None:
            parts = [b""] + [line for line in parts[1:] if field_name(line) not in drop]
        parts[0] = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
        parts.append(framing + b"\r\n")
        return b"".join(parts)

    def _flush(self, out: list[bytes]) -> None:
        self._out = None
        if not out:
            return
        self._to_client = True
        client = self.client
        transport = client.transport if client is not None else None
        if transport is None:
            return
        if len(out) == 1:
            transport.write(out[0])
        elif len(out) < 8:
            # A few small pieces (a head and a short body): one joined write is cheaper
            # in the kernel than a writev of them; big bodies keep their zero-copy path.
            transport.write(b"".join(out))
        else:
            transport.writelines(out)

    def send(self, data: bytes) -> None:
        """Write request bytes to the member (called by the client side)."""
        assert self.transport is not None
        self.transport.write(data)

    def attach(self, client: ClientConnection, req: Request) -> None:
        """A new exchange. (`_interim`, `_keep_alive`, `_close_delimited` and `out_mode` are
        set before they are read.)"""
        self.client = client
        self.req = req
        self.idle = False
        self._parts = [b""]             # as _begin_head, without a call per request
        self._in_head = True
        self._fields = 0
        self._final = False
        self._message_done = False
        self._received = False          # any byte from the member for this exchange
        self._to_client = False         # any byte of this exchange passed to the client
        self.response_started = False
        self.deadline = self.pool.time() + self.pool.response_timeout

    def _start_tunnel(self) -> None:
        client = self.client
        assert client is not None
        rest = self._tunnel_rest
        self._tunnel_rest = b""
        self.deadline = 0.0
        client.start_tunnel(self, rest)

    # ---- the end of an exchange ------------------------------------------------------------

    def _finish(self, reusable: bool) -> None:
        client, req = self.client, self.req
        if (req is not None and client is not None and not req.body_done and reusable
                and req.status < 400 and not self.closed):
            # The member answered before it had the whole request, as nginx does when it
            # reads and discards a body: keep sending it the rest; the connection goes back
            # to the pool once the request is sent (`request_sent`).
            self.body_pending = True
            self.deadline = 0.0         # the client's body_timeout covers a slow sender now
            client.response_done(req)
            return
        self.client = self.req = None
        if self.paused:
            self.resume_reading()
        if req is not None and not req.body_done:
            reusable = False    # the member answered before it had the whole request
        if reusable and not self.closed:
            self.pool.release(self)
        else:
            self._abandon()
        if client is not None and req is not None:
            client.response_done(req)

    def request_sent(self) -> None:
        """The rest of a request answered early has been sent: the connection is free."""
        self.body_pending = False
        self.client = self.req = None
        if not self.closed:
            self.pool.release(self)

    def _lose_pending_body(self) -> None:
        """The member closed, or spoke, while it was still being sent an answered request's
        body: that body has nowhere to go, and the connection cannot be trusted again."""
        client, req = self.client, self.req
        self.body_pending = False
        self.client = self.req = None
        self._abandon()
        if client is not None and req is not None:
            client.body_sink_lost(req)

    def _fail(self, why: str, status: int = 502) -> None:
        client, req = self.client, self.req
        self.client = self.req = None
        self._abandon()
        if client is not None and req is not None:
            # Stale: a kept-alive connection the member closed as we reused it. Nothing came
            # back, so the member never answered; the connection, not the member, failed.
            client.upstream_failed(req, why, status=status, sent_to_client=self._to_client,
                                   stale=self.reused and not self._received)

    def _abandon(self) -> None:
        """Close without reuse; connection_lost does the bookkeeping."""
        self.idle = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def on_timeout(self) -> None:
        if self.body_pending:
            self._lose_pending_body()
            return
        if self.idle:
            self.transport.close() if self.transport is not None else None
            return
        self._fail(f"no response within {self.pool.response_timeout:g}s", status=504)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()
            self.deadline = 0.0     # a client that reads slowly is not the member's fault

    def resume_reading(self) -> None:
        self.paused = False
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
            if not self.tunnel:
                self.deadline = self.pool.time() + self.pool.response_timeout


class UpstreamPool:
    """The kept-alive connections to one member, reused last-in first-out."""

    __slots__ = ("balancer", "connect_timeout", "idle", "idle_timeout", "max_idle", "member",
                 "open", "response_timeout", "time")

    def __init__(self, balancer: Balancer, member: Member, connect_timeout: float,
                 response_timeout: float, idle_timeout: float, max_idle: int) -> None:
        self.balancer = balancer
        self.time = balancer.loop.time
        self.member = member
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.open = 0

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.idle = False
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConnection) -> None:
        if not self.member.eligible or len(self.idle) >= self.max_idle:
            conn.transport.close() if conn.transport is not None else None
            return
        conn.idle = True
        conn.deadline = self.time() + self.idle_timeout
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.open -= 1
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_idle(self) -> None:
        for conn in self.idle[:]:
            if conn.transport is not None:
                conn.transport.close()

    def connect(self, client: ClientConnection, req: Request) -> None:
        """Open a new connection for `req`; the client hears back either way."""
        self.open += 1
        self.balancer.loop.create_task(self._connect(client, req))

    async def _connect(self, client: ClientConnection, req: Request) -> None:
        loop = self.balancer.loop
        member = self.member
        try:
            # No Python base class (see client_protocol): uvloop only calls its methods.
            _, proto = await asyncio.wait_for(
                loop.create_connection(lambda: cast(asyncio.Protocol, UpstreamConnection(self)),
                                       member.address, member.port),
                self.connect_timeout)
            conn = cast(UpstreamConnection, proto)
        except TimeoutError:
            self.open -= 1
            client.upstream_failed(req, f"connect timed out after {self.connect_timeout:g}s",
                                   status=504, connect=True)
            return
        except OSError as e:
            self.open -= 1
            client.upstream_failed(req, f"connect failed: {e.strerror or e}", connect=True)
            return
        client.upstream_connected(req, conn)
