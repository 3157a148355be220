"""The access log: one line an exchange, written when it ends (Exchange.finish), nowhere else.

Rules kept here:
- Per request: no `logging` call, no `json.dumps`, no syscall. The line is one join of
  about twenty pieces, most of them made once: the time is a prefix cached for the current
  second, and with the milliseconds once a millisecond; the client's address and the listener once a
  connection; pool and member once (`_places`); version and status, small numbers and the
  termination code from tables. A join costs ~100 instructions a piece, so fewer pieces is
  what makes a line cheap. Strings a client chose (target, user agent, request ID) are
  escaped only when a byte needs it (a compiled scan finds none in almost every line); the
  method (one llhttp knows) and the request ID (checked when taken) need no scan.
- Lines go to a buffer, written in whole-line batches when it holds 64 KiB, and at least
  once a second (`flush`, from the runtime's timeout sweep).
- A file is opened with O_APPEND, so the batches of every worker land whole, as nginx's do.
  A pipe is opened anew (/proc/self/fd/N: a file description of our own, so O_NONBLOCK does
  not leak to whoever shares it) and written in pieces of at most PIPE_BUF bytes, each ending
  a line, so pieces of several workers never interleave. A socket (systemd's journal stream)
  is written with MSG_DONTWAIT. What a pipe or socket cannot take at once is dropped and
  counted (`dropped`): the event loop never waits for a log reader.
- `reopen()` (SIGUSR1, `croupier reopen-logs`) opens the path again, for logrotate.

Termination codes (the last field of a text line; HAProxy's two-letter state
is the anchor): the first letter says who or what ended the exchange, the second at which
stage. `--` is an exchange that ended normally.

| code | meaning |
| --- | --- |
| `--` | complete: the whole response went out (redirect and lookup answers too) |
| `CR` | the client closed before its request was whole |
| `CH` | the client closed while the member had not answered yet |
| `CD` | the client closed while the response was being sent |
| `CT` | a tunnel (WebSocket) closed by the client |
| `cR` | the client was too slow sending its request (408) |
| `cD` | the client left our writes unread past send_timeout (connection cut) |
| `PR` | croupier refused the request: malformed, too large, unsupported (400, 405, 413, 431 ...) |
| `PD` | croupier cut the connection mid-response: the request body broke the rules |
| `PQ` | no member could take the request (503) |
| `SC` | the member refused or failed the connection (502) |
| `sC` | connecting to the member timed out (504) |
| `SH` | the member closed or failed before a whole response head (502) |
| `sH` | the member sent no response in time (504) |
| `SD` | the member closed or failed in the middle of the response body (connection cut) |
| `ST` | a tunnel closed by the member |
| `sT` | a tunnel idle past tunnel_timeout |
"""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import sys
import time
from typing import TYPE_CHECKING, Final

from mypy_extensions import i64

if TYPE_CHECKING:
    from croupier.proxy.exchange import Exchange

BATCH: Final = 65536
PIPE_BUF: Final = 4096              # what a pipe writes whole (POSIX: at least 512; Linux 4096)

KIND_FILE: Final = 0
KIND_PIPE: Final = 1
KIND_SOCKET: Final = 2

# What a field a client chose may not carry raw: controls, DEL, non-ASCII, and the quote and
# backslash that delimit text fields and JSON strings. Escaped where found.
_UNSAFE: Final = re.compile(rb'[\x00-\x1f"\\\x7f-\xff]')
_SMALL_SP: Final = [b"%d " % i for i in range(1000)]       # a text line's numbers
_MILLIS_TEXT: Final = [b".%03dZ " % i for i in range(1000)]
_MILLIS_JSON: Final = [b'.%03dZ","client":"' % i for i in range(1000)]
# Version and status, with what surrounds them: [http11][status].
_STATUS_TEXT: Final = [[b' %s" %d ' % (v, i) for i in range(600)]
                       for v in (b"HTTP/1.0", b"HTTP/1.1")]
_STATUS_JSON: Final = [[b'","version":"%s","status":%d,"pool":"' % (v, i) for i in range(600)]
                       for v in (b"HTTP/1.0", b"HTTP/1.1")]
# A json line's numbers, each with the key after it: [field][n] (about 50 KB a field).
_JSON_AFTER: Final = (b',"bytes_in":', b',"bytes_out":', b',"duration_ms":', b',"connect_ms":',
                      b',"first_byte_ms":', b',"request_id":"')
_JSON_NUM: Final = [[b"%d%s" % (i, after) for i in range(1000)] for after in _JSON_AFTER]
_PLACES_MAX: Final = 4096       # pool and member pieces kept (members come and go on reload)


