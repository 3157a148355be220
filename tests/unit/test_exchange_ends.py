"""Every point where an exchange can end, driven in memory: a client connection and member
connections whose transports are in-memory, fed bytes and ends as the event loop would feed
them, with the real parser, balancer and access log (a real file). Each end gives exactly one
log line with its termination code, status and byte counts, and leaves the member's
in-flight count at zero. tests/integration/test_access_log.py runs the same paths over
real sockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import uvloop

from croupier.config.load import validate_config
from croupier.proxy.client import CLOSED, CLOSING, LINGERING, ClientConnection
from croupier.proxy.upstream import UpstreamConnection
from croupier.runtime import app
from croupier.runtime.server import Balancer

MEMBERS = ["127.0.0.1:19101", "127.0.0.1:19102"]
GET = b"GET /x HTTP/1.1\r\nHost: a\r\nUser-Agent: memory\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"\r\n")
SWITCHED = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"\r\n")


class MemoryTransport(asyncio.Transport):
    """What a socket's transport is to the protocols, kept in memory."""

    def __init__(self) -> None:
        super().__init__()
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.eof = False

    def write(self, data: Any) -> None:
        self.data += data

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.data += line

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
        self.closed = self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_write_buffer_size(self) -> int:
        return 0


class Rig:
    """A listener with a json access log, its pool's members each holding idle member
    connections in memory, and one client connection."""

    def __init__(self, tmp_path: Path, pool: dict[str, Any] | None = None,
                 **listener: Any) -> None:
        self.path = tmp_path / "access.log"
        loaded = validate_config({
            "workers": 1,
            "admin": {"enabled": False},
            "access_log": {"path": str(self.path), "format": "json"},
            "listeners": [{"name": "web", "listen": "127.0.0.1:18080", "pool": "app",
                           **listener}],
            "pools": [{"name": "app", "members": MEMBERS, **(pool or {})}],
        })
        self.loop = uvloop.new_event_loop()
        self.balancer = app.build(Balancer, loaded, self.loop)
        self.listener = next(self.balancer.listeners_for(loaded))
        self.pool = self.balancer.pools["app"]
        self.members: list[UpstreamConnection] = []     # every member connection, in order
        for member in self.pool.members:
            upstream = member.upstream
            assert upstream is not None
            for _ in range(2):
                conn = UpstreamConnection(upstream)
                conn.connection_made(MemoryTransport())
                upstream.open += 1
                upstream.release(conn)
                self.members.append(conn)
        self.client = ClientConnection(self.listener)
        self.out = MemoryTransport()
        self.client.connection_made(self.out)

    def sent_to(self, fresh: bool = False) -> UpstreamConnection:
        """The member connection the request in progress went to. `fresh`: as one opened
        for it (a kept-alive one that closes before answering is retried on a new one, as
        nginx does; these tests do not open sockets)."""
        req = self.client.current or self.client.tunnel_req
        conn = req.sink if req is not None and req.sink is not None else self.client.tunnel
        assert conn is not None, "the request went to no member connection"
        if fresh:
            conn.reused = False
        return conn

    def lines(self) -> list[dict[str, Any]]:
        for log in self.balancer.access_logs.values():
            log.flush()
        text = self.path.read_text() if self.path.exists() else ""
        return [json.loads(line) for line in text.splitlines()]

    def one(self) -> dict[str, Any]:
        lines = self.lines()
        assert len(lines) == 1, lines
        assert all(m.in_flight == 0 for m in self.pool.members), "a member left in flight"
        return lines[0]

    def close(self) -> None:
        for log in self.balancer.access_logs.values():
            log.close()
        self.loop.close()


@pytest.fixture
def rig(tmp_path):
    made: list[Rig] = []

    def make(**kw: Any) -> Rig:
        r = Rig(tmp_path, **kw)
        made.append(r)
        return r
    yield make
    for r in made:
        r.close()


def _ends(line: dict[str, Any]) -> tuple[str, int]:
    return line["termination"], line["status"]


def test_complete(rig):
    r = rig()
    r.client.data_received(GET)
    conn = r.sent_to()
    assert conn.transport.data.startswith(b"GET /x HTTP/1.1\r\n")
    conn.data_received(OK)
    assert r.out.data.startswith(b"HTTP/1.1 200 OK\r\n") and r.out.data.endswith(b"hello")
    line = r.one()
    assert _ends(line) == ("--", 200)
    assert line["bytes_in"] == len(GET) and line["bytes_out"] == len(r.out.data)
    assert line["member"] in MEMBERS and line["attempts"] == 1
    assert line["user_agent"] == "memory"


def test_the_client_closes_mid_response(rig):
    r = rig()
    r.client.data_received(GET)
    conn = r.sent_to()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    r.client.connection_lost(None)
    line = r.one()
    assert _ends(line) == ("CD", 200) and line["bytes_out"] == len(r.out.data)
    assert conn.transport.closed, "the member connection is not reused mid-response"


