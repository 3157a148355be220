"""proxy mode against real backends: rotation, header rules, bodies, framing, pipelining."""

from __future__ import annotations

import asyncio
import hashlib
import random
import re
import socket
import threading

import httpx
from helpers import (
    RawBackend,
    json_body,
    proxy_config,
    raw_request,
    read_response,
    wait_until,
    ws_echoes,
)


def test_round_robin_is_exact_over_3000_requests(backends, croupier):
    c = croupier(proxy_config([b.address for b in backends]))
    seen = []
    with httpx.Client() as client:
        for _ in range(3000):
            r = client.get(c.url("/get-classes"))
            assert r.status_code == 200
            seen.append(r.text)
    assert seen[:6] == ["a", "b", "c", "a", "b", "c"]
    assert {n: seen.count(n) for n in "abc"} == {"a": 1000, "b": 1000, "c": 1000}
    assert [b.requests for b in backends] == [1000, 1000, 1000]


def test_weights_interleave_smoothly(backends, croupier):
    config = proxy_config([])
    config["pools"][0]["members"] = [
        {"address": "127.0.0.1", "port": backends[0].port, "weight": 5},
        {"address": "127.0.0.1", "port": backends[1].port, "weight": 1},
    ]
    c = croupier(config)
    with httpx.Client() as client:
        seen = "".join(client.get(c.url()).text for _ in range(60))
    assert seen.count("a") == 50 and seen.count("b") == 10
    assert "aaaaaa" not in seen          # never more than five in a row


