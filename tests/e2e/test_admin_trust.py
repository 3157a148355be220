"""The admin API against a caller without the token: `croupier run` as a subprocess, what it
holds read from /proc."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

from helpers import (
    Running,
    free_port,
    read_response,
    wait_for_port,
    write_config,
)

MiB = 1024 * 1024


def test_an_unauthenticated_64mib_body_gets_401_before_it_is_read(backends, tmp_path: Path):
    admin = free_port()
    port = free_port()
    path = write_config(tmp_path, [b.address for b in backends], port=port, admin_port=admin,
                        top="workers = 1")       # the admin API's process is the data plane
    running = Running(path, port)
    try:
        wait_for_port(admin)
        before = running.peak_rss_mib()
        sent = 0

        def send_body(s: socket.socket) -> None:
            nonlocal sent
            block = b"x" * MiB
            try:
                for _ in range(64):
                    s.sendall(block)
                    sent += len(block)
            except OSError:
                pass                    # refused and closed: the rest is never read
        with socket.create_connection(("127.0.0.1", admin), timeout=30) as s:
            s.sendall(b"POST /api/v1/pools/app/members HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (64 * MiB))
            sender = threading.Thread(target=send_body, args=(s,), daemon=True)
            sender.start()
            status, headers, body = read_response(s, bytearray())
            sender.join(30)
        assert status == 401 and b"admin token" in body
        assert headers["www-authenticate"] == "Bearer"
        grown = running.peak_rss_mib() - before
        assert grown < 8, f"peak RSS grew by {grown:.1f} MiB for a refused body"
        assert sent < 64 * MiB          # the body was not drained to the end
        code, out = running.stop()
        assert code == 0, out
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()
