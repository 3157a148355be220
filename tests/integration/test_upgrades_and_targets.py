"""Upgrades and request targets as an attacker would send them: h2c smuggling, bytes sent
behind an upgrade request, a 101 nobody asked for, absolute-form targets. Each test looks at
what each member received (heads, targets, fields) and at what the client received."""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest
from helpers import RawBackend, free_port, read_response, wait_until

H2C = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
       b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
WEBSOCKET = (b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
PRIVATE = b"GET /private/x HTTP/1.1\r\nHost: x\r\n\r\n"


def recording(lt, name: str, first: bytes | None = None) -> RawBackend:
    """A member that records every head it reads and answers "NAME TARGET"; `first`, if
    given, is its answer to the first head instead."""
    async def respond(head: bytes, writer: asyncio.StreamWriter) -> None:
        if first is not None and len(member.heads) == 1:
            writer.write(first)
        else:
            body = name.encode() + b" " + head.split(b" ", 2)[1]
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    member = RawBackend(lt, respond)
    return member


def fields(head: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        if line:
            name, _, value = line.partition(":")
            out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


def routed(public: RawBackend, private: RawBackend) -> dict:
    """/private and the host secret.example go to `private`, the rest to `public`."""
    return {
        "listeners": [{"name": "web", "listen": f"127.0.0.1:{free_port()}", "pool": "public",
                       "routes": [{"path_prefix": "/private", "pool": "private"},
                                  {"host": "secret.example", "pool": "private"}]}],
        "pools": [{"name": "public", "members": [public.address], "retries": 0},
                  {"name": "private", "members": [private.address], "retries": 0}],
    }


def exchange(port: int, *writes: bytes, answers: int) -> list[tuple[int, dict, bytes]]:
    """Send each write in turn, reading one answer after each but the last, then the rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        buf = bytearray()
        got = []
        for i, data in enumerate(writes):
            s.sendall(data)
            if i < len(writes) - 1:
                got.append(read_response(s, buf))
        while len(got) < answers:
            got.append(read_response(s, buf))
        return got


def assert_forwarded(head: bytes, target: bytes) -> None:
    """A head croupier made: its target, and the forwarding fields it adds."""
    assert head.split(b" ", 2)[1] == target, head
    f = fields(head)
    assert f["x-forwarded-for"] == ["127.0.0.1"] and f["via"] == ["1.1 croupier"], head


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "sequential"])
def test_h2c_upgrade_is_stripped_and_the_next_request_is_routed(backend_loop, croupier,
                                                               pipelined):
    public, private = recording(backend_loop, "public"), recording(backend_loop, "private")
    c = croupier(routed(public, private))
    writes = (H2C + PRIVATE,) if pipelined else (H2C, PRIVATE)
    got = exchange(c.port, *writes, answers=2)
    assert [(s, b) for s, _, b in got] == [(200, b"public /"), (200, b"private /private/x")]
    assert len(public.heads) == 1 and len(private.heads) == 1
    assert_forwarded(public.heads[0], b"/")
    f = fields(public.heads[0])
    assert "upgrade" not in f and "http2-settings" not in f and "connection" not in f
    assert_forwarded(private.heads[0], b"/private/x")


def test_h2c_beside_another_protocol_keeps_only_the_other(backend_loop, croupier):
    public, private = recording(backend_loop, "public"), recording(backend_loop, "private")
    c = croupier(routed(public, private))
    request = WEBSOCKET.replace(b"Upgrade: websocket", b"Upgrade: h2c, websocket")
    got = exchange(c.port, request + PRIVATE, answers=2)
    assert [s for s, _, _ in got] == [200, 200]
    f = fields(public.heads[0])
    assert f["upgrade"] == ["websocket"] and f["connection"] == ["upgrade"]


@pytest.mark.parametrize("before", [b"", b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["alone", "queued behind another"])
def test_upgrade_refused_by_the_member_parses_what_followed_as_requests(backend_loop, croupier,
                                                                       before):
    public, private = recording(backend_loop, "public"), recording(backend_loop, "private")
    c = croupier(routed(public, private))
    got = exchange(c.port, before + WEBSOCKET + PRIVATE, answers=3 if before else 2)
    expected = [(200, b"public /ws"), (200, b"private /private/x")]
    if before:
        expected.insert(0, (200, b"public /first"))
    assert [(s, b) for s, _, b in got] == expected
    heads = public.heads[-1:]
    assert len(public.heads) == len(expected) - 1   # nothing raw reached the member asked
    assert fields(heads[0])["upgrade"] == ["websocket"]
    assert_forwarded(private.heads[0], b"/private/x")


def test_an_upgrade_croupier_answers_itself_parses_on(backend_loop, croupier):
    public, private = recording(backend_loop, "public"), recording(backend_loop, "private")
    config = routed(public, private)
    config["listeners"][0]["mode"] = "redirect"
    c = croupier(config)
    got = exchange(c.port, WEBSOCKET + PRIVATE, answers=2)
    assert [(s, h["location"]) for s, h, _ in got] == [(307, f"http://{public.address}/ws"),
                                                       (307, f"http://{private.address}"
                                                             f"/private/x")]
    assert not public.heads and not private.heads


class Switcher(asyncio.Protocol):
    """A member that answers an upgrade with 101 only when told, records what it received
    before it did, and echoes what comes after."""

    def __init__(self, got_head: threading.Event, answer: bytes) -> None:
        self.got_head = got_head
        self.answer = answer
        self.received = b""
        self.before: bytes | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.before is not None:
            assert self.transport is not None
            self.transport.write(b"echo:" + data)
            return
        self.received += data
        if b"\r\n\r\n" in self.received:
            self.got_head.set()

    def switch(self) -> None:
        assert self.transport is not None
        self.before = self.received
        self.transport.write(self.answer)


def start_switcher(lt, answer: bytes) -> tuple[int, threading.Event, list[Switcher]]:
    got_head = threading.Event()
    made: list[Switcher] = []

    def factory() -> Switcher:
        made.append(Switcher(got_head, answer))
        return made[-1]
    server = lt.run(lt.loop.create_server(factory, "127.0.0.1", 0))
    return int(server.sockets[0].getsockname()[1]), got_head, made


SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def test_bytes_after_an_upgrade_request_reach_the_member_only_after_its_101(backend_loop,
                                                                             croupier):
    port, got_head, made = start_switcher(backend_loop, SWITCH)
    c = croupier({"listeners": [{"name": "web", "listen": f"127.0.0.1:{free_port()}",
                                 "pool": "app"}],
                  "pools": [{"name": "app", "members": [f"127.0.0.1:{port}"]}]})
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(WEBSOCKET + b"early frame")
        assert got_head.wait(10)
        backend_loop.loop.call_soon_threadsafe(made[0].switch)
        buf = bytearray()
        status, headers, _ = read_response(s, buf)
        assert status == 101 and headers["upgrade"] == "websocket"
        while b"echo:early frame" not in buf:
            chunk = s.recv(65536)
            assert chunk, bytes(buf)
            buf += chunk
    before = made[0].before
    assert before is not None and before.endswith(b"\r\n\r\n")     # the head, nothing behind
    assert before.count(b"\r\n\r\n") == 1 and b"early frame" not in before


@pytest.mark.parametrize("case", ["no upgrade asked", "h2c asked", "another protocol"])
def test_a_101_nobody_asked_for_is_a_502_and_never_a_tunnel(backend_loop, croupier, case):
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
              b"Upgrade: %s\r\n\r\nraw bytes from the member")
    if case == "no upgrade asked":
        request, answer = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n", answer % b"websocket"
    elif case == "h2c asked":           # croupier never asks a member for h2c
        request, answer = H2C, answer % b"h2c"
    else:
        request, answer = WEBSOCKET, answer % b"h2c"
    public = recording(backend_loop, "public", first=answer)
    private = recording(backend_loop, "private")
    c = croupier(routed(public, private))
    got = exchange(c.port, request, PRIVATE, answers=2)
    status, _, body = got[0]
    assert status == 502 and b"101" in body and b"raw bytes" not in body
    assert got[1][:1] == (200,) and got[1][2] == b"private /private/x"
    # The member connection that sent the 101 was closed, not kept or tunnelled.
    wait_until(lambda: c.state(lambda: c.member("public", 0).upstream.open) == 0,
               message="the member connection closed")
    assert c.state(lambda: c.member("public", 0).in_flight) == 0


def test_an_absolute_form_target_is_routed_and_sent_on_its_authority(backend_loop, croupier):
    public, private = recording(backend_loop, "public"), recording(backend_loop, "private")
    c = croupier(routed(public, private))
    got = exchange(c.port,
                   b"GET http://secret.example/x?q=1 HTTP/1.1\r\nHost: public.example\r\n\r\n",
                   b"GET HTTP://Secret.Example:8080?a HTTP/1.1\r\nHost: public.example\r\n\r\n",
                   b"GET http://public.example/private/y HTTP/1.1\r\nHost: secret.example\r\n"
                   b"\r\n",
                   answers=3)
    assert [(s, b) for s, _, b in got] == [(200, b"private /x?q=1"), (200, b"private /?a"),
                                           (200, b"private /private/y")]
    assert not public.heads
    hosts = [(fields(h)["host"], fields(h)["x-forwarded-host"]) for h in private.heads]
    assert hosts == [(["secret.example"], ["secret.example"]),
                     (["Secret.Example:8080"], ["Secret.Example:8080"]),
                     (["public.example"], ["public.example"])]
    for head in private.heads:
        assert head.split(b" ", 2)[1].startswith(b"/")


@pytest.mark.parametrize("target", [b"http://user@secret.example/x", b"ftp://secret.example/x",
                                    b"http:///x", b"http://secret.example:bad/x",
                                    b"secret.example/x"])
def test_a_bad_absolute_form_target_gets_400(backend_loop, croupier, target):
    public, private = recording(backend_loop, "public"), recording(backend_loop, "private")
    c = croupier(routed(public, private))
    status, _, body = exchange(c.port, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target,
                               answers=1)[0]
    assert status == 400, body
    assert not public.heads and not private.heads