def test_upstream_connections_are_kept_alive_and_reused(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    with httpx.Client() as client:
        for _ in range(50):
            assert client.get(c.url()).status_code == 200
    member = c.member("app", 0)
    assert c.state(lambda: member.upstream.open) == 1
    assert backends[0].requests == 50


def test_forwarding_headers_and_host_are_set(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    r = httpx.get(c.url("/echo"), headers={"Host": "shop.example:8443",
                                             "X-Forwarded-For": "10.1.2.3",
                                             "Via": "1.0 edge"})
    got = json_body(r.content)
    headers = {k.lower(): v for k, v in got["headers"]}
    assert headers["host"] == "shop.example:8443"
    assert headers["x-forwarded-for"] == "127.0.0.1"   # the client is no trusted proxy
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-host"] == "shop.example:8443"
    assert headers["via"] == "1.0 edge, 1.1 croupier"
    assert got["version"] == "1.1"


def test_hop_by_hop_headers_are_removed_and_connection_tokens_honoured(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    req = (b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Secret\r\n"
           b"X-Secret: s3cret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n"
           b"Proxy-Connection: keep-alive\r\nX-Kept: yes\r\n\r\n")
    with socket.create_connection(("127.0.0.1", c.port)) as s:
        s.sendall(req)
        status, _, body = read_response(s, bytearray())
    assert status == 200
    names = {k.lower() for k, _ in json_body(body)["headers"]}
    assert "x-kept" in names
    for gone in ("x-secret", "keep-alive", "te", "proxy-connection", "connection"):
        assert gone not in names, gone


def test_query_and_percent_encoding_pass_byte_for_byte(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    path = b"/echo/a%2Fb%20c/%E2%82%AC?q=%41%2b+x&empty=&q=2&raw=%zz"
    with socket.create_connection(("127.0.0.1", c.port)) as s:
        s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(s, bytearray())
    assert status == 200
    assert json_body(body)["raw_path"] == path.decode()


def test_repeated_response_headers_are_kept(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    r = httpx.get(c.url("/cookies"))
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_post_body_with_content_length_and_chunked(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    payload = bytes(range(256)) * 1000
    r = httpx.post(c.url("/echo"), content=payload)
    got = json_body(r.content)
    assert got["body_len"] == len(payload)
    assert got["body_sha256"] == hashlib.sha256(payload).hexdigest()

    def gen():
        for i in range(0, len(payload), 7000):
            yield payload[i:i + 7000]
    r = httpx.post(c.url("/echo"), content=gen())       # a generator is sent chunked
    got = json_body(r.content)
    assert got["body_sha256"] == hashlib.sha256(payload).hexdigest()
    headers = {k.lower(): v for k, v in got["headers"]}
    assert headers["transfer-encoding"] == "chunked"


def test_chunked_response_is_reframed(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    with socket.create_connection(("127.0.0.1", c.port)) as s:
        s.sendall(b"GET /stream?n=100000&chunk=3000&chunked=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, bytearray())
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"x" * 100000


def test_head_204_304_are_bodiless_and_connection_stays_usable(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    with socket.create_connection(("127.0.0.1", c.port)) as s:
        buf = bytearray()
        s.sendall(b"HEAD /stream?n=5000 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(s, buf, bodyless=True)
        assert status == 200 and headers["content-length"] == "5000"
        s.sendall(b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert status == 204 and "content-length" not in headers
        s.sendall(b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[0] == 304
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = read_response(s, buf)
        assert (status, body) == (200, b"a")
        assert buf == b""


def test_head_answered_with_content_length_does_not_desync_upstream(backend_loop, croupier):
    """httptools issue 47: the response parser would wait for a HEAD response's body."""
    async def respond(head, writer):
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        s.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf, bodyless=True)[1]["content-length"] == "100"
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[2] == b"ok"
    assert raw.connections == 1          # the connection was reused, in sync


def test_response_hop_by_hop_fields_and_those_its_connection_names_are_removed(backend_loop,
                                                                               croupier):
    async def respond(head, writer):
        if head.startswith(b"GET /204"):
            writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nX-Internal: secret\r\n"
                         b"Connection: keep-alive, X-Internal\r\nKeep-Alive: timeout=5\r\n"
                         b"Trailer: X-T\r\nContent-Length: 2\r\nX-Kept: yes\r\n\r\nok")
        await writer.drain()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, buf)
        assert (status, body) == (200, b"ok")
        assert headers["x-kept"] == "yes" and headers["content-length"] == "2"
        for gone in ("x-internal", "keep-alive", "trailer", "connection"):
            assert gone not in headers, gone
        s.sendall(b"GET /204 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, buf)
        assert (status, body) == (204, b"")
        assert headers["x-a"] == "1" and "content-length" not in headers
    assert raw.connections == 1


# A response with everything a head can carry: empty lines before it, two interim responses,
# hop-by-hop fields in any case (one named by Connection), and fields copied as they came.
INTERIM_AND_FINAL = (b"\r\nHTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
                     b"Keep-Alive: timeout=5\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nX-Internal: secret\r\nconnection: X-INTERNAL\r\n"
                     b"KEEP-ALIVE: timeout=5\r\nTe: trailers\r\nProxy-Connection: keep-alive\r\n"
                     b"Upgrade: h2c\r\nServer: raw\r\ncontent-LENGTH: 2\r\nx-kept: Yes \r\n"
                     b"X-Conn: 1\r\n\r\nok")
INTERIM_AND_FINAL_OUT = (b"HTTP/1.1 100 Continue\r\n\r\n"
                         b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                         b"HTTP/1.1 200 OK\r\nServer: raw\r\ncontent-LENGTH: 2\r\n"
                         b"x-kept: Yes \r\nX-Conn: 1\r\n\r\nok")


# Response heads and whether the member connection may carry another exchange, as llhttp's
# should_keep_alive() decides (croupier reads the common case from the head itself).
KEEP_ALIVE_CASES = {
    b"/plain": (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", True),
    b"/nginx": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                True),
    b"/close": (b"HTTP/1.1 200 OK\r\nconnection: Close\r\nContent-Length: 2\r\n\r\nok", False),
    b"/then-close": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\n"
                     b"Content-Length: 2\r\n\r\nok", False),
    b"/proxy-close": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nProxy-Connection: close\r\n"
                      b"Content-Length: 2\r\n\r\nok", False),
    b"/token-close": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n"
                      b"Content-Length: 2\r\n\r\nok", False),
    b"/http10": (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False),
    b"/http10-kept": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
                      True),
    b"/chunked": (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
                  b"\r\n2\r\nok\r\n0\r\n\r\n", True),
}


def test_member_connections_are_kept_exactly_when_the_response_says_so(backend_loop, croupier):
    async def respond(head, writer):
        writer.write(KEEP_ALIVE_CASES[head.split(b" ")[1]][0])
        await writer.drain()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        for path, (_, kept) in KEEP_ALIVE_CASES.items():
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            assert read_response(s, buf)[::2] == (200, b"ok"), path
            before = raw.connections
            # The member does not close: only croupier's reading of the head decides.
            s.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(s, buf)[::2] == (200, b"ok"), path
            assert raw.connections == before + (0 if kept else 1), path


def test_response_heads_are_copied_as_they_came_however_they_arrive(backend_loop, croupier):
    async def respond(head, writer):
        if head.startswith(b"GET /bytewise"):
            for i in range(len(INTERIM_AND_FINAL)):     # a read per byte, or nearly
                writer.write(INTERIM_AND_FINAL[i:i + 1])
                await writer.drain()
        elif head.startswith(b"GET /big-body"):         # the head and 100 kB in one write
            writer.write(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nX-A: 1\r\n"
                         b"Content-Length: 100000\r\n\r\n" + b"b" * 100_000)
        else:
            writer.write(INTERIM_AND_FINAL)
        await writer.drain()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        for path in (b"/", b"/bytewise", b"/"):
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            out = b""
            while not out.endswith(b"ok"):
                chunk = s.recv(65536)
                assert chunk, out
                out += chunk
            # The final head also carries the request's ID (croupier's, a fresh one each).
            assert re.sub(rb"X-Request-ID: [0-9a-f]{12}-\d+\r\n", b"", out) == \
                INTERIM_AND_FINAL_OUT, path
        s.sendall(b"GET /big-body HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, bytearray())
        assert (status, headers["x-a"], body) == (200, "1", b"b" * 100_000)
        assert "connection" not in headers
    assert raw.connections == 1         # in sync throughout: the connection was reused


def test_a_body_over_many_reads_is_passed_on_exactly(backend_loop, croupier):
    # Past its first read a Content-Length body is counted, not parsed: it must still end
    # where its length says, and bytes past a response (a whole stray one, or the start of
    # one) must not reach the client, nor be taken as the answer to a later request.
    # A long body that comes whole with its head is sent from that read, not the parser's
    # copy of it: the same rules hold there (an interim response before it, bytes past it).
    # A short body's rest (under 64 kB) is counted through too: its first part is held back
    # until the client has it, so the rest comes in a read of its own.
    body = bytes(range(256)) * 4096     # 1 MiB, every byte value: more than one read (256 KiB)
    whole = body[:100_000]
    short = body[:10_000]
    first_part_out = threading.Event()
    stray = {b"/overrun": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
             b"/two": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray",
             b"/partial": b"HTTP/1.1 200 OK\r\nContent-Le",
             b"/whole-overrun": b"stray",
             b"/short-overrun": b"stray"}

    async def respond(head, writer):
        path = head.split(b" ")[1]
        if path in (b"/short", b"/short-overrun"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(short)
                         + short[:1000])
            await writer.drain()
            await asyncio.get_running_loop().run_in_executor(None, first_part_out.wait, 5)
            first_part_out.clear()
            writer.write(short[1000:] + stray.get(path, b""))
        elif path in (b"/two", b"/partial"):      # a short response, and more in its read
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + stray[path])
        elif path in (b"/whole", b"/whole-overrun", b"/interim"):      # all in one write
            writer.write((b"HTTP/1.1 100 Continue\r\n\r\n" if path == b"/interim" else b"")
                         + b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(whole)
                         + whole + stray.get(path, b""))
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                         + body[:1000])
            await writer.drain()
            writer.write(body[1000:] + stray.get(path, b""))
        await writer.drain()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        for path, want in ((b"/", body), (b"/", body), (b"/overrun", body), (b"/", body),
                           (b"/two", b"ok"), (b"/", body), (b"/partial", b"ok"), (b"/", body),
                           (b"/whole", whole), (b"/interim", whole), (b"/whole", whole),
                           (b"/whole-overrun", whole), (b"/whole", whole),
                           (b"/short", short), (b"/short-overrun", short), (b"/short", short)):
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            if path == b"/interim":
                assert read_response(s, buf)[0] == 100
            if path.startswith(b"/short"):
                while b"\r\n\r\n" not in buf or len(buf) - buf.index(b"\r\n\r\n") < 1004:
                    chunk = s.recv(65536)
                    assert chunk, path
                    buf += chunk
                first_part_out.set()
            status, _headers, got = read_response(s, buf)
            assert (status, got) == (200, want), path
        assert not buf
    # Reused, but not after any of the five responses with bytes past them.
    assert raw.connections == 6


def test_a_long_body_to_a_client_that_stalls_arrives_exactly(backend_loop, croupier):
    # A long Content-Length body is read into a buffer of croupier's own and written to the
    # client from there. A client that stops reading leaves those bytes queued in its
    # transport: the next read must not go into them. Every byte differs, so any overwrite,
    # loss or reordering shows; the member connection must come back in step afterwards.
    # More than the socket buffers between member, croupier and client can hold (~11 MB).
    body = random.Random(6).randbytes(32 * 1024 * 1024)
    sent = [0]

    async def respond(head, writer):
        if head.startswith(b"GET /small"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for at in range(0, len(body), 65536):
            writer.write(body[at:at + 65536])
            await writer.drain()
            sent[0] += 65536
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        buf = bytearray()
        s.sendall(b"GET /long HTTP/1.1\r\nHost: x\r\n\r\n")
        seen: list[int] = []

        def stalled() -> bool:          # the member's progress: the same twice, 300 ms apart
            seen.append(sent[0])
            return len(seen) > 1 and seen[-1] == seen[-2] > 0
        wait_until(stalled, timeout=30, interval=0.3, message="the member to stall")
        assert sent[0] < len(body)      # croupier held back: the client read nothing
        status, _, got = read_response(s, buf)
        assert status == 200 and len(got) == len(body)
        assert got == body
        for path in (b"/long", b"/small", b"/long"):     # in step, on the same connection
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            status, _, got = read_response(s, buf)
            assert (status, got == (b"ok" if path == b"/small" else body)) == (200, True), path
    assert raw.connections == 1


def test_response_head_over_64k_gives_502(backend_loop, croupier):
    async def respond(head, writer):
        if head.startswith(b"GET /huge-in-pieces"):    # never complete: cut off at 64 kB
            writer.write(b"HTTP/1.1 200 OK\r\n")
            for _ in range(70):
                writer.write(b"X-Big: %s\r\n" % (b"v" * 1000))
                await writer.drain()
        elif head.startswith(b"GET /huge"):             # complete in one read, but too big
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: %s\r\n" % (b"v" * 1000) * 70)
            writer.write(b"Content-Length: 2\r\n\r\nok")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: %s\r\n" % (b"v" * 1000) * 60)
            writer.write(b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        for path in (b"/huge", b"/huge-in-pieces"):
            s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
            status, _headers, body = read_response(s, buf)
            assert status == 502 and b"response head over 65536 bytes" in body, path
        s.sendall(b"GET /60k HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = read_response(s, buf)
        assert (status, body) == (200, b"ok") and len(headers["x-big"]) == 1000
    assert raw.connections == 3         # each connection that sent a huge head was dropped


def test_close_delimited_response_is_reframed_chunked(backend_loop, croupier):
    async def respond(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-close body")
        await writer.drain()
        writer.close()
    raw = RawBackend(backend_loop, respond)
    c = croupier(proxy_config([raw.address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        for _ in range(2):                  # and the client connection stays usable
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            _status, headers, body = read_response(s, buf)
            assert headers["transfer-encoding"] == "chunked"
            assert body == b"until-close body"
    # An HTTP/1.0 client cannot take chunked: the body ends with the connection.
    out = raw_request(c.port, b"GET / HTTP/1.0\r\n\r\n")
    assert out.endswith(b"\r\n\r\nuntil-close body")
    assert b"chunked" not in out.lower()
    # The version, not the Connection field, decides what the client can take (the version
    # is read two ways: with and without a Connection field).
    for request, chunked in ((b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", True),
                             (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
                             (b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n", False),
                             (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", False)):
        out = raw_request(c.port, request)
        assert out.startswith(b"HTTP/1.1 200 "), request
        assert (b"transfer-encoding: chunked" in out.lower()) == chunked, request
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
            _status, headers, body = read_response(s, buf)
            assert headers["transfer-encoding"] == "chunked"
            assert body == b"until-close body"


def test_http10_client_gets_host_added_and_keep_alive_when_asked(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        s.sendall(b"GET /echo HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        _, headers, body = read_response(s, buf)
        assert headers["connection"].lower() == "keep-alive"
        got = {k.lower(): v for k, v in json_body(body)["headers"]}
        assert got["host"] == backends[0].address
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        _status, headers, body = read_response(s, buf)
        assert body == b"a" and headers["connection"].lower() == "close"
        assert s.recv(10) == b""            # closed, as HTTP/1.0 without keep-alive asks


def test_pipelined_requests_are_answered_in_order(backends, croupier):
    c = croupier(proxy_config([b.address for b in backends]))
    reqs = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(10))
    reqs += b"POST /echo/post HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(reqs)
        buf = bytearray()
        paths = []
        for _ in range(11):
            status, _, body = read_response(s, buf)
            assert status == 200
            got = json_body(body)
            paths.append(got["raw_path"])
        assert got["body_len"] == 5
    assert paths == [f"/echo/{i}" for i in range(10)] + ["/echo/post"]


# Four requests in one stream: empty lines between them, two spaces after the method,
# lower-case names, whitespace around values, fields the Connection names, a body by
# Content-Length, forwarding fields to merge, a chunked body last.
_STREAM = (
    b"\r\nGET  /echo/a HTTP/1.1\r\nhost:x\r\nX-A: \t v1 \r\nconnection: X-Gone\r\n"
    b"X-Gone: 1\r\n\r\n"
    b"POST /echo/b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    b"\r\nGET /echo/c HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.1\r\nvia: 1.0 a\r\n"
    b"X-Forwarded-Host: forged\r\n\r\n"
    b"POST /echo/d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n"
)


def _stream_answers(port: int, pieces: list[bytes]) -> list[dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            s.sendall(piece)
        buf = bytearray()
        answers = []
        for _ in range(4):
            status, _, body = read_response(s, buf)
            assert status == 200
            answers.append(json_body(body))
    return answers


def test_request_heads_are_read_from_the_bytes_wherever_they_fall(backends, croupier):
    """Request heads are taken from the bytes as they came, found by where the stream
    says each request begins: pipelined after bodies, or cut at every byte."""
    c = croupier(proxy_config([backends[0].address]))
    whole = _stream_answers(c.port, [_STREAM])
    bytewise = _stream_answers(c.port, [_STREAM[i:i + 1] for i in range(len(_STREAM))])
    for got in (whole, bytewise):
        assert [a["raw_path"] for a in got] == ["/echo/a", "/echo/b", "/echo/c", "/echo/d"]
        fields = [[(k.lower(), v) for k, v in a["headers"]] for a in got]
        assert re.fullmatch(r"[0-9a-f]{12}-\d+", fields[0].pop()[1])     # x-request-id
        assert fields[0] == [("host", "x"), ("x-a", "v1"), ("x-forwarded-host", "x"),
                             ("x-forwarded-for", "127.0.0.1"), ("x-forwarded-proto", "http"),
                             ("via", "1.1 croupier")]
        assert got[1]["body_len"] == 11 and ("content-length", "11") in fields[1]
        assert dict(fields[2])["x-forwarded-for"] == "127.0.0.1"    # not a trusted proxy
        assert dict(fields[2])["via"] == "1.0 a, 1.1 croupier"
        assert dict(fields[2])["x-forwarded-host"] == "x"
        assert got[3]["body_len"] == 5 and ("transfer-encoding", "chunked") in fields[3]


def test_a_request_pipelined_after_a_chunked_body_in_the_same_read_is_left_unanswered(
        backends, croupier):
    """Where a chunked body ended inside a read, llhttp does not say, so the head after
    it cannot be found: the request before is answered, then the connection closes (a
    pipelining client retries the rest, RFC 9112 9.3.2). Nothing else is lost."""
    c = croupier(proxy_config([backends[0].address]))
    out = raw_request(c.port, b"POST /echo/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                              b"\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /echo/2 HTTP/1.1\r\nHost: x"
                              b"\r\n\r\n")
    assert out.count(b"HTTP/1.1 ") == 1 and b'"/echo/1"' in out and b"/echo/2" not in out
    assert httpx.get(c.url("/echo/3")).status_code == 200
    wait_until(lambda: c.state(lambda: c.member("app", 0).in_flight) == 0)


def test_too_many_pipelined_requests_answers_the_first_then_closes(backends, croupier):
    c = croupier(proxy_config([backends[0].address], max_pipelined=4))
    reqs = b"GET /slow?delay=0.2 HTTP/1.1\r\nHost: x\r\n\r\n" * 20
    out = raw_request(c.port, reqs)
    answered = out.count(b"HTTP/1.1 200")
    assert 1 <= answered <= 5
    wait_until(lambda: c.state(lambda: c.member("app", 0).in_flight) == 0)


def test_expect_100_continue_is_relayed(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        buf = bytearray()
        status, _, _ = read_response(s, buf)
        assert status == 100                 # the member's interim answer, relayed
        s.sendall(b"data")
        status, _, body = read_response(s, buf)
        assert status == 200 and json_body(body)["body_len"] == 4


def test_websocket_upgrade_tunnels_both_ways(backends, croupier, backend_loop):
    import aiohttp
    c = croupier(proxy_config([backends[0].address]))

    async def talk():
        async with aiohttp.ClientSession() as session, session.ws_connect(c.url("/ws")) as ws:
            return await ws_echoes(ws)
    assert backend_loop.run(talk()) == ["a: one", "a: two", "a: three"]
    wait_until(lambda: c.state(lambda: c.member("app", 0).in_flight) == 0)


def test_member_answering_before_the_body_ends_still_gets_it_and_is_reused(backend_loop,
                                                                           croupier):
    """nginx answers `return 200` before reading a body, then reads and discards it: the
    rest of the body must still reach it, and both connections stay usable."""
    received: list[int] = []
    connections: list[int] = []

    async def handle(reader, writer):
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                received.append(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = backend_loop.run(asyncio.start_server(handle, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    c = croupier(proxy_config([f"127.0.0.1:{port}"]))
    body = b"x" * 300_000
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        buf = bytearray()
        for _ in range(3):
            s.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                      % len(body))
            for i in range(0, len(body), 50_000):
                s.sendall(body[i:i + 50_000])
            assert read_response(s, buf)[2] == b"ok"
    wait_until(lambda: received == [len(body)] * 3, message="every body delivered")
    assert len(connections) == 1                  # one kept-alive member connection, reused
    server.close()


def test_a_connection_holds_a_parser_only_while_a_request_is_cut(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))

    def parsers() -> list[object]:
        return [x.parser for x in c.balancer.connections if type(x).__name__ ==
                "ClientConnection"]
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        buf = bytearray()
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(s, buf)[2] == b"a"
        assert c.state(parsers) == [None]          # given back with the read that ended it
        s.sendall(b"GET / HTTP/1.1\r\nHo")
        wait_until(lambda: c.state(lambda: [p is not None for p in parsers()]) == [True],
                   message="a parser lent for the cut head")
        s.sendall(b"st: x\r\n\r\n")
        assert read_response(s, buf)[2] == b"a"
        assert c.state(parsers) == [None]


def test_nothing_after_a_request_marked_as_the_last_is_answered(backends, croupier):
    """RFC 9112 9.6: a request behind one with Connection: close is not processed, and the
    parser the connection used serves the next connections as if new."""
    c = croupier(proxy_config([backends[0].address]))
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                  b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in data
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
            buf = bytearray()
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.0\r\n\r\n")
            assert read_response(s, buf)[2] == b"a"
            assert read_response(s, buf)[2] == b"a"
