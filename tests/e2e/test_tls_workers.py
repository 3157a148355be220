"""`croupier run` with two workers and a TLS listener: each worker serves HTTPS from the
supervisor's socket, the supervisor's metrics sum the handshakes that failed, and a session
one worker began resumes on the other, across a reload and a worker started anew."""

from __future__ import annotations

import os
import re
import signal
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import httpx
import trustme
from helpers import (
    CROUPIER,
    Backend,
    Load,
    Running,
    free_port,
    resumed_chain,
    wait_until,
    write_config,
)


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


def _issue(ca: trustme.CA, where: Path) -> None:
    cert = ca.issue_cert("a.test", "127.0.0.1", key_type=trustme.KeyType.ECDSA)
    cert.cert_chain_pems[0].write_to_path(str(where / "a.pem"))
    cert.private_key_pem.write_to_path(str(where / "a.key"))
    (where / "a.key").chmod(0o600)


def _two_tls_workers(backend_loop: Any, tmp_path: Path,
                     ) -> tuple[trustme.CA, ssl.SSLContext, Path, int, int]:
    """A config of two workers serving HTTPS with a certificate of a new CA, and a client
    context that trusts it: (CA, context, config path, port, admin port)."""
    backend = Backend(backend_loop, "a")
    ca = trustme.CA(key_type=trustme.KeyType.ECDSA)
    _issue(ca, tmp_path)
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [backend.address], port=port, admin_port=admin,
                        top="workers = 2\n", listener_extra=(
                            '  [listeners.tls]\n'
                            '  certificates = [{ cert = "a.pem", key = "a.key" }]\n'))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ca, ctx, path, port, admin


def _served(admin: int) -> list[int]:
    """Requests each worker has served."""
    workers = httpx.get(f"http://127.0.0.1:{admin}/api/v1/status", timeout=5).json()["workers"]
    return [sum(w["requests"].values()) for w in workers]


def test_sessions_resume_on_any_worker_across_a_reload_and_a_restarted_worker(
        backend_loop, tmp_path: Path):
    ca, ctx, path, port, admin = _two_tls_workers(backend_loop, tmp_path)
    session: ssl.SSLSession | None = None

    def chain(n: int) -> list[bool]:
        """n connections, each offering the session the one before it was given."""
        nonlocal session
        resumed, session = resumed_chain(port, ctx, "a.test", session, n)
        return resumed

    running = Running(path, port)
    try:
        assert chain(21) == [False] + [True] * 20
        # Each worker served some: the kernel deals connections by their ports (one in 2**19
        # to see all on one), so sessions one began resumed on the other.
        wait_until(lambda: sum(_served(admin)) == 21, message="both workers' counts")
        assert min(_served(admin)) > 0, _served(admin)
        # A renewed certificate, reloaded: new handshakes get it, old sessions still resume.
        _issue(ca, tmp_path)
        r = subprocess.run([CROUPIER, "reload", "-c", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert chain(20) == [True] * 20
        # A worker started in the place of one that died takes the same tickets.
        pids = running.pids()
        os.kill(pids[1], signal.SIGKILL)
        wait_until(lambda: pids[1] not in running.pids(), message="the killed worker to go")
        wait_until(lambda: len(running.pids()) == 3 and all(
            w["ready"] for w in httpx.get(f"http://127.0.0.1:{admin}/api/v1/status",
                                          timeout=5).json()["workers"]),
                   timeout=15, message="a new worker")
        before = _served(admin)
        assert chain(20) == [True] * 20
        wait_until(lambda: sum(_served(admin)) == sum(before) + 20, message="the counts")
        after = _served(admin)
        assert min(a - b for a, b in zip(after, before, strict=True)) > 0, (before, after)
    finally:
        code, out = running.stop()
    assert code == 0, out


def _served_serial(port: int, ctx: ssl.SSLContext) -> int:
    from cryptography import x509
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="a.test") as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_certificates_renewed_and_reloaded_under_load_fail_no_request(backend_loop,
                                                                       tmp_path: Path):
    ca, ctx, path, port, _ = _two_tls_workers(backend_loop, tmp_path)
    running = Running(path, port)
    url = f"https://127.0.0.1:{port}/"         # the certificate names the address too
    loads: list[Load] = []
    try:
        serials = [_served_serial(port, ctx)]
        # Kept-alive clients, and clients with a new connection (a handshake) a request.
        loads = [Load(url, clients=4, limit=60, verify=ctx),
                 Load(url, clients=4, limit=60, verify=ctx, headers={"Connection": "close"})]
        for _ in range(3):
            before = sum(load.total() for load in loads)
            wait_until(lambda b=before: sum(ld.total() for ld in loads) > b + 50,
                       timeout=30, message="requests under way")
            _issue(ca, tmp_path)
            r = subprocess.run([CROUPIER, "reload", "-c", str(path)], capture_output=True,
                               text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            serials.append(_served_serial(port, ctx))
        before = sum(load.total() for load in loads)
        wait_until(lambda: sum(ld.total() for ld in loads) > before + 50, timeout=30,
                   message="requests after the last reload")
    finally:
        for load in loads:
            load.stop()
        code, out = running.stop()
    assert code == 0, out
    assert len(set(serials)) == 4, serials      # each reload served the renewed one
    failed = [f for load in loads for f in load.failed]
    assert failed == [], failed[:5]
    assert sum(load.ok for load in loads) > 200
