"""send_proxy: a PROXY header (v1 or v2) opens every member connection and names the client;
member connections are then each client connection's own."""

from __future__ import annotations

import ipaddress
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from helpers import proxy_config, read_response, wait_until

from croupier.admin.ops import Target, set_state

V2 = b"\r\n\r\n\x00\r\nQUIT\n"


class ProxyMember:
    """A member behind send_proxy: reads the PROXY header as HAProxy's spec writes it, byte
    exact (then, with `tls`, a TLS handshake), and answers each request with the client it
    names. Threads and blocking sockets: nothing may read past the header before TLS."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.headers: list[tuple[str, str, str, int, int]] = []  # version, src, dst, ports
        self.closed = 0
        self.checks: list[str] = []     # the checks' headers, which name no client
        member = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                member.serve(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _exactly(sock: socket.socket, n: int) -> bytes:
        got = b""
        while len(got) < n:
            chunk = sock.recv(n - len(got))
            if not chunk:
                raise ConnectionError("closed within the header")
            got += chunk
        return got

    def _header(self, sock: socket.socket) -> tuple[str, str, str, int, int] | str:
        first = self._exactly(sock, 1)
        if first == b"P":
            line = first
            while not line.endswith(b"\r\n"):
                line += self._exactly(sock, 1)
            if line == b"PROXY UNKNOWN\r\n":
                return "v1 unknown"
            _, family, src, dst, sport, dport = line.decode().split()
            assert family in ("TCP4", "TCP6")
            return ("v1", src, dst, int(sport), int(dport))
        fixed = first + self._exactly(sock, 15)
        body = self._exactly(sock, int.from_bytes(fixed[14:16], "big"))
        if fixed[:12] == V2 and fixed[12] == 0x20:                # version 2, LOCAL
            return "v2 local"
        assert fixed[:12] == V2 and fixed[12] == 0x21, fixed       # version 2, PROXY
        size = {0x11: 4, 0x21: 16}[fixed[13]]                     # TCP over IPv4, IPv6
        src = ipaddress.ip_address(body[:size])
        dst = ipaddress.ip_address(body[size:2 * size])
        ports = body[2 * size:2 * size + 4]
        return ("v2", str(src), str(dst), int.from_bytes(ports[:2], "big"),
                int.from_bytes(ports[2:], "big"))

    def serve(self, sock: socket.socket) -> None:
        try:
            header = self._header(sock)
            if isinstance(header, str):
                self.checks.append(header)
                header = (header, "local", "", 0, 0)
            else:
                self.headers.append(header)
            conn = (self.tls.wrap_socket(sock, server_side=True) if self.tls is not None
                    else sock)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                buf = buf.split(b"\r\n\r\n", 1)[1]
                body = f"{header[1]}:{header[3]}".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
        except (ConnectionError, OSError, AssertionError, KeyError):
            pass
        finally:
            self.closed += 1


@pytest.fixture
def make_member() -> Iterator[Callable[..., ProxyMember]]:
    made: list[ProxyMember] = []

    def make(tls: ssl.SSLContext | None = None) -> ProxyMember:
        made.append(ProxyMember(tls))
        return made[-1]
    yield make
    for m in made:
        m.close()


def _get(s: socket.socket | ssl.SSLSocket, buf: bytearray) -> bytes:
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    status, _, body = read_response(s, buf)
    assert status == 200, body
    return body


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_each_client_connection_has_its_own_member_connection_named_by_its_header(
        make_member, croupier, version):
    member = make_member()
    c = croupier(proxy_config([member.address], pool_options={"send_proxy": version}))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as one, \
            socket.create_connection(("127.0.0.1", c.port), timeout=5) as two:
        b1, b2 = bytearray(), bytearray()
        port1, port2 = one.getsockname()[1], two.getsockname()[1]
        assert [_get(one, b1), _get(two, b2), _get(one, b1), _get(two, b2)] == [
            b"127.0.0.1:%d" % port1, b"127.0.0.1:%d" % port2] * 2
        # Two member connections, one a client, each kept for its client's next request.
        assert sorted(member.headers) == sorted(
            (version, "127.0.0.1", "127.0.0.1", p, c.port) for p in (port1, port2))
    # A client that leaves takes its member connection with it.
    wait_until(lambda: member.closed == 2, message="the member connections closed")


def test_a_client_dealt_round_robin_keeps_one_connection_a_member(make_member, croupier):
    members = [make_member() for _ in range(3)]
    c = croupier(proxy_config([m.address for m in members], pool_options={"send_proxy": "v2"}))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        port = s.getsockname()[1]
        for _ in range(9):
            assert _get(s, buf) == b"127.0.0.1:%d" % port
    # Each member saw one connection, which carried its three requests.
    assert [len(m.headers) for m in members] == [1, 1, 1]
    wait_until(lambda: [m.closed for m in members] == [1, 1, 1],
               message="the client's member connections closed with it")


def test_the_client_a_trusted_balancer_named_is_the_one_sent_on(make_member, croupier):
    member = make_member()
    config = proxy_config([member.address], proxy_protocol=True,
                          trusted_proxies=["127.0.0.1"], pool_options={"send_proxy": "v2"})
    c = croupier(config)
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        s.sendall(b"PROXY TCP6 2001:db8::7 ::1 51234 443\r\n")
        assert _get(s, bytearray()) == b"2001:db8::7:51234"
    # An IPv6 client on an IPv4 listener: both as IPv6 in the header (a v4-mapped address).
    [(version, src, dst, sport, dport)] = member.headers
    assert (version, src, sport, dport) == ("v2", "2001:db8::7", 51234, c.port)
    assert ipaddress.ip_address(dst) == ipaddress.ip_address("::ffff:127.0.0.1")


def test_the_header_comes_before_tls_to_the_member(make_member, croupier,
                                                   tmp_path_factory: Any):
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("member.test").configure_cert(ctx)
    ca_file = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    member = make_member(ctx)
    c = croupier(proxy_config([member.address], pool_options={
        "send_proxy": "v1", "tls": {"ca": str(ca_file), "server_name": "member.test"},
        "health": {"path": "/", "interval": "100ms", "timeout": "1s", "rise": 1, "fall": 1}}))
    # Its checks open with a header too (naming no client), then TLS, then HTTP.
    wait_until(lambda: c.state(lambda: c.member("app", 0).health) == "up" and member.checks,
               message="a check over the header and TLS passes")
    assert set(member.checks) == {"v1 unknown"}
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        buf = bytearray()
        port = s.getsockname()[1]
        assert _get(s, buf) == _get(s, buf) == b"127.0.0.1:%d" % port
    assert member.headers == [("v1", "127.0.0.1", "127.0.0.1", port, c.port)]


@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_checks_send_a_local_header(make_member, croupier, kind):
    member = make_member()
    c = croupier(proxy_config([member.address], pool_options={
        "send_proxy": "v2", "health": {"type": kind, "path": "/", "interval": "100ms",
                                       "timeout": "1s", "rise": 1, "fall": 1}}))
    wait_until(lambda: c.state(lambda: c.member("app", 0).health) == "up" and member.checks,
               message="a check passes")
    assert set(member.checks) == {"v2 local"} and member.headers == []


def test_a_drained_member_loses_the_connections_clients_keep(make_member, croupier):
    member = make_member()
    c = croupier(proxy_config([member.address], pool_options={"send_proxy": "v2"}))
    with socket.create_connection(("127.0.0.1", c.port), timeout=5) as s:
        _get(s, bytearray())
        assert member.closed == 0
        c.state(lambda: set_state(Target("app", members=(c.member("app", 0),)), "drain", "api"))
        wait_until(lambda: member.closed == 1, message="the kept connection closed")
