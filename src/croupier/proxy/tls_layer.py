"""TLS of croupier's own, behind the client connection: the record layer over memory BIOs
(`ssl.SSLObject`), between the TCP transport and an unchanged `ClientConnection`.

Rules kept here:
- The client connection sees a transport (`TlsTransport`) with the methods it uses of a TCP
  one, and is made (`connection_made`) once the handshake is done, as with uvloop's own.
- A handshake that fails is counted by its reason; one not done within handshake_timeout is
  cut; bytes that are not a TLS handshake (plain HTTP to a TLS port) get a plain 400 and a
  close, as nginx answers.
- Closing sends close_notify; `write_eof` sends it and shuts TCP writes, so lingering close
  works under TLS as it does in plain.
"""

from __future__ import annotations

import asyncio
import asyncio.transports  # mypyc names the base class's module: it must be imported
import contextlib
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from mypy_extensions import mypyc_attr

from croupier.proxy.client import ClientConnection

if TYPE_CHECKING:
    from croupier.proxy.listener import Listener

# A record's plaintext is at most 16 KiB. A read allocates its size first: 256 KiB would be an
# mmap and munmap a read (past malloc's threshold), which cost a third of tls-small.
READ_SIZE: Final = 16384
PLAIN_TO_TLS: Final = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                       b"Content-Length: 48\r\nConnection: close\r\n\r\n"
                       b"croupier: plain HTTP was sent to an HTTPS port.\n")


def _unconnected(data: bytes) -> None:
    pass


class TlsLayer:
    """The protocol of a TLS listener's TCP connection."""

    __slots__ = ("_decrypt", "_encrypt", "_feed", "_sealed", "_send", "app", "client", "first",
                 "handshaking", "incoming", "listener", "obj", "outgoing", "raw", "records",
                 "shut", "timer", "transport")

    def __init__(self, listener: Listener) -> None:
        tls = listener.tls
        assert tls is not None
        self.listener = listener
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = tls.context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        # The C object under ssl.SSLObject: its read and write are each a Python frame
        # around this one's, on every record both ways (a tenth of tls-small's CPU).
        self.records: Any = self.obj._sslobj  # type: ignore[attr-defined]
        # Their methods, bound once: a call by name on an object mypyc does not know looks
        # the method up on every call, several times a request.
        self._decrypt: Callable[[int], bytes] = self.records.read
        self._encrypt: Callable[[Any], int] = self.records.write
        self._feed: Callable[[bytes], int] = self.incoming.write
        self._sealed: Callable[[], bytes] = self.outgoing.read
        self._send: Callable[[bytes], None] = _unconnected
        self.app = ClientConnection(listener)
        self.transport: TlsTransport | None = TlsTransport(self)
        self.raw: asyncio.Transport | None = None
        self.handshaking = True
        self.first = True
        self.shut = False               # close_notify sent: nothing more is decrypted
        self.client: tuple[bytes, int] | None = None    # from a PROXY header
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = cast(asyncio.Transport, transport)
        self._send = self.raw.write
        tls = self.listener.tls
        assert tls is not None
        self.timer = self.listener.context.loop.call_later(tls.config.handshake_timeout,
                                                           self._too_slow)

    def _too_slow(self) -> None:
        self.timer = None
        if self.handshaking and self.raw is not None:
            self.listener.context.count_tls_failure("timeout")
            self.raw.abort()

    def data_received(self, data: bytes) -> None:
        if self.shut:                           # lingering: read and dropped, not decrypted
            return
        if self.handshaking:
            if self.first and data:
                self.first = False
                if data[0] != 0x16:             # a TLS connection opens with a handshake
                    self._plain(data)
                    return
            self._feed(data)
            if not self._handshake():
                return
        else:
            self._feed(data)
        records = self.records
        incoming = self.incoming
        decrypt = self._decrypt
        app = self.app
        while True:
            try:
                chunk = decrypt(READ_SIZE)
            except ssl.SSLWantReadError:        # a record cut by the end of the read
                break
            except ssl.SSLZeroReturnError:      # close_notify: the client is done sending
                self.flush()
                if not app.eof_received() and self.raw is not None:
                    self.raw.close()
                return
            except ssl.SSLError:
                if self.raw is not None:
                    self.raw.abort()
                return
            if not chunk:
                break
            app.data_received(chunk)
            if self.shut:                       # it answered and closed: no more reading
                return
            # Nothing left to decrypt: stop here rather than by SSLWantReadError, an
            # exception a request otherwise.
            if not incoming.pending and not records.pending():
                break
        if self.outgoing.pending:               # TLS 1.3 tickets, key updates
            self.flush()

    def _handshake(self) -> bool:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self.flush()
            return False
        except ssl.SSLError as e:
            self.listener.context.count_tls_failure(e.reason or type(e).__name__)
            self.flush()                        # the alert
            if self.raw is not None:
                self.raw.close()
            return False
        self.handshaking = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.flush()
        assert self.transport is not None
        self.app.connection_made(self.transport)
        if self.client is not None:
            self.app.use_client_address(self.client[0], self.client[1])
        return True

    def _plain(self, data: bytes) -> None:
        self.listener.context.count_tls_failure("plain HTTP")
        if self.raw is not None:
            self.raw.write(PLAIN_TO_TLS)
            self.raw.close()

    def flush(self) -> None:
        data = self._sealed()
        if data and self.raw is not None:
            self._send(data)

    def eof_received(self) -> bool | None:
        if self.handshaking:
            return False
        return self.app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.raw = None
        if not self.handshaking:
            self.app.connection_lost(exc)
        # The layer and its transport point at each other: let go, so both are freed when
        # the last reference goes, not by a collection of the cyclic GC a few hundred
        # connections later (which each closed connection would bring nearer).
        self.transport = None

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()