def test_the_client_closes_while_the_member_thinks(rig):
    r = rig()
    r.client.data_received(GET)
    r.sent_to()
    r.client.connection_lost(None)
    assert _ends(r.one()) == ("CH", 0)


def test_the_client_closes_mid_request(rig):
    r = rig()
    r.client.data_received(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n123")
    r.client.connection_lost(None)
    assert _ends(r.one()) == ("CR", 0)


def test_the_client_closes_mid_head(rig):
    r = rig()
    r.client.data_received(b"GET /x HTTP/1.1\r\nHo")
    r.client.connection_lost(None)
    assert _ends(r.one()) == ("CR", 0)


def test_the_member_closes_before_its_head(rig):
    r = rig(pool={"retries": 0})
    r.client.data_received(GET)
    r.sent_to(fresh=True).connection_lost(None)
    assert r.out.data.startswith(b"HTTP/1.1 502 ")
    line = r.one()
    assert _ends(line) == ("SH", 502) and line["bytes_out"] == len(r.out.data)


def test_the_member_resets_mid_body(rig):
    r = rig()
    r.client.data_received(GET)
    conn = r.sent_to()
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
    conn.connection_lost(ConnectionResetError())
    assert r.out.closed, "a cut body cannot be finished: the client's connection is cut"
    assert _ends(r.one()) == ("SD", 200)


def test_retried_then_answered(rig):
    r = rig(pool={"retries": 1})
    r.client.data_received(GET)
    first = r.sent_to(fresh=True)
    first.connection_lost(None)                 # before any response byte: replayed
    second = r.sent_to()
    assert second is not first and second.pool.member is not first.pool.member
    second.data_received(OK)
    line = r.one()
    assert _ends(line) == ("--", 200) and line["attempts"] == 2
    assert line["member"] == second.pool.member.name


def test_no_response_in_time(rig):
    r = rig(pool={"retries": 0})
    r.client.data_received(GET)
    r.sent_to(fresh=True).on_timeout()
    assert r.out.data.startswith(b"HTTP/1.1 504 ")
    assert _ends(r.one()) == ("sH", 504)


def test_no_member_may_take_it(rig):
    r = rig()
    for member in r.pool.members:
        member.admin["api"] = "maint"
    r.pool.refresh()
    r.client.data_received(GET)
    assert r.out.data.startswith(b"HTTP/1.1 503 ")
    line = r.one()
    assert _ends(line) == ("PQ", 503) and line["member"] == ""


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400),
    (b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n", 431),
])
def test_croupier_refuses(rig, request_bytes, status):
    r = rig(max_body_size=10, max_header_size=2048)
    r.client.data_received(request_bytes)
    assert r.out.data.startswith(b"HTTP/1.1 %d " % status), bytes(r.out.data[:60])
    line = r.one()
    assert _ends(line) == ("PR", status) and line["bytes_out"] == len(r.out.data)
    assert r.client.state in (CLOSING, LINGERING)
    assert not any(c.transport.data for c in r.members), "a refused request reached a member"


def test_a_head_not_whole_in_time(rig):
    r = rig()
    r.client.data_received(b"GET / HTTP/1.1\r\nHost: a\r\n")
    r.client.on_timeout()
    assert r.out.data.startswith(b"HTTP/1.1 408 ")
    assert _ends(r.one()) == ("cR", 408)


def test_a_pipelined_request_behind_a_close(rig):
    r = rig()
    r.client.data_received(b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                           b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    r.sent_to().data_received(OK)
    assert r.out.data.count(b"HTTP/1.1 200") == 1
    assert [line["target"] for line in r.lines()] == ["/first"]
    assert r.out.closed or r.out.eof


@pytest.mark.parametrize("closer, termination", [("member", "ST"), ("client", "CT")])
def test_a_tunnel_closed(rig, closer, termination):
    r = rig()
    r.client.data_received(UPGRADE)
    conn = r.sent_to()
    conn.data_received(SWITCHED + b"hi")
    assert r.client.tunnel is conn
    r.client.data_received(b"ping")
    assert conn.transport.data.endswith(b"ping")
    if closer == "member":
        conn.connection_lost(None)
        assert r.out.closed
    else:
        r.client.connection_lost(None)
        assert r.client.state == CLOSED
    line = r.one()
    assert _ends(line) == (termination, 101)
    assert line["bytes_in"] == len(UPGRADE) + 4 and line["bytes_out"] == len(r.out.data)


@pytest.mark.parametrize("mode, status", [("redirect", 307), ("lookup", 200)])
def test_answers_without_relaying(rig, mode, status):
    r = rig(mode=mode)
    r.client.data_received(GET)
    assert r.out.data.startswith(b"HTTP/1.1 %d " % status)
    assert not r.out.closed, "kept alive, as the client asked"
    line = r.one()
    assert _ends(line) == ("--", status) and line["member"] in MEMBERS
