"""The member side of the data plane: kept-alive connections and the per-member pool of them.

Protocol interface first, then parser callbacks, then the exchange's end; as in uvicorn's
httptools protocol. One `UpstreamConnection` carries one exchange at a time (no upstream
pipelining); between exchanges it waits, LIFO, in its member's `UpstreamPool`.

Rules kept here:
- the response parser cannot be told a response answers HEAD (httptools issue 47), so for HEAD
  we stop the parser at the end of the head ourselves and start a fresh one;
- a body that ends at close (no Content-Length, not chunked) ends at connection_lost, because
  httptools has no llhttp_finish;
- past its first read, a Content-Length body goes to the client as it comes, without the
  parser (`_pass_body`: it would copy each byte once more), and a long one from the end of
  its head (`_start_body`); a fresh parser takes the next response;
- a response head is not taken field by field (a parser callback per field costs more than
  the rest of the exchange): llhttp validates it, then the head is copied from the bytes as
  they came, less the hop-by-hop lines (`_copied_fields`). llhttp refuses obs-fold, bare CR
  or LF and spaces before a colon, so a head it accepted is plain "Name: value" CRLF lines;
- 1xx interim responses go to the client as they come; 101 turns both sides into a tunnel,
  but only when it answers an upgrade the client asked for, to a protocol it named (else
  502: a tunnel nobody asked for would carry raw bytes past every route);
- a connection goes back to the pool only when the response said keep-alive, the request was
  sent whole, and nothing is left over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

import httptools
from mypy_extensions import i64

from croupier.proxy.exchange import RESPONDING, illegal_transition
from croupier.proxy.http import (
    F_CHUNKED,
    F_LENGTH,
    OUT_CHUNKED,
    OUT_NONE,
    OUT_RAW,
    OUT_UNTIL_CLOSE,
    connection_named,
    equals_at,
    field_value,
    is_name,
    joined_runs,
    kept_run,
    length_value,
    reason,
    response_framing,
    switch_allowed,
    without_fields,
)

if TYPE_CHECKING:
    from croupier.model.state import Member
    from croupier.proxy.context import ProxyContext
    from croupier.proxy.downstream import Downstream
    from croupier.proxy.exchange import Exchange

log = logging.getLogger("croupier.upstream")

# A response head larger than this is refused (502), as nginx's proxy_buffer_size and
# HAProxy's bufsize refuse one: it is held whole until llhttp has read it.
MAX_RESPONSE_HEAD: Final = 65536
# A Content-Length body with at least this much left after its first read is read into a
# buffer of our own (_BodyPump), PUMP_SIZE bytes at a time (uvloop reads 256 kB too).
PUMP_FROM: Final = 65536
PUMP_SIZE: Final = 262144
_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason(code))
                        for code in range(100, 600) if reason(code) != b"Unknown"}


class _StopAtHead(Exception):
    """Raised from on_headers_complete to end a HEAD response at its head."""


class _StopAtBody(Exception):
    """Raised from on_headers_complete at the head of a long Content-Length body: the body
    goes to the client from the read's own bytes (`_start_body`)."""


class _PastTheResponse(Exception):
    """Raised from on_headers_complete for a second response in the read that ended one:
    nothing asked for it."""


class _HeadTooLarge(Exception):
    """Raised from on_headers_complete for a head over MAX_RESPONSE_HEAD read in one go."""


class _BadSwitch(Exception):
    """Raised from on_headers_complete for a 101 the client did not ask for: to a request
    without an upgrade, or to another protocol than it named."""