def _text_escape(m: re.Match[bytes]) -> bytes:
    return b"\\x%02X" % m.group()[0]         # as nginx escapes


def _json_escape(m: re.Match[bytes]) -> bytes:
    c = m.group()[0]
    if c == 0x22:
        return b'\\"'
    if c == 0x5C:
        return b"\\\\"
    return b"\\u%04x" % c                    # a byte, read as Latin-1: valid JSON, lossless


def _unsafe(value: bytes) -> bool:
    """Whether `value` has a byte to escape: a compiled loop, a few instructions a byte (a
    regular expression's search costs ~800 before it reads one)."""
    n: i64 = len(value)
    i: i64 = 0
    while i < n:
        c = value[i]
        if c < 0x20 or c >= 0x7F or c == 0x22 or c == 0x5C:
            return True
        i += 1
    return False


def text_safe(value: bytes) -> bytes:
    return _UNSAFE.sub(_text_escape, value) if _unsafe(value) else value


def json_safe(value: bytes) -> bytes:
    return _UNSAFE.sub(_json_escape, value) if _unsafe(value) else value


def _json_num(field: int, n: int) -> bytes:
    return _JSON_NUM[field][n] if 0 <= n < 1000 else b"%d%s" % (n, _JSON_AFTER[field])


def _num_sp(n: int) -> bytes:
    return _SMALL_SP[n] if 0 <= n < 1000 else b"%d " % n


