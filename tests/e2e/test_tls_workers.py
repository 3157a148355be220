"""`croupier run` with two workers and a TLS listener: each worker serves HTTPS from the
supervisor's socket, and the supervisor's metrics sum the handshakes that failed."""

from __future__ import annotations

import re
import socket
import ssl
from pathlib import Path

import httpx
import trustme
from helpers import Backend, Running, free_port, wait_until, write_config


def _failures(admin: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^croupier_tls_handshake_failures_total\{reason="([^"]+)"\} (\S+)$', text, re.M)}


def test_two_workers_serve_https_and_count_failed_handshakes(backend_loop, tmp_path: Path):
    backend = Backend(backend_loop, "a")
    ca = trustme.CA()
    cert = ca.issue_cert("a.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "a.key"))
    (tmp_path / "a.key").chmod(0o600)
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [backend.address], port=port, admin_port=admin,
                        top="workers = 2\n", listener_extra=(
                            '  [listeners.tls]\n'
                            '  certificates = [{ cert = "a.pem", key = "a.key" }]\n'))
    running = Running(path, port)
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        for _ in range(6):              # new connections: both workers take some
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                    ctx.wrap_socket(raw, server_hostname="a.test") as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
                got = b""
                while chunk := s.recv(4096):
                    got += chunk
                assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"a")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
        wait_until(lambda: _failures(admin) == {"plain HTTP": 3}, timeout=15,
                   message="the workers' failed handshakes summed")
        assert backend.requests == 6
    finally:
        code, out = running.stop()
    assert code == 0, out