@mypyc_attr(native_class=False)
class TlsTransport(asyncio.Transport):
    """What the client connection writes to: plaintext in, records out. (A transport by
    class, as the client connection's typed attribute requires: not a native class.)"""

    def __init__(self, layer: TlsLayer) -> None:
        super().__init__()
        self.layer = layer

    def write(self, data: bytes | bytearray | memoryview) -> None:
        layer = self.layer
        if layer.raw is None:
            return
        layer._encrypt(data)
        layer.flush()

    def writelines(self, pieces: Any) -> None:
        layer = self.layer
        if layer.raw is None:
            return
        # One record for them all (a head and its body): each record is its own encryption
        # call and 22 bytes more on the wire, for us and for the client to open.
        layer._encrypt(b"".join(pieces))
        layer.flush()

    def _notify(self) -> None:
        layer = self.layer
        layer.shut = True
        with contextlib.suppress(ssl.SSLError):      # WantRead: theirs has not come yet
            layer.obj.unwrap()                  # close_notify
        layer.flush()

    def close(self) -> None:
        layer = self.layer
        if layer.raw is not None and not layer.raw.is_closing():
            self._notify()
            layer.raw.close()

    def abort(self) -> None:
        if self.layer.raw is not None:
            self.layer.raw.abort()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        layer = self.layer
        if layer.raw is not None:
            self._notify()
            layer.raw.write_eof()

    def is_closing(self) -> bool:
        raw = self.layer.raw
        return raw is None or raw.is_closing()

    def get_write_buffer_size(self) -> int:
        raw = self.layer.raw
        return raw.get_write_buffer_size() if raw is not None else 0

    def pause_reading(self) -> None:
        if self.layer.raw is not None:
            self.layer.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.layer.raw is not None:
            self.layer.raw.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.layer.obj
        raw = self.layer.raw
        return raw.get_extra_info(name, default) if raw is not None else default


def tls_protocol(listener: Listener) -> Any:
    """The protocol factory of a TLS listener's server (see client_protocol)."""
    return lambda: cast(asyncio.Protocol, TlsLayer(listener))