class AccessLog:
    __slots__ = ("_clock", "_ms", "_places", "_second", "_stamp", "_stamp_ms", "_tail_complete",
                 "_tails", "buffer", "dropped", "fd", "json", "kind", "path", "size", "sock",
                 "written")

    def __init__(self, path: str, json: bool) -> None:
        self.path = path                # "-": standard output
        self.json = json
        self.fd = -1
        self.kind = KIND_FILE
        self.sock: socket.socket | None = None
        self.buffer: list[bytes] = []
        self.size = 0
        self.dropped = 0                # lines a pipe or socket could not take
        self.written = 0                # lines written
        self._second = -1
        self._stamp = b""
        self._clock = 0.0               # wall clock minus the loop's: set by `clock`
        # Pieces made once: pool and member by the member (or pool, or None) they name;
        # the line's end by termination code.
        self._places: dict[object, bytes] = {}
        self._tails: dict[bytes, bytes] = {}
        self._tail_complete = self._tail(b"--")
        self._ms = -1
        self._stamp_ms = b""
        self.open()

    # ---- where lines go ---------------------------------------------------------------------

    def open(self) -> None:
        """Open the path (OSError naming it when it cannot be)."""
        if self.path != "-":
            # O_NONBLOCK: a named pipe nobody reads is refused (ENXIO), not waited on.
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
                              | os.O_NONBLOCK, 0o644)
            self.kind = KIND_PIPE if stat.S_ISFIFO(os.fstat(self.fd).st_mode) else KIND_FILE
            return
        out = sys.stdout.fileno()
        mode = os.fstat(out).st_mode
        if stat.S_ISSOCK(mode):
            self.sock = socket.socket(fileno=os.dup(out))
            self.fd = self.sock.fileno()
            self.kind = KIND_SOCKET
        elif stat.S_ISFIFO(mode):
            self.fd = os.open(f"/proc/self/fd/{out}",
                              os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            self.kind = KIND_PIPE
        else:                           # a terminal or a file: never blocks for long
            self.fd = os.dup(out)
            self.kind = KIND_FILE

    def reopen(self) -> None:
        """logrotate moved the file: write what is buffered to the old one, open the path."""
        self.flush()
        self.close()
        self.open()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        elif self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    # ---- lines --------------------------------------------------------------------------------

    def clock(self, loop_time: float) -> None:
        """Line times are the loop's clock (which the exchange has read) plus this offset,
        set at start and once a second: no clock reading a line."""
        self._clock = time.time() - loop_time

    def _time(self, loop_time: float) -> bytes:
        """RFC 3339 UTC with milliseconds, and what follows up to the client's address: the
        part up to the second made once a second, the whole once a millisecond."""
        ms = int((loop_time + self._clock) * 1000.0)
        if ms != self._ms:
            self._ms = ms
            second = ms // 1000
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S",
                                            time.gmtime(second)).encode()
            if self.json:
                self._stamp_ms = b'{"time":"' + self._stamp + _MILLIS_JSON[ms % 1000]
            else:
                self._stamp_ms = self._stamp + _MILLIS_TEXT[ms % 1000]
        return self._stamp_ms

    def client_piece(self, peer: bytes, port: int, listener: bytes,
                     tls: tuple[bytes, bytes, bytes] | None = None) -> bytes:
        """What follows the time up to the method: made once a connection (see Exchange's
        `log_client`), or a request when a trusted proxy named the client. `tls`: the
        connection's TLS version, cipher and the name the client asked for (SNI)."""
        version, cipher, sni = tls if tls is not None else (b"", b"", b"")
        if self.json:
            return (b'%s","client_port":%d,"listener":"%s","tls_version":"%s","tls_cipher":"%s",'
                    b'"sni":"%s","method":"' % (peer, port, listener, version, cipher,
                                                json_safe(sni)))
        what = b"%s/%s/%s" % (version, cipher, text_safe(sni) or b"-") if tls else b"-"
        return b'%s:%d %s %s "' % (peer, port, listener, what)

    def _place(self, key: object, pool: bytes, member: bytes) -> bytes:
        if self.json:
            piece = b'%s","member":"%s","attempts":' % (pool, member)
        else:
            piece = b"%s %s " % (pool or b"-", member or b"-")
        if len(self._places) >= _PLACES_MAX:
            self._places.clear()
        self._places[key] = piece
        return piece

    def _tail(self, termination: bytes) -> bytes:
        tail = (b'","termination":"%s"}\n' if self.json else b'" %s\n') % termination
        self._tails[termination] = tail
        return tail

    def write(self, ex: Exchange, now: float, place: object, pool: bytes, member: bytes,
              termination: bytes, duration_ms: int, connect_ms: int, first_byte_ms: int
              ) -> None:
        """One line for `ex`. `place` is the member that served it, else its pool, else None:
        the key of its pool-and-member piece."""
        stamp = self._time(now)
        client = ex.log_client or self.client_piece(ex.peer, ex.peer_port,
                                                    ex.listener.name_bytes)
        status = ex.status if 0 <= ex.status < 600 else 0
        version = 1 if ex.http11 else 0
        middle = self._places.get(place)
        if middle is None:
            middle = self._place(place, pool, member)
        tail = self._tail_complete if termination == b"--" else self._tails.get(termination)
        if tail is None:
            tail = self._tail(termination)
        if self.json:
            line = b"".join([
                stamp, client, ex.method, b'","target":"', json_safe(ex.url),
                _STATUS_JSON[version][status], middle, _json_num(0, ex.attempts),
                _json_num(1, ex.bytes_in + ex.body_size), _json_num(2, ex.bytes_out),
                _json_num(3, duration_ms), _json_num(4, connect_ms),
                _json_num(5, first_byte_ms), ex.request_id, b'","user_agent":"',
                json_safe(ex.user_agent), tail])
        else:
            line = b"".join([
                stamp, client, ex.method or b"-", b" ",
                text_safe(ex.url) or b"-", _STATUS_TEXT[version][status], middle,
                _num_sp(ex.attempts), _num_sp(ex.bytes_in + ex.body_size),
                _num_sp(ex.bytes_out), _num_sp(duration_ms), _num_sp(connect_ms),
                _num_sp(first_byte_ms), ex.request_id or b"-", b' "',
                text_safe(ex.user_agent) or b"-", tail])
        self.buffer.append(line)
        self.size += len(line)
        if self.size >= BATCH:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, in whole lines."""
        buffer = self.buffer
        if not buffer or self.fd < 0:
            return
        self.buffer = []
        self.size = 0
        if self.kind == KIND_FILE:
            try:
                os.write(self.fd, b"".join(buffer))
                self.written += len(buffer)
            except OSError:
                self.dropped += len(buffer)
            return
        # A pipe or socket: pieces of at most PIPE_BUF bytes, each ending a line, so that
        # those of several writers never interleave; what cannot go now is dropped.
        piece: list[bytes] = []
        size = 0
        for i, line in enumerate(buffer):
            if size + len(line) > PIPE_BUF and piece:
                if not self._send(b"".join(piece), len(piece)):
                    self.dropped += len(buffer) - i + len(piece)    # this piece and the rest
                    return
                piece = []
                size = 0
            piece.append(line)
            size += len(line)
        if piece and not self._send(b"".join(piece), len(piece)):
            self.dropped += len(piece)

    def _send(self, data: bytes, lines: int) -> bool:
        try:
            if self.sock is not None:
                n = self.sock.send(data, socket.MSG_DONTWAIT)
            else:
                n = os.write(self.fd, data)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                return False
            raise
        # A pipe takes a write of at most PIPE_BUF whole or not at all; a stream socket may
        # take part of it: the line it cut is lost, the rest counted dropped.
        if n < len(data):
            return False
        self.written += lines
        return True

