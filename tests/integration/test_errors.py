"""Errors and limits: every bad shape gets its status and a closed connection; nothing leaks."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import httpx
import pytest
from helpers import RawBackend, dead_port, proxy_config, raw_request, read_response, wait_until


def _in_flight(c):
    return c.state(lambda: [m.in_flight for p in c.balancer.pools.values() for m in p.members])


def _status(out: bytes) -> int:
    return int(out.split(b" ", 2)[1])


def test_dead_member_gives_502_naming_pool_and_member(croupier):
    with dead_port() as port:
        c = croupier(proxy_config([f"127.0.0.1:{port}"]))
        r = httpx.get(c.url())
    assert r.status_code == 502
    assert "pool 'app'" in r.text and f"127.0.0.1:{port}" in r.text and "refused" in r.text
    assert _in_flight(c) == [0]
    assert c.state(lambda: c.member("app", 0).failures) == 1


def test_no_eligible_member_gives_503_with_retry_after(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    member = c.member("app", 0)

    def down():
        member.health = "down"
        member.pool.refresh()
    c.state(down)
    r = httpx.get(c.url())
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert "pool 'app'" in r.text and "1 down" in r.text
    assert backends[0].requests == 0


def test_slow_member_gives_504(backends, croupier):
    c = croupier(proxy_config([backends[0].address],
                              pool_options={"response_timeout": "300ms"}))
    r = httpx.get(c.url("/slow?delay=3"))
    assert r.status_code == 504
    assert "no response within 0.3s" in r.text
    assert _in_flight(c) == [0]
    # The next request is served normally on a fresh connection.
    assert httpx.get(c.url("/")).text == "a"


def test_hanging_member_that_accepts_but_never_answers_gives_504(backend_loop, croupier):
    async def never(head, writer):
        await asyncio.sleep(3600)
    raw = RawBackend(backend_loop, never)
    c = croupier(proxy_config([raw.address], pool_options={"response_timeout": "300ms"}))
    assert httpx.get(c.url()).status_code == 504
    assert _in_flight(c) == [0]


# A short body, and a long one: past its first read that one passes through croupier's own
# buffer (the member connection's protocol is switched for it).
@pytest.mark.parametrize("declared, sent", [(1000, b"partial"),
                                            (10_000_000, b"p" * 300_000 + b"partial")])
def test_member_that_closes_mid_body_cuts_the_client(backend_loop, croupier, declared, sent):
    async def truncate(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % declared)
        await writer.drain()
        for at in range(0, len(sent), 100_000):
            writer.write(sent[at:at + 100_000])
            await writer.drain()
        writer.close()
    raw = RawBackend(backend_loop, truncate)
    c = croupier(proxy_config([raw.address]))
    out = raw_request(c.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200") and out.endswith(b"\r\n\r\n" + sent)  # cut, not padded
    assert _in_flight(c) == [0]


def test_member_sending_garbage_gives_502(backend_loop, croupier):
    async def garbage(head, writer):
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
    raw = RawBackend(backend_loop, garbage)
    c = croupier(proxy_config([raw.address]))
    r = httpx.get(c.url())
    assert r.status_code == 502 and "invalid response" in r.text


SMUGGLING = {
    "content-length and transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "two content-lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde"),
    "bad chunk size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: x\n\n",
    "transfer-encoding not ending in chunked": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc"),
    "space before colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "content-length with sign": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\nabcd",
    "NUL in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
    "HTTP/1.1 without Host": b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n",
    "bad Host": b"GET / HTTP/1.1\r\nHost: a b/c\r\n\r\n",
    "another protocol (llhttp takes RTSP)": b"GET / RTSP/1.1\r\nHost: x\r\n\r\n",
}
SMUGGLING["an HTTP/2 preface"] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# What the 400 says, in words a client's developer understands (llhttp's own wording, such
# as "Pause on PRI/Upgrade", names its internals).
SMUGGLING_REASONS = {
    "content-length and transfer-encoding": b"Content-Length together with Transfer-Encoding",
    "two content-lengths": b"more than one Content-Length",
    "bad chunk size": b"a malformed chunked body",
    "obs-fold": b"a folded header line (obs-fold)",
    "bare LF": b"lines that do not end with CRLF",
    "transfer-encoding not ending in chunked": b"whose final coding is not chunked",
    "space before colon": b"a malformed header name (a space before the colon",
    "content-length with sign": b"a Content-Length that is not a plain number",
    "NUL in a header": b"a header value with a forbidden character",
    "an HTTP/2 preface": b"an HTTP/2 connection preface: this port speaks HTTP/1.1",
    "two Host headers": b"croupier: more than one Host header",
    "HTTP/1.1 without Host": b"croupier: an HTTP/1.1 request needs a Host header",
    "bad Host": b"croupier: bad Host header",
    "another protocol (llhttp takes RTSP)": b"croupier: not an HTTP request",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_smuggling_shapes_get_400_and_a_closed_connection(name, backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    # Each bad request is followed by a clean one on the same connection: it must not run.
    out = raw_request(c.port, SMUGGLING[name] + b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _status(out) == 400, out
    assert SMUGGLING_REASONS[name] in out, out
    assert b"Connection: close" in out
    assert out.count(b"\r\nHTTP/1.1 ") == 0    # the smuggled second request got nothing
    assert backends[0].requests == 0
    # The next clean request on a new connection is served.
    assert httpx.get(c.url()).text == "a"
    assert _in_flight(c) == [0]


def test_oversized_headers_get_431(backends, croupier):
    c = croupier(proxy_config([backends[0].address], max_header_size="4KiB"))
    big = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n"
    out = raw_request(c.port, big)
    assert _status(out) == 431 and b"Connection: close" in out
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n"
    assert _status(raw_request(c.port, many)) == 431
    assert httpx.get(c.url()).text == "a"


def test_unending_header_is_cut_off_without_buffering_it(backends, croupier):
    """A header that never ends gets 431; croupier then drops what still comes (it never
    buffers it) for at most its linger time, and cuts the connection."""
    c = croupier(proxy_config([backends[0].address], max_header_size="4KiB"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        cut = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                s.sendall(b"a" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
        assert cut, "croupier kept reading an endless header for 30 s"
    assert httpx.get(c.url()).text == "a"
    wait_until(lambda: c.state(lambda: sum(
        1 for x in c.balancer.connections if type(x).__name__ == "ClientConnection")) == 0,
        message="the cut connection to be released")


def test_body_over_limit_gets_413(backends, croupier):
    c = croupier(proxy_config([backends[0].address], max_body_size="1KiB"))
    out = raw_request(c.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    assert _status(out) == 413
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               + b"400\r\n" + b"a" * 1024 + b"\r\n" + b"400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n")
    out = raw_request(c.port, chunked)
    assert _status(out) == 413
    assert _in_flight(c) == [0]


def test_slow_header_client_is_cut_off_with_408(backends, croupier):
    """A client sending one header byte a second (slowloris) is cut off by header_timeout."""
    c = croupier(proxy_config([backends[0].address], header_timeout="1s"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        start = time.monotonic()
        data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        got = b""
        for byte in data:
            try:
                s.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            s.settimeout(0.3)   # one byte every 0.3 s, reading what comes back meanwhile
            try:
                chunk = s.recv(1000)
                if not chunk:
                    break
                got += chunk
            except TimeoutError:
                pass
            except ConnectionResetError:
                break
        elapsed = time.monotonic() - start
    assert got.startswith(b"HTTP/1.1 408"), got
    assert elapsed < 5


def test_slow_body_client_gets_408(backends, croupier):
    c = croupier(proxy_config([backends[0].address], body_timeout="500ms"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        out = s.recv(1000)
    assert out.startswith(b"HTTP/1.1 408")
    wait_until(lambda: _in_flight(c) == [0], message="in-flight back to 0")


def test_idle_keepalive_connection_is_closed(backends, croupier):
    c = croupier(proxy_config([backends[0].address], keepalive_timeout="500ms"))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        buf = bytearray()
        assert read_response(s, buf)[2] == b"a"
        assert s.recv(10) == b""             # closed by croupier, not by our timeout


def test_connect_is_refused_and_405(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    out = raw_request(c.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert _status(out) == 405


def test_clients_that_vanish_leak_nothing(backends, croupier):
    c = croupier(proxy_config([b.address for b in backends]))
    for i in range(30):
        s = socket.create_connection(("127.0.0.1", c.port))
        if i % 3 == 0:
            s.sendall(b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: x\r\n\r\n")
        elif i % 3 == 1:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nab")
        else:
            s.sendall(b"GET /stream?n=10000000 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()                            # RST, mid-request
    wait_until(lambda: _in_flight(c) == [0, 0, 0], message="in-flight back to 0")
    wait_until(lambda: c.state(lambda: sum(
        1 for x in c.balancer.connections if type(x).__name__ == "ClientConnection")) == 0,
        message="client connections released")
    assert [httpx.get(c.url()).status_code for _ in range(3)] == [200, 200, 200]


def test_lingering_client_is_let_go_at_its_fin_not_after_the_linger(backend_loop, croupier,
                                                                      monkeypatch):
    """An HTTP/1.0 client pipelines two requests; the first answer can only end at close,
    so croupier answers it, then lingers for the client's end with the second request still
    queued. The client's FIN is that end. Held on for the linger instead, the socket's
    4-tuple stays taken, and a client reconnecting fast from a reused port was reset."""
    monkeypatch.setattr("croupier.proxy.client.LINGER", 60.0)   # only the FIN can close it

    async def respond(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nuntil-close")
        await writer.drain()
        writer.close()

    def clients() -> int:
        return c.state(lambda: sum(1 for x in c.balancer.connections
                                   if type(x).__name__ == "ClientConnection"))
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    one = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    out = raw_request(c.port, one + one)        # reads until croupier's FIN, then closes
    assert _status(out) == 200 and out.endswith(b"\r\n\r\nuntil-close")
    wait_until(lambda: clients() == 0, message="the lingering client connection let go")


def test_whole_request_with_connection_close_is_closed_without_lingering(backends, croupier,
                                                                        monkeypatch):
    """Nothing more can come after a whole request that said close: no linger (as nginx)."""
    monkeypatch.setattr("croupier.proxy.client.LINGER", 60.0)
    c = croupier(proxy_config([backends[0].address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(65536):       # the server's FIN ends this
            out += chunk
        assert _status(out) == 200 and out.endswith(b"\r\n\r\na")
        wait_until(lambda: c.state(lambda: sum(
            1 for x in c.balancer.connections if type(x).__name__ == "ClientConnection")) == 0,
            message="connection closed while the client still holds its end")


def test_garbage_and_mutated_requests_never_break_the_balancer(backends, croupier):
    """Seeded random mutations of valid requests, and plain noise: each connection gets an
    answer or a close, never a hang; afterwards nothing is in flight and clean requests work."""
    import random
    rng = random.Random(1234)
    c = croupier(proxy_config([b.address for b in backends], header_timeout="1s",
                              body_timeout="1s"))
    seeds = [b"GET /echo?a=1 HTTP/1.1\r\nHost: x\r\nX-A: b\r\n\r\n",
             b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
             b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5\r\nhello\r\n0\r\n\r\n",
             b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"]
    for i in range(150):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.random()
            pos = rng.randrange(len(data))
            if op < 0.4:
                data[pos] = rng.randrange(256)
            elif op < 0.7:
                del data[pos:pos + rng.randint(1, 8)]
            else:
                data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if i % 10 == 0:
            data = bytearray(rng.randbytes(rng.randint(1, 3000)))
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
            s.sendall(bytes(data))
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    wait_until(lambda: _in_flight(c) == [0, 0, 0], message="in-flight back to 0")
    with httpx.Client() as client:
        assert [client.get(c.url()).status_code for _ in range(3)] == [200, 200, 200]


def test_refused_client_gets_its_413_while_it_keeps_sending(backends, croupier):
    """A 413 for a body the client is still sending reaches the client, every time. (croupier
    closes lingering, as RFC 9112 9.6 advises: on other stacks than Linux's a reset can
    destroy an answer not yet read.)"""
    c = croupier(proxy_config([backends[0].address], max_body_size="1KiB"))
    body = b"b" * (2 * 1024 * 1024)
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(body)
            got = b""
            try:
                while chunk := s.recv(65536):
                    got += chunk
            except ConnectionResetError:
                pass
        assert got.startswith(b"HTTP/1.1 413"), got[:80]
