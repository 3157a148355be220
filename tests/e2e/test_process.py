"""croupier as an init system runs it: one instance per config, ports found taken before they
are shared, as many workers as it may use cores, and a stop that finishes what is in flight."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
from helpers import (
    CROUPIER,
    Backend,
    Running,
    free_port,
    read_response,
    wait_until,
    write_config,
)


def test_a_second_instance_of_one_config_is_refused(backends, tmp_path: Path):
    port = free_port()
    path = write_config(tmp_path, [backends[0].address], port=port, top="workers = 1")
    first = Running(path, port)
    try:
        second = subprocess.run([CROUPIER, "run", "-c", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 1
        assert f"another croupier (pid {first.proc.pid}) runs this config" in second.stderr
        assert "Traceback" not in second.stderr
        assert httpx.get(first.url()).text == "a"           # the first serves on
    finally:
        code, out = first.stop()
    assert code == 0, out


def test_a_listener_port_held_by_another_process_is_named_not_shared(backends, tmp_path: Path):
    port = free_port()
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)    # would let us share it
    holder.bind(("127.0.0.1", port))
    holder.listen()
    try:
        path = write_config(tmp_path, [backends[0].address], port=port, top="workers = 2")
        r = subprocess.run([CROUPIER, "run", "-c", str(path)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 1, r.stderr
        assert f"cannot listen on 127.0.0.1:{port} (listener 'web')" in r.stderr
        assert "Traceback" not in r.stderr
    finally:
        holder.close()


def test_demo_names_a_port_that_is_taken(tmp_path: Path):
    ports = [free_port() for _ in range(3)]
    holder = socket.socket()
    holder.bind(("127.0.0.1", ports[1]))
    holder.listen()
    try:
        r = subprocess.run([CROUPIER, "demo", "--port", str(ports[0]), "--admin-port",
                            str(ports[1]), "--app-port", str(ports[2]), "--instances", "1",
                            "--tls-port", str(free_port())],
                           capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{ports[1]} (the admin API)" in r.stderr
    assert "--admin-port" in r.stderr and "Traceback" not in r.stderr


def test_auto_workers_count_the_cores_this_process_may_use(backends, tmp_path: Path):
    port = free_port()
    path = write_config(tmp_path, [backends[0].address], port=port)     # workers = "auto"
    proc = subprocess.Popen(["taskset", "-c", "1", CROUPIER, "run", "-c", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text == "a"
                   if _answers(port) else False, timeout=30, message="croupier")
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children == []                   # one process: no supervisor and workers
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "1 worker(s)" in out


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_sigterm_finishes_what_is_in_flight_and_closes_idle_connections_at_once(backend_loop,
                                                                                tmp_path):
    slow = Backend(backend_loop, "slow")
    port = free_port()
    path = write_config(tmp_path, [slow.address], port=port,
                        top='workers = 1\n[runtime]\nstop_grace = "20s"')
    running = Running(path, port)
    answers: list[tuple[int, dict[str, str], bytes]] = []
    in_flight = socket.create_connection(("127.0.0.1", port), timeout=30)
    idle = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        buf = bytearray()
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(idle, buf)[2] == b"slow"   # answered, then idle: kept alive
        in_flight.sendall(b"GET /slow?delay=2 HTTP/1.1\r\nHost: x\r\n\r\n")

        def read() -> None:
            answers.append(read_response(in_flight, bytearray()))
        reader = threading.Thread(target=read)
        reader.start()
        wait_until(lambda: slow.requests == 2, message="the slow request reached the member")
        started = time.monotonic()
        running.proc.terminate()
        assert idle.recv(1) == b""                       # closed at once, not at the end
        idle_closed = time.monotonic() - started
        reader.join(30)
        status, headers, body = answers[0]
        assert (status, body) == (200, b"slow slow")
        assert headers.get("connection") == "close"
        assert idle_closed < 1.5, idle_closed
        assert in_flight.recv(1) == b""                  # and then that one closes too
        code, out = running.stop()
        assert code == 0, out
    finally:
        in_flight.close()
        idle.close()
        if running.proc.poll() is None:
            running.proc.kill()
