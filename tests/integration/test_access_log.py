"""The access log: every way an exchange can end gives exactly one line, with the right
termination code, status, member and byte counts. Real sockets, real members, croupier
in-process; the log is a real file."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import RawBackend, dead_port, proxy_config, raw_request, read_response, wait_until

from croupier.proxy.access_log import json_safe, text_safe


class Logged:
    """croupier writing a json access log to a file; `lines()` flushes and reads it."""

    def __init__(self, croupier: Any, tmp_path: Path, members: list[str], fmt: str = "json",
                 **listener: Any) -> None:
        self.path = tmp_path / "access.log"
        config = proxy_config(members, **listener)
        config["access_log"] = {"path": str(self.path), "format": fmt}
        self.c = croupier(config)

    def lines(self, n: int | None = None) -> list[Any]:
        """The lines written so far; with `n`, once there are n (exchanges end on the loop
        thread, after the client may already have its answer)."""
        def read() -> list[str]:
            self.c.lt.call(lambda: [log.flush() for log in self.c.balancer.access_logs.values()])
            return self.path.read_text().splitlines() if self.path.exists() else []
        if n is not None:
            wait_until(lambda: len(read()) >= n, message=f"{n} access log line(s)")
        return [json.loads(line) for line in read()]

    def one(self) -> dict[str, Any]:
        lines = self.lines(1)
        assert len(lines) == 1, lines
        return lines[0]


def test_a_complete_exchange(backends, croupier, tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address])
    r = httpx.get(log.c.url("/stream?n=5000"), headers={"User-Agent": 'probe "1"'})
    assert r.status_code == 200
    line = log.one()
    assert line["termination"] == "--" and line["status"] == 200
    assert (line["pool"], line["member"], line["listener"]) == ("app", backends[0].address, "web")
    assert (line["method"], line["target"], line["version"]) == ("GET", "/stream?n=5000",
                                                                 "HTTP/1.1")
    assert line["attempts"] == 1 and line["user_agent"] == 'probe "1"'
    assert line["bytes_out"] > 5000 and line["bytes_in"] > 40
    assert line["client"] == "127.0.0.1" and line["client_port"] > 0
    assert 0 <= line["first_byte_ms"] <= line["duration_ms"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])


def test_text_lines_are_one_readable_line_each(backends, croupier, tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address], fmt="text")
    assert httpx.get(log.c.url("/x?a=1")).status_code == 200
    raw_request(log.c.port, b'GET /bad"\x7fquote HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n')
    log.c.lt.call(lambda: [lg.flush() for lg in log.c.balancer.access_logs.values()])
    text = log.path.read_text().splitlines()
    assert len(text) == 2, text
    assert re.match(r'\S+Z 127\.0\.0\.1:\d+ web - "GET /x\?a=1 HTTP/1\.1" 200 app '
                    + re.escape(backends[0].address) + r' 1 \d+ \d+ \d+ \d+ \d+ [0-9a-f]{12}-\d+ '
                    r'"python-httpx/[\d.]+" --$', text[0]), text[0]
    assert '"GET /bad\\x22\\x7Fquote HTTP/1.1" 400 - - 0 ' in text[1], text[1]
    assert text[1].endswith(" PR")


def test_the_client_closes_mid_response(backends, croupier, tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address])
    with socket.create_connection(("127.0.0.1", log.c.port)) as s:
        s.sendall(b"GET /stream?n=200000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")
    line = log.one()
    assert (line["termination"], line["status"]) == ("CD", 200)
    assert 0 < line["bytes_out"] < 200_000_000


def test_the_member_refuses_and_nobody_else_may_take_it(croupier, tmp_path):
    with dead_port() as port:
        log = Logged(croupier, tmp_path, [f"127.0.0.1:{port}"])
        assert httpx.get(log.c.url()).status_code == 502
        line = log.one()
    assert (line["termination"], line["status"], line["attempts"]) == ("SC", 502, 1)
    assert line["member"] == f"127.0.0.1:{port}" and line["bytes_out"] > 0


def test_retried_then_answered(backends, croupier, tmp_path):
    with dead_port() as port:
        log = Logged(croupier, tmp_path, [f"127.0.0.1:{port}", backends[0].address])
        for _ in range(4):
            assert httpx.get(log.c.url()).status_code == 200
        lines = log.lines(4)
    assert len(lines) == 4
    assert 2 in [line["attempts"] for line in lines]    # the dead member was tried first
    assert all(line["termination"] == "--" and line["member"] == backends[0].address
               for line in lines)


@pytest.mark.parametrize("behaviour, termination, status", [
    ("close before the head", "SH", 502),
    ("reset mid-body", "SD", 200),
    ("switch, then close the tunnel", "ST", 101),
])
def test_the_member_fails(backend_loop, croupier, tmp_path, behaviour, termination, status):
    async def respond(head: bytes, writer: asyncio.StreamWriter) -> None:
        if behaviour == "reset mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            await writer.drain()
        elif behaviour == "switch, then close the tunnel":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                         b"Upgrade: websocket\r\n\r\nhello")
            await writer.drain()
        writer.close()
    member = RawBackend(backend_loop, respond)
    log = Logged(croupier, tmp_path, [member.address], pool_options={"retries": 0})
    upgrade = b"Connection: upgrade\r\nUpgrade: websocket\r\n" if status == 101 else b""
    got = raw_request(log.c.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                      + (upgrade or b"Connection: close\r\n") + b"\r\n")
    assert got.startswith(b"HTTP/1.1 %d" % status) or (status == 200 and got.startswith(
        b"HTTP/1.1 200")), got
    line = log.one()
    assert (line["termination"], line["status"]) == (termination, status)
    assert line["bytes_out"] == len(got)
    member.close()


def test_no_answer_in_time_is_504(backends, croupier, tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address],
                 pool_options={"response_timeout": "0.3s", "retries": 0})
    assert httpx.get(log.c.url("/slow?delay=3"), timeout=10).status_code == 504
    line = log.one()
    assert (line["termination"], line["status"]) == ("sH", 504)
    assert line["duration_ms"] >= 300


def test_no_member_may_take_it(backends, croupier, tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address])

    def maint() -> None:
        member = log.c.member("app", 0)
        member.admin["api"] = "maint"
        member.pool.refresh()
    log.c.state(maint)
    assert httpx.get(log.c.url()).status_code == 503
    line = log.one()
    assert (line["termination"], line["status"], line["pool"], line["member"]) == (
        "PQ", 503, "app", "")


@pytest.mark.parametrize("request_bytes, status, termination", [
    (b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", 400, "PR"),
    (b"POST /sink HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 100, 413, "PR"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"y" * 3000 + b"\r\n\r\n", 431, "PR"),
    (b"GET / HTTP/1.1\r\nHost: a\r\n", 408, "cR"),          # the head never ends
])
def test_croupier_refuses(backends, croupier, tmp_path, request_bytes, status, termination):
    log = Logged(croupier, tmp_path, [backends[0].address], max_body_size=10,
                 max_header_size=2048, header_timeout="0.3s")
    got = raw_request(log.c.port, request_bytes)
    assert got.startswith(b"HTTP/1.1 %d" % status), got
    line = log.one()
    assert (line["termination"], line["status"], line["bytes_out"]) == (termination, status,
                                                                        len(got))
    assert backends[0].requests == 0


def test_a_pipelined_request_behind_a_close_is_not_served_nor_logged(backends, croupier,
                                                                     tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address])
    got = raw_request(log.c.port, b"GET /first HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                                  b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    assert got.count(b"HTTP/1.1 200") == 1
    assert [line["target"] for line in log.lines(1)] == ["/first"]


def test_a_websocket_tunnel_closed_by_the_client(backends, croupier, tmp_path):
    log = Logged(croupier, tmp_path, [backends[0].address])
    with socket.create_connection(("127.0.0.1", log.c.port)) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"\r\n")
        buf = bytearray()
        status, _, _ = read_response(s, buf, bodyless=True)
        assert status == 101
    line = log.one()
    assert (line["termination"], line["status"]) == ("CT", 101)
    assert line["bytes_out"] > 0 and line["bytes_in"] > 0


@pytest.mark.parametrize("mode, status", [("redirect", 307), ("lookup", 200)])
def test_redirect_and_lookup_answers(backends, croupier, tmp_path, mode, status):
    log = Logged(croupier, tmp_path, [backends[1].address], mode=mode)
    r = httpx.get(log.c.url("/where"))
    assert r.status_code == status
    line = log.one()
    assert (line["termination"], line["status"], line["member"]) == ("--", status,
                                                                     backends[1].address)
    assert line["bytes_out"] == len(r.content) + len(b"".join(
        b"%s: %s\r\n" % (k, v) for k, v in r.headers.raw)) + len(b"HTTP/1.1 %d " % status) \
        + len(r.reason_phrase) + 4


def test_escaping_keeps_each_line_one_line():
    assert text_safe(b"/a b") == b"/a b"
    assert text_safe(b'a"b\\c\nd\xff') == b"a\\x22b\\x5Cc\\x0Ad\\xFF"
    raw = b'a"b\\c\nd\xff\x00'
    assert json.loads(b'"%s"' % json_safe(raw)) == raw.decode("latin-1")