# The states of a member connection, and for each the states it may go to (a bit each), as
# the exchange's (proxy/exchange.py: the same strictness). Which exchange it carries, and how
# far its response has come, are the exchange's own states.
NEW: Final = 0              # made (connecting, or just connected), no exchange yet
EXCHANGE: Final = 1         # carrying an exchange
BODY_PENDING: Final = 2     # its response went out whole; still being sent the request body
TUNNEL: Final = 3           # the member switched protocols
IDLE: Final = 4             # kept alive in its member's pool
CLOSED: Final = 5           # its transport is gone
CONNECTION_STATES: Final = ("NEW", "EXCHANGE", "BODY_PENDING", "TUNNEL", "IDLE", "CLOSED")
CONNECTION_NEXT: Final = [      # a list: compiled, indexing a tuple constant boxes it anew
    1 << EXCHANGE | 1 << IDLE | 1 << CLOSED,                    # NEW
    1 << BODY_PENDING | 1 << TUNNEL | 1 << IDLE | 1 << CLOSED,  # EXCHANGE
    1 << IDLE | 1 << CLOSED,                                    # BODY_PENDING
    1 << CLOSED,                                                # TUNNEL
    1 << EXCHANGE | 1 << CLOSED,                                # IDLE
    0,                                                          # CLOSED
]


def _unconnected(data: bytes) -> None:
    raise RuntimeError("no transport yet")


