"""What an init system sees of croupier: sd_notify messages on a real unix datagram socket as
NOTIFY_SOCKET (as systemd's Type=notify reads them), and logs as JSON lines."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from helpers import CROUPIER, Running, free_port, wait_until, write_config


def _notices(sock: socket.socket, until: str, limit: int = 20) -> list[str]:
    """The states croupier sent (one datagram each, MAINPID left out) up to `until`."""
    got: list[str] = []
    while until not in got and len(got) < limit:
        data = sock.recv(4096).decode()
        got += [line for line in data.splitlines() if not line.startswith("MAINPID=")]
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_notify_socket_hears_ready_reloading_and_stopping_in_order(backends, tmp_path: Path,
                                                                   workers):
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, [b.address for b in backends], port=port, admin_port=admin,
                        top=f"workers = {workers}")
    notify_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify_path))
    sock.settimeout(30)
    running = Running(path, port, env={"NOTIFY_SOCKET": str(notify_path)})
    try:
        assert _notices(sock, "READY=1") == ["READY=1"]     # once, when everything serves
        # The workers were ready by then: status lists them all.
        status = httpx.get(f"http://127.0.0.1:{admin}/api/v1/status").json()
        assert sum(w["ready"] for w in status["workers"]) == (workers if workers > 1 else 0)
        running.proc.send_signal(signal.SIGHUP)
        assert _notices(sock, "READY=1") == ["RELOADING=1", "READY=1"]
        r = subprocess.run([CROUPIER, "reload", "-c", str(path)], capture_output=True,
                           text=True, timeout=60)                   # ExecReload's way
        assert r.returncode == 0, r.stderr
        assert _notices(sock, "READY=1") == ["RELOADING=1", "READY=1"]
        running.proc.send_signal(signal.SIGTERM)
        assert _notices(sock, "STOPPING=1") == ["STOPPING=1"]
        code, out = running.stop()
        assert code == 0, out
    finally:
        sock.close()
        if running.proc.poll() is None:
            running.proc.kill()


def test_log_format_json_writes_one_object_a_line(backends, tmp_path: Path):
    port = free_port()
    path = write_config(tmp_path, [backends[0].address], port=port, top="workers = 2")
    proc = subprocess.Popen([CROUPIER, "run", "-c", str(path), "--log-format", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
    try:
        def serves() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).text == "a"
            except httpx.HTTPError:
                return False
        wait_until(serves, timeout=30, message="croupier")
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert records and all({"time", "level", "name", "message"} <= r.keys() for r in records)
    assert records[0]["message"].startswith("croupier ") and records[0]["level"] == "INFO"
    assert any(r["name"] == "croupier.workers" and "ready (pid" in r["message"]
               for r in records)
