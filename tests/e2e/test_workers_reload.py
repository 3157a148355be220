"""Reloads with workers tell the truth: applied by every worker (each says which config it
serves), or refused everywhere with the reason, logged and returned by `croupier reload`."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import httpx
from helpers import CROUPIER, Backend, Running, free_port, wait_until, write_config


def _status(admin: int) -> dict:
    return httpx.get(f"http://127.0.0.1:{admin}/api/v1/status", timeout=10).json()


def _reload(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CROUPIER, "reload", "-c", str(path)], capture_output=True, text=True,
                          timeout=60)


def _add_listener(path: Path, name: str, port: int) -> None:
    path.write_text(path.read_text() + f"""
[[listeners]]
name = "{name}"
listen = "127.0.0.1:{port}"
pool = "app"
""")


def _start(tmp_path: Path, members: list[str]) -> tuple[Path, int, int, Running]:
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, members, port=port, admin_port=admin, top="workers = 2")
    running = Running(path, port)
    return path, port, admin, running


def test_a_reload_adding_a_member_reaches_every_worker(backend_loop, tmp_path):
    bs = [Backend(backend_loop, n) for n in ("a", "b", "c")]
    path, _port, admin, running = _start(tmp_path, [b.address for b in bs[:2]])
    try:
        before = _status(admin)
        path.write_text(path.read_text().replace(f'"{bs[1].address}"]',
                                                 f'"{bs[1].address}", "{bs[2].address}"]'))
        r = _reload(path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "served by 2 worker(s)" in r.stdout
        after = _status(admin)
        digest = after["config"]["digest"]
        assert digest != before["config"]["digest"]
        assert [w["digest"] for w in after["workers"]] == [digest, digest]
        for _ in range(120):            # new connections: the kernel spreads them
            with httpx.Client() as client:
                assert client.get(running.url()).status_code == 200
        key = f"app/{bs[2].address}"

        def each_worker_sent_some() -> bool:
            workers = _status(admin)["workers"]
            return all(w["requests"].get(key, 0) > 0 for w in workers)
        wait_until(each_worker_sent_some, message="each worker to send the new member traffic")
    finally:
        code, out = running.stop()
    assert code == 0, out


def test_a_reload_that_a_listener_cannot_take_changes_nothing_anywhere(backends, tmp_path):
    path, _port, admin, running = _start(tmp_path, [b.address for b in backends[:1]])
    taken = free_port()
    holder = socket.socket()
    holder.bind(("127.0.0.1", taken))
    holder.listen()
    try:
        before = _status(admin)
        _add_listener(path, "second", taken)
        r = _reload(path)
        assert r.returncode == 1
        assert f"cannot listen on 127.0.0.1:{taken} (listener 'second')" in r.stderr
        after = _status(admin)
        assert after["config"] == before["config"]
        assert [w["digest"] for w in after["workers"]] == [before["config"]["digest"]] * 2
        assert [lst["name"] for lst in after["listeners"]] == ["web"]
        assert httpx.get(running.url()).text == "a"         # the old config serves on
    finally:
        holder.close()
        code, out = running.stop()
    assert code == 0, out
    refusals = [line for line in out.splitlines() if "ERROR" in line and "reload refused" in line]
    assert len(refusals) == 1 and "listener 'second'" in refusals[0], out


def test_a_worker_restarted_after_a_refused_reload_serves_the_accepted_config(backends,
                                                                              tmp_path):
    import signal
    path, _port, admin, running = _start(tmp_path, [b.address for b in backends[:1]])
    try:
        accepted = _status(admin)["config"]["digest"]
        # A file the supervisor refuses (a pool that is not there) stays on disk...
        path.write_text(path.read_text().replace('pool = "app"', 'pool = "nope"', 1))
        assert _reload(path).returncode == 1
        victim = _status(admin)["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            workers = _status(admin)["workers"]
            return workers[0]["pid"] != victim and workers[0]["ready"]
        wait_until(replaced, timeout=30, message="the worker restarted")
        # ...and the new worker serves what the supervisor accepted, not that file.
        assert [w["digest"] for w in _status(admin)["workers"]] == [accepted, accepted]
        for _ in range(20):
            with httpx.Client() as client:
                assert client.get(running.url()).text == "a"
    finally:
        code, out = running.stop()
    assert code == 0, out


def test_a_listener_added_by_reload_is_served_by_every_worker(backends, tmp_path):
    path, _port, admin, running = _start(tmp_path, [backends[0].address])
    second = free_port()
    try:
        _add_listener(path, "second", second)
        r = _reload(path)
        assert r.returncode == 0, r.stdout + r.stderr
        # Each new connection lands on one worker's socket: one that no worker accepted on
        # would leave its share of them hanging.
        for _ in range(60):
            assert httpx.get(f"http://127.0.0.1:{second}/", timeout=5).text == "a"
        assert [lst["name"] for lst in _status(admin)["listeners"]] == ["web", "second"]
    finally:
        code, out = running.stop()
    assert code == 0, out


def _listening_sockets(pid: int, port: int) -> set[str]:
    """The inodes of the sockets listening on `port` that process `pid` holds."""
    listening = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port:    # LISTEN
            listening.add(fields[9])
    held = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            held.add(target[8:-1])
    return listening & held


def test_a_worker_killed_under_load_comes_back_on_its_socket_refusing_nothing(backends,
                                                                               tmp_path):
    import signal
    import threading
    import time

    _path, port, admin, running = _start(tmp_path, [b.address for b in backends])
    refused: list[str] = []
    answered = [0]
    stop = threading.Event()

    def connect_again_and_again() -> None:
        deadline = time.monotonic() + 30          # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with httpx.Client(timeout=10) as client:   # a new connection each time
                    client.get(f"http://127.0.0.1:{port}/")
                answered[0] += 1
            except httpx.ConnectError as e:
                refused.append(str(e))
            except httpx.HTTPError:
                pass            # a request the killed worker had accepted: not a refusal
    clients = [threading.Thread(target=connect_again_and_again) for _ in range(4)]
    try:
        for t in clients:
            t.start()
        wait_until(lambda: answered[0] > 50, message="load")
        victim = _status(admin)["workers"][0]["pid"]
        its_socket = _listening_sockets(victim, port)
        assert len(its_socket) == 1
        assert its_socket <= _listening_sockets(running.proc.pid, port)   # the supervisor's
        os.kill(victim, signal.SIGKILL)

        def back() -> bool:
            w = _status(admin)["workers"][0]
            return w["pid"] != victim and w["ready"]
        wait_until(back, timeout=30, message="the worker restarted")
        assert _listening_sockets(_status(admin)["workers"][0]["pid"], port) == its_socket
        served = answered[0]
        wait_until(lambda: answered[0] > served + 100, message="load after the restart")
    finally:
        stop.set()
        for t in clients:
            t.join(30)
        code, out = running.stop()
    assert refused == [], refused[:3]
    assert code == 0, out