class UpstreamConnection:
    __slots__ = (
        "_body_left",
        "_body_seen",
        "_body_tail",
        "_close_delimited",
        "_copied",
        "_feed",
        "_fields",
        "_final",
        "_head_start",
        "_in_head",
        "_interim",
        "_keep_alive",
        "_length",
        "_message_done",
        "_out",
        "_past_head",
        "_plain_keep_alive",
        "_raw",
        "_received",
        "_to_client",
        "_tunnel_rest",
        "_upgrade",
        "_write",
        "client",
        "deadline",
        "out_mode",
        "owner",
        "parser",
        "paused",
        "pool",
        "req",
        "response_started",
        "reused",
        "state",
        "transport",
    )

    def __init__(self, pool: UpstreamPool, owner: Downstream | None = None) -> None:
        self.pool = pool
        # The client connection it is private to (send_proxy: its PROXY header named that
        # client), kept by it between exchanges; None: any client's, kept by the pool.
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        # The transport's write, bound once (see _feed); set by connection_made.
        self._write: Callable[[bytes], None] = _unconnected
        self.parser = httptools.HttpResponseParser(self)
        # The parser's feed_data, bound once: a member connection lives for many exchanges,
        # and a call by name looks the method up on every read.
        self._feed: Callable[[bytes], None] = self.parser.feed_data
        self.client: Downstream | None = None
        self.req: Exchange | None = None
        self.state = NEW
        self.reused = False
        self.paused = False
        self.deadline = 0.0
        # The bytes of the head being read (from `_head_start`), kept until llhttp has seen
        # all of it; then what of it is copied to the client.
        self._raw = b""
        self._head_start = 0
        self._past_head = 0             # bytes of the read past the head just read
        self._copied = b""
        self._length = 0                # the head's Content-Length
        self._body_seen = 0             # body bytes the parser has handed over
        self._body_left = 0             # body bytes still to pass on without the parser
        # The last Content-Length body bytes the parser handed over: a read that does not
        # end with them (or, with no such body, with the head's or the chunks' CRLF CRLF)
        # had bytes past the response, so the parser is not left where a response begins.
        self._body_tail = b""
        self._in_head = False
        self._fields = 0
        self._final = False
        self._message_done = False
        self._received = False
        self._to_client = False
        self.response_started = False
        self._interim = False
        self._keep_alive = False
        # The head read says what llhttp's should_keep_alive() would: HTTP/1.1, a
        # Content-Length, no Transfer-Encoding, and no Connection value but "keep-alive".
        self._plain_keep_alive = False
        self._close_delimited = False
        self.out_mode = OUT_NONE
        self._upgrade = b""
        self._out: list[bytes] | None = None
        self._tunnel_rest = b""

    # ---- asyncio protocol interface ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._write = transport.write  # type: ignore[attr-defined]
        self.pool.context.connections.add(self)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == TUNNEL:
            client = self.client
            if client is not None and client.send(data):
                client.tunnel_activity()
                if self.req is not None:
                    self.req.bytes_out += len(data)
            return
        req = self.req
        if req is None or state == BODY_PENDING:
            # Bytes on an idle connection, or after the answer to a request still being sent:
            # the member broke framing or is closing. Never reuse.
            if state == BODY_PENDING:
                self._lose_pending_body()
            else:
                self._abandon()
            return
        # One clock reading for the exchange's end too (a Python call and a float each).
        now = self.pool.time()
        self.deadline = now + self.pool.response_timeout
        self._received = True
        if self._body_left:
            self._pass_body(data, now)
            return
        if self._in_head:
            raw = self._raw
            self._raw = raw + data if raw else data
        out: list[bytes] = []
        self._out = out
        stopped_at_head = at_body = too_large = past = bad_switch = False
        try:
            self._feed(data)
        except httptools.HttpParserUpgrade as e:
            self._tunnel_rest = data[e.args[0]:]
        except httptools.HttpParserCallbackError as e:
            if isinstance(e.__context__, _StopAtBody):
                at_body = True
            elif isinstance(e.__context__, _StopAtHead):
                stopped_at_head = True
            elif isinstance(e.__context__, _HeadTooLarge):
                too_large = True
            elif isinstance(e.__context__, _PastTheResponse):
                past = True
            elif isinstance(e.__context__, _BadSwitch):
                bad_switch = True
            else:
                raise
        except httptools.HttpParserError as e:
            self._flush(out)
            self._fail(f"invalid response: {e}")
            return
        if req.response_started and not req.first_byte:
            req.first_byte = now
        if at_body:
            self._start_body(data, out, now)
            return
        self._flush(out)
        if bad_switch:
            self._fail("101 Switching Protocols to a protocol the client did not ask for")
            return
        if too_large or (self._in_head
                         and len(self._raw) - self._head_start > MAX_RESPONSE_HEAD):
            self._fail(f"response head over {MAX_RESPONSE_HEAD} bytes")
            return
        if stopped_at_head:
            # Anything past the head would be a body the member should not have sent.
            keep = self.parser.should_keep_alive() and data.endswith(b"\r\n\r\n")
            self._new_parser()
            self._finish(keep, now)
        elif self.state == TUNNEL:
            self._start_tunnel()
        elif self._message_done:
            ended = data.endswith(self._body_tail or b"\r\n\r\n")   # nothing past it
            self._finish(self._keep_alive and not past and ended, now)
        elif self.out_mode == OUT_RAW and self._final and not self._interim:
            # The rest of the body needs no parsing: count it through.
            self._body_left = self._length - self._body_seen
            self._keep_alive = self._plain_keep_alive or self.parser.should_keep_alive()
            self._pump_if_long()

    def _start_body(self, data: bytes, out: list[bytes], now: float) -> None:
        """llhttp stopped at the end of a long Content-Length body's head (`_StopAtBody`):
        the head and what of the body came with it leave in one write, the body as a view
        of the read (through the parser it would be copied once into a new object, and once
        more joined to the head: for a read of 256 kB, two copies into fresh memory, whose
        page faults cost more than the copies). The rest is counted through as it comes
        (`_pass_body`, or the pump when it is long)."""
        self._out = None
        self._keep_alive = self._plain_keep_alive or self.parser.should_keep_alive()
        self._body_left = self._length
        start = len(data) - self._past_head
        n = self._counted(self._past_head)
        client = self.client
        if client is not None:
            if n:
                pieces: list[bytes | memoryview] = [*out, memoryview(data)[start:start + n]]
                sent = client.send_pieces(pieces)
            else:
                sent = client.send_pieces(out)
            req = self.req
            if sent:
                self._to_client = True
                if req is not None:
                    req.bytes_out += n + sum(len(piece) for piece in out)
        if self._body_left == 0:
            self._body_ended(over=n < self._past_head, now=now)
        else:
            self._pump_if_long()

    def _pump_if_long(self) -> None:
        """The rest of a long Content-Length body comes through the pump (_BodyPump)."""
        if self._body_left >= PUMP_FROM and self.transport is not None:
            self.transport.set_protocol(cast("asyncio.BaseProtocol", _BodyPump(self)))

    def _counted(self, n: int) -> int:
        """Counts `n` bytes of a Content-Length body through, as they go to the client
        without the parser; returns how many of them are the body's."""
        left = self._body_left
        if n > left:
            n = left
        self._body_left = left - n
        return n

    def _body_ended(self, over: bool, now: float) -> None:
        """A body counted through has ended. Bytes that came past it (`over`) break
        framing: they are cut, and the connection is not reused."""
        self._new_parser()              # the old one is mid-body, or stopped at its head
        self._message_done = True
        self._finish(self._keep_alive and not over, now)

    def pumped(self, n: int) -> None:
        """`n` body bytes came into the pump's buffer (see _BodyPump): to the client from
        there. What comes past the body breaks framing: cut, and no reuse."""
        now = self.pool.time()
        self.deadline = now + self.pool.response_timeout
        buffer = PUMP_BUFFER
        got = n
        n = self._counted(n)
        client = self.client
        if client is not None and client.send(buffer.view[:n]):
            self._to_client = True
            if self.req is not None:
                self.req.bytes_out += n
            if client.buffered():
                buffer.renew()          # queued for a slow client: the bytes are its now
        if self._body_left == 0:
            if self.transport is not None:
                self.transport.set_protocol(cast("asyncio.BaseProtocol", self))
            self._body_ended(over=n < got, now=now)

    def _new_parser(self) -> None:
        parser = self.parser = httptools.HttpResponseParser(self)
        self._feed = parser.feed_data

    def _pass_body(self, data: bytes, now: float) -> None:
        """Body bytes of a Content-Length response, after its first read: to the client as
        they came. What comes past the body breaks framing: cut, and no reuse."""
        n = self._counted(len(data))
        over = n < len(data)
        self._flush([data[:n] if over else data])
        if self._body_left == 0:
            self._body_ended(over, now)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        was = self.state
        self.to(CLOSED)
        self.pool.context.connections.discard(self)
        if was == IDLE:
            self.pool.forget(self)
            return
        self.pool.open -= 1
        client = self.client
        req = self.req
        if client is None or req is None:
            return
        if was == BODY_PENDING:
            self._lose_pending_body()
        elif was == TUNNEL:
            self.client = self.req = None
            client.tunnel_closed()
        elif self._close_delimited and self._final and not self._message_done:
            # The member ended a close-delimited body: that is the end of the message.
            if self.out_mode == OUT_CHUNKED and client.send(b"0\r\n\r\n"):
                req.bytes_out += 5
            self._message_done = True
            self._finish(reusable=False)
        else:
            why = "connection reset" if exc is not None else "connection closed"
            self._fail(f"{why} before the response was complete"
                       if self.response_started else f"{why} before a response")

    def pause_writing(self) -> None:
        client = self.client
        if client is not None:
            client.pause()

    def resume_writing(self) -> None:
        client = self.client
        if client is not None:
            client.resume()

    # ---- parser callbacks ------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        if self._message_done:
            raise _PastTheResponse()
        self._in_head = False
        req = self.req
        out = self._out
        assert req is not None and out is not None
        status = self._copied_fields()
        if status < 200 and status != 101:
            self._interim = True
            if req.http11:           # an HTTP/1.0 client cannot take interim responses
                out.append(self._head(status, b""))
            return
        self._raw = b""
        self._interim = False
        self._final = True
        self.response_started = True
        req.response_started = True
        req.to(RESPONDING)
        req.status = status
        if status == 101:
            if not req.upgrade or not switch_allowed(req.upgrade_value, self._upgrade):
                raise _BadSwitch()
            self.to(TUNNEL)
            out.append(self._head(status,
                                  b"Connection: upgrade\r\nUpgrade: %s\r\n" % self._upgrade))
            return
        fields = self._fields
        mode = self.out_mode = response_framing(req.method == b"HEAD", status, fields,
                                                req.http11)
        framing = b""
        long_body = mode == OUT_RAW and self._length >= PUMP_FROM
        # Neither length nor chunked from the member: its body ends when it closes.
        self._close_delimited = mode >= OUT_CHUNKED and not fields & F_CHUNKED
        if mode == OUT_CHUNKED:
            framing = b"Transfer-Encoding: chunked\r\n"
        elif mode == OUT_UNTIL_CLOSE:
            req.close_after = True
        if req.set_cookie is not None:
            framing += b"Set-Cookie: " + req.set_cookie + b"\r\n"
        framing += b"X-Request-ID: " + req.request_id + b"\r\n"
        hsts = req.listener.hsts
        if hsts:
            framing += hsts
        if req.close_after:
            framing += b"Connection: close\r\n"
        elif not req.http11:
            framing += b"Connection: keep-alive\r\n"
        out.append(self._head(status, framing))
        if req.method == b"HEAD":
            raise _StopAtHead()
        if long_body:
            raise _StopAtBody()

    def on_body(self, body: bytes) -> None:
        if self._interim or not body:
            return
        self._body_seen += len(body)
        out = self._out
        assert out is not None
        mode = self.out_mode
        if mode == OUT_RAW:
            self._body_tail = body
        if mode == OUT_CHUNKED:
            out += (b"%x\r\n" % len(body), body, b"\r\n")
        elif mode != OUT_NONE:
            out.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._in_head = True        # the next head follows, from `_head_start`
            return
        if self.state == TUNNEL:
            return
        if self.out_mode == OUT_CHUNKED:
            out = self._out
            assert out is not None
            out.append(b"0\r\n\r\n")
        # Read here: once the callback returns, llhttp resets the flags it is computed from.
        self._keep_alive = self._plain_keep_alive or self.parser.should_keep_alive()
        self._message_done = True

    # ---- building and sending --------------------------------------------------------------

    def _copied_fields(self) -> int:
        """Returns the status of the response head just read (`_raw` from `_head_start`, all
        of it there since llhttp has read it) and sets `_copied`: its field lines that the
        client gets, each "Name: value\\r\\n": all but the hop-by-hop ones and those its
        Connection field names, and Content-Length on a 204 (RFC 9110 8.6). Notes the
        framing fields, the Upgrade value, and whether the head keeps the connection alive.

        A walk over the bytes (compiled, a byte an iteration is a few instructions), a look
        at each line's first byte, and the kept runs of lines sliced out whole: no bytes
        object per line, and no find() (~500 instructions a call: a format-string parse)."""
        raw = self._raw
        i: i64 = self._head_start
        self._upgrade = b""
        while raw[i] == 13 or raw[i] == 10:     # empty lines before the status line
            i += 1
        # The status line (ours replaces it). llhttp took "HTTP/d.d SP 3DIGIT": when the
        # bytes have that shape the digits are its status, else it is asked.
        if (raw[i + 8] == 32 and 48 <= raw[i + 9] <= 57 and 48 <= raw[i + 10] <= 57
                and 48 <= raw[i + 11] <= 57):
            status = (raw[i + 9] - 48) * 100 + (raw[i + 10] - 48) * 10 + raw[i + 11] - 48
        else:
            status = self.parser.get_status_code()
        http11 = raw[i + 5] == 49 and raw[i + 7] == 49          # 1.1
        while raw[i] != 13:
            i += 1
        i += 2
        head_from = self._head_start
        keep_from: i64 = i
        kept = b""
        runs: list[bytes] | None = None
        named: list[bytes] | None = None
        flags = 0
        other_connection = False        # a Connection value but "keep-alive"
        req = self.req
        hsts = req.listener.hsts if req is not None else b""
        while True:
            at = i
            first = raw[i]
            if first == 13:                     # the empty line that ends the head
                break
            while raw[i] != 13:
                i += 1
            i += 2
            first |= 0x20
            drop = False
            if first == 0x63:                                       # c
                if is_name(raw, at, b"content-length"):
                    flags |= F_LENGTH
                    self._length = length_value(raw, at + 15, i - 2)
                elif is_name(raw, at, b"connection"):
                    drop = True
                    # nginx's, on every response, names no field: no need to look inside
                    if i - at != 24 or not equals_at(raw, at, b"Connection: keep-alive"):
                        other_connection = True
                        tokens = connection_named(field_value(raw, at + 11, i - 2))
                        if tokens:
                            named = (named or []) + tokens
            elif first == 0x74:                                     # t
                if is_name(raw, at, b"transfer-encoding"):
                    flags |= F_CHUNKED
                    drop = True
                else:
                    drop = is_name(raw, at, b"te") or is_name(raw, at, b"trailer")
            elif first == 0x75:                                     # u
                if is_name(raw, at, b"upgrade"):
                    self._upgrade = field_value(raw, at + 8, i - 2)
                    drop = True
            elif first == 0x6B:                                     # k
                drop = is_name(raw, at, b"keep-alive")
            elif first == 0x70:                                     # p
                drop = is_name(raw, at, b"proxy-connection")
                other_connection = other_connection or drop     # llhttp reads it too
            elif first == 0x78:                                     # x
                drop = is_name(raw, at, b"x-request-id")        # ours goes back instead
            elif first == 0x73 and hsts:                            # s
                drop = is_name(raw, at, b"strict-transport-security")   # the listener's
            if drop:
                if at > keep_from:
                    kept, runs = kept_run(kept, runs, raw, keep_from, at)
                keep_from = i
        if i - head_from > MAX_RESPONSE_HEAD:
            raise _HeadTooLarge()
        if i > keep_from:
            kept, runs = kept_run(kept, runs, raw, keep_from, i)
        self._past_head = len(raw) - (i + 2)
        if status < 200:
            self._head_start = i + 2            # an interim response: the next head follows
        self._fields = flags
        self._plain_keep_alive = http11 and flags == F_LENGTH and not other_connection
        if status == 204 and flags & F_LENGTH:
            named = (named or []) + [b"content-length"]
        copied = joined_runs(kept, runs)
        if named is not None:
            copied = without_fields(copied, named)
        self._copied = copied
        return status

    def _head(self, status: int, framing: bytes) -> bytes:
        """The response head for the client: the copied fields between our status line and
        our framing."""
        line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, reason(status))
        return b"%s%s%s\r\n" % (line, self._copied, framing)

    def _flush(self, out: list[bytes]) -> None:
        self._out = None
        if not out:
            return
        self._to_client = True
        client = self.client
        if client is None:
            return
        n = len(out)
        req = self.req
        if n == 1:
            data = out[0]
        elif n == 2:                    # a head and its body: a concatenation, no join
            data = out[0] + out[1]
        elif n < 8:
            # A few small pieces (a head and a short body): one joined write is cheaper
            # in the kernel than a writev of them; big bodies keep their zero-copy path.
            data = b"".join(out)
        else:
            if client.send_pieces(out) and req is not None:
                req.bytes_out += sum(len(piece) for piece in out)
            return
        if client.send(data) and req is not None:
            req.bytes_out += len(data)

    # ---- what the client side may call (proxy/downstream.py's rules) ----------------------

    @property
    def body_pending(self) -> bool:
        """Its response went out whole, and it is still being sent the request's body."""
        return self.state == BODY_PENDING

    def to(self, state: int) -> None:
        """Move to `state`, as CONNECTION_NEXT allows."""
        if not (CONNECTION_NEXT[self.state] >> state) & 1:
            illegal_transition(f"member connection to {self.pool.member.name}: "
                               f"{CONNECTION_STATES[self.state]} -> "
                               f"{CONNECTION_STATES[state]} is not a transition")
        self.state = state

    def send(self, data: bytes) -> None:
        """Write request bytes to the member (nothing once it is closed)."""
        if self.transport is not None and self.state != CLOSED:
            self._write(data)

    def send_pieces(self, pieces: list[bytes]) -> None:
        transport = self.transport
        if transport is not None and self.state != CLOSED:
            if len(pieces) == 1:
                self._write(pieces[0])
            else:
                transport.writelines(pieces)

    def detach(self) -> None:
        """The client side leaves this exchange (it closed, or refused the request): the
        connection closes without reuse."""
        self.client = self.req = None
        self._abandon()

    def release(self) -> None:
        """Opened for a client that left meanwhile: kept for the next exchange."""
        self.pool.release(self)

    def attach(self, client: Downstream, req: Exchange, now: float) -> None:
        """A new exchange. (`_interim`, `_keep_alive`, `_close_delimited`, `out_mode`,
        `_fields`, `_copied` and `_length` are set before they are read.)"""
        self.to(EXCHANGE)
        self.client = client
        self.req = req
        self._raw = b""
        self._head_start = 0
        self._in_head = True
        self._final = False
        self._message_done = False
        self._body_seen = 0
        self._body_left = 0
        self._body_tail = b""
        self._received = False          # any byte from the member for this exchange
        self._to_client = False         # any byte of this exchange passed to the client
        self.response_started = False
        self.deadline = now + self.pool.response_timeout

    def _start_tunnel(self) -> None:
        client = self.client
        assert client is not None
        rest = self._tunnel_rest
        self._tunnel_rest = b""
        self.deadline = 0.0
        client.start_tunnel(self, rest)

    # ---- the end of an exchange ------------------------------------------------------------

    def _finish(self, reusable: bool, now: float = -1.0) -> None:
        """The exchange is over (`now` is the loop's time if the caller has read it)."""
        client, req = self.client, self.req
        if (req is not None and client is not None and not req.body_done and reusable
                and req.status < 400 and self.state != CLOSED):
            # The member answered before it had the whole request, as nginx does when it
            # reads and discards a body: keep sending it the rest; the connection goes back
            # to the pool once the request is sent (`request_sent`).
            self.to(BODY_PENDING)
            self.deadline = 0.0         # the client's body_timeout covers a slow sender now
            client.response_done(req, now)
            return
        self.client = self.req = None
        if self.paused:
            self.resume_reading()
        if req is not None and not req.body_done:
            reusable = False    # the member answered before it had the whole request
        if reusable and self.state != CLOSED:
            self.pool.release(self, now)
        else:
            self._abandon()
        if client is not None and req is not None:
            client.response_done(req, now)

    def request_sent(self) -> None:
        """The rest of a request answered early has been sent: the connection is free."""
        self.client = self.req = None
        if self.state != CLOSED:
            self.pool.release(self)

    def _lose_pending_body(self) -> None:
        """The member closed, or spoke, while it was still being sent an answered request's
        body: that body has nowhere to go, and the connection cannot be trusted again."""
        client, req = self.client, self.req
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
        if self.transport is not None and self.state != CLOSED:
            self.transport.abort()

    def on_timeout(self) -> None:
        if self.state == BODY_PENDING:
            self._lose_pending_body()
            return
        if self.state == IDLE:
            self.transport.close() if self.transport is not None else None
            return
        self._fail(f"no response within {self.pool.response_timeout:g}s", status=504)

    def pause_reading(self) -> None:
        if self.transport is not None and self.state != CLOSED:
            self.paused = True
            self.transport.pause_reading()
            self.deadline = 0.0     # a client that reads slowly is not the member's fault

    def resume_reading(self) -> None:
        self.paused = False
        if self.transport is not None and self.state != CLOSED:
            self.transport.resume_reading()
            if self.state != TUNNEL:
                self.deadline = self.pool.time() + self.pool.response_timeout


