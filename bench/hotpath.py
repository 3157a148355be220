"""CPU time of croupier's own per-request code, without the kernel: a keep-alive GET relayed
from a client connection to a kept-alive member connection and its answer relayed back, with
both sockets replaced by in-memory transports, so only the Python (and parser) work is timed.

Steadier than any socket benchmark on a shared machine, so it shows changes of a few hundred
nanoseconds; `make bench` remains the measure that counts.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--profile] [--access-log text] [--tls]

--close makes each request a connection of its own, as the `close` case of `make bench` does:
made, a request with "Connection: close" relayed, closed (uvloop's own accept is not in it).

--tls relays over a TLS listener (croupier's TLS layer, a real ECDSA certificate) from an
in-memory TLS client: the figure then holds the client's encryption of each request and
decryption of each response too, the same for every build compared.

It runs whichever build is installed (compiled by default, see setup.py); cProfile sees
nothing inside compiled code, so profile an interpreted copy (PYTHONPATH=a copy of src
without its .so files) or count instructions, which is exact whatever the machine is doing:

    valgrind --tool=callgrind .venv/bin/python bench/hotpath.py --requests 20000 --rounds 1
    (and again with --requests 1: the difference / 20,000 is the cost of one request)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

from croupier.config.load import validate_config
from croupier.proxy.client import ClientConnection
from croupier.proxy.tls_layer import TlsLayer
from croupier.proxy.upstream import UpstreamConnection
from croupier.runtime import app
from croupier.runtime.server import Balancer

REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nUser-Agent: wrk\r\n"
           b"Accept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 24 Nov 2026 10:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 19\r\nConnection: keep-alive\r\n\r\n"
            b"hello from backend\n")


class MemoryTransport(asyncio.Transport):
    """Keeps the last bytes written; the relay under test never knows it is not a socket."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += len(data)
        if self.keep is not None:
            self.keep.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    keep: list[bytes] | None = None     # what was written, where a test reads it back

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


def build(loop: asyncio.AbstractEventLoop, access_log: str | None = None,
          tls: dict[str, Any] | None = None) -> ClientConnection:
    log = {"access_log": {"path": "/dev/null", "format": access_log}} if access_log else {}
    extra = {"tls": tls} if tls else {}
    loaded = validate_config({
        **log,
        "workers": 1,
        "admin": {"enabled": False},
        "listeners": [{"name": "web", "listen": "127.0.0.1:18080", "pool": "app", **extra}],
        "pools": [{"name": "app",
                   "members": ["127.0.0.1:19101", "127.0.0.1:19102", "127.0.0.1:19103"]}],
    })
    balancer = app.build(Balancer, loaded, loop)
    listener = next(balancer.listeners_for(loaded))
    for pool in balancer.pools.values():
        for member in pool.members:
            upstream = member.upstream
            assert upstream is not None
            conn = UpstreamConnection(upstream)
            conn.connection_made(MemoryTransport())
            upstream.open += 1
            upstream.release(conn)
    client = ClientConnection(listener)
    client.connection_made(MemoryTransport())
    return client    # it holds the listener, which holds the balancer


class TlsRelay:
    """A TLS listener's connection (TlsLayer over an in-memory transport) and an in-memory
    TLS client that has done its handshake with it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, access_log: str | None) -> None:
        tmp = Path(tempfile.mkdtemp())
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-keyout", str(tmp / "k.pem"), "-out",
                        str(tmp / "c.pem")], check=True, capture_output=True)
        client = build(loop, access_log, {"certificates": [
            {"cert": str(tmp / "c.pem"), "key": str(tmp / "k.pem")}]})
        self.layer = TlsLayer(client.listener)
        self.raw = MemoryTransport()
        self.raw.keep = []
        self.layer.connection_made(self.raw)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.into, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.into, self.out, server_hostname="localhost")
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.layer.data_received(self.out.read())
                self.into.write(self.taken())
        self.layer.data_received(self.out.read())       # its Finished

    def taken(self) -> bytes:
        keep = self.raw.keep
        assert keep is not None
        data = b"".join(keep)
        keep.clear()
        return data

    def relay(self, n: int) -> None:
        layer, obj, out, into = self.layer, self.obj, self.out, self.into
        request, response = REQUEST, RESPONSE
        for _ in range(n):
            obj.write(request)
            layer.data_received(out.read())
            req = layer.app.current
            assert req is not None and req.sink is not None, "the request was not sent on"
            req.sink.data_received(response)
            into.write(self.taken())
            got = b""
            with_more = True
            while with_more:
                try:
                    got += obj.read(65536)
                except ssl.SSLWantReadError:
                    with_more = False
            assert got.endswith(b"hello from backend\n"), got
        assert layer.app.current is None, "the response was not passed on"


CLOSE_REQUEST = REQUEST.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")


def relay_connections(client: ClientConnection, n: int) -> None:
    """n connections of one request each, made and closed as uvloop would."""
    listener = client.listener
    for _ in range(n):
        conn = ClientConnection(listener)
        transport = MemoryTransport()
        conn.connection_made(transport)
        conn.data_received(CLOSE_REQUEST)
        req = conn.current
        assert req is not None and req.sink is not None, "the request was not sent on"
        req.sink.data_received(RESPONSE)
        assert transport.closed, "the connection was not closed after its answer"
        conn.connection_lost(None)


def relay(client: ClientConnection, n: int) -> None:
    request, response = REQUEST, RESPONSE
    for _ in range(n):
        client.data_received(request)
        req = client.current
        assert req is not None and req.sink is not None, "the request was not sent on"
        req.sink.data_received(response)
    assert client.current is None, "the response was not passed on"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="cProfile one round instead")
    ap.add_argument("--tls", action="store_true", help="over a TLS listener (see above)")
    ap.add_argument("--close", action="store_true", help="a connection a request (see above)")
    ap.add_argument("--access-log", choices=["text", "json"],
                    help="write an access log line a request (to /dev/null)")
    args = ap.parse_args()
    loop = uvloop.new_event_loop()     # as croupier runs: its clock is C
    if args.tls:
        tls = TlsRelay(loop, args.access_log)

        def run(n: int) -> None:
            tls.relay(n)
    elif args.close:
        client = build(loop, args.access_log)

        def run(n: int) -> None:
            relay_connections(client, n)
    else:
        client = build(loop, args.access_log)

        def run(n: int) -> None:
            relay(client, n)
    run(1000)                   # warm up (and check the path works)
    if args.profile:
        prof = cProfile.Profile()
        prof.runcall(run, args.requests)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(30)
        return
    per = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        run(args.requests)
        per.append((time.process_time() - t0) / args.requests * 1e6)
    print(f"hot path: {statistics.median(per):.2f} us per request "
          f"(median of {args.rounds} x {args.requests}; min {min(per):.2f}, max {max(per):.2f})")


if __name__ == "__main__":
    main()