class PumpBuffer:
    """The buffer long bodies are read into and written from (one per process: it is only
    filled and written within one read callback), replaced when a slow client's transport
    keeps the bytes queued."""

    __slots__ = ("view",)

    def __init__(self) -> None:
        self.view = memoryview(bytearray(PUMP_SIZE))

    def renew(self) -> None:
        self.view = memoryview(bytearray(PUMP_SIZE))


PUMP_BUFFER: Final = PumpBuffer()


class _BodyPump:
    """The member connection's protocol while the rest of a long Content-Length body passes
    (from PUMP_FROM bytes): a buffered protocol, so uvloop reads into PUMP_BUFFER and the
    body is copied by the kernel only; otherwise every read is a new bytes object, a copy of
    each body byte in user space. The connection takes its transport back at the body's end."""

    __slots__ = ("conn",)

    def __init__(self, conn: UpstreamConnection) -> None:
        self.conn = conn

    def get_buffer(self, sizehint: int) -> memoryview:
        return PUMP_BUFFER.view

    def buffer_updated(self, nbytes: int) -> None:
        self.conn.pumped(nbytes)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()


class UpstreamPool:
    """The kept-alive connections to one member, reused last-in first-out."""

    __slots__ = ("connect_timeout", "context", "idle", "idle_timeout", "max_idle", "member",
                 "open", "private", "response_timeout", "send_proxy", "server_name", "time",
                 "tls")

    def __init__(self, context: ProxyContext, member: Member, connect_timeout: float,
                 response_timeout: float, idle_timeout: float, max_idle: int) -> None:
        self.context = context
        self.time = context.time
        self.member = member
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.idle_timeout = idle_timeout
        self.max_idle = max_idle
        self.idle: list[UpstreamConnection] = []
        self.open = 0
        self.tls: ssl.SSLContext | None = None     # [pools.tls]: HTTPS to the member
        self.server_name = ""                   # verified and sent as SNI ("": its address)
        self.send_proxy = 0                     # 1, 2: the PROXY protocol version sent first
        # Idle connections that client connections keep for themselves (send_proxy): closed
        # with the others when the member may take no more.
        self.private: set[UpstreamConnection] = set()

    def acquire(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.state != CLOSED:
                conn.reused = True
                return conn
        return None

    def release(self, conn: UpstreamConnection, now: float = -1.0) -> None:
        owner = conn.owner
        if owner is not None:
            if self.member.eligible and owner.keep(conn):
                conn.to(IDLE)
                self.private.add(conn)
            elif conn.transport is not None:
                conn.transport.close()
            return
        if not self.member.eligible or len(self.idle) >= self.max_idle:
            conn.transport.close() if conn.transport is not None else None
            return
        conn.to(IDLE)
        conn.deadline = (now if now >= 0.0 else self.time()) + self.idle_timeout
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.open -= 1
        if conn.owner is not None:
            self.private.discard(conn)
            return
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def close_idle(self) -> None:
        for conn in [*self.idle, *self.private]:
            if conn.transport is not None:
                conn.transport.close()

    def connect(self, client: Downstream, req: Exchange, proxy_header: bytes = b"") -> None:
        """Open a new connection for `req`; the client hears back either way. With a
        `proxy_header`, it opens the connection, which is then that client's own."""
        self.open += 1
        self.context.loop.create_task(self._connect(client, req, proxy_header))

    async def _connect(self, client: Downstream, req: Exchange, proxy_header: bytes) -> None:
        loop = self.context.loop
        member = self.member
        try:
            # No Python base class (see client_protocol): uvloop only calls its methods.
            tls = self.tls
            connecting: Any
            if proxy_header:
                connecting = self._connect_with_header(proxy_header, client)
            else:
                connecting = loop.create_connection(
                    lambda: cast(asyncio.Protocol, UpstreamConnection(self)), member.address,
                    member.port, ssl=tls,
                    server_hostname=(self.server_name or member.address) if tls else None)
            _, proto = await asyncio.wait_for(connecting, self.connect_timeout)
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

    async def _connect_with_header(self, header: bytes, owner: Downstream,
                                   ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Connect, send the PROXY header, then speak HTTP (over TLS, which begins after
        the header: the member's PROXY reader sees it first)."""
        loop = self.context.loop
        member = self.member
        infos = await loop.getaddrinfo(member.address, member.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            await loop.sock_sendall(sock, header)
            tls = self.tls
            return await loop.create_connection(
                lambda: cast(asyncio.Protocol, UpstreamConnection(self, owner)), sock=sock,
                ssl=tls, server_hostname=(self.server_name or member.address) if tls else None)
        except BaseException:
            sock.close()
            raise

