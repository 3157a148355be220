"""`croupier` as a user runs it: a subprocess, driven only through its ports."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import (
    CROUPIER,
    Backend,
    Running,
    free_port,
    json_body,
    wait_for_port,
    wait_until,
    write_config,
)

GiB = 1024**3


# What `make test` built: the data plane compiled, unless CROUPIER_PURE=1 (setup.py).
BUILD = "interpreted" if os.environ.get("CROUPIER_PURE") == "1" else "compiled"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_croupier(tmp_path: Path) -> Iterator:
    started: list[Running] = []

    def start(members: list[str], extra: str = "") -> Running:
        port = free_port()
        r = Running(write_config(tmp_path, members, port=port, listener_extra=extra), port)
        started.append(r)
        return r
    yield start
    for r in started:
        if r.proc.poll() is None:
            for pid in r.all_pids():             # the supervisor and its workers
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            r.proc.wait()


def test_run_serves_round_robin_and_stops_cleanly_on_sigterm(backends, run_croupier):
    c = run_croupier([b.address for b in backends])
    with httpx.Client() as client:
        assert [client.get(c.url()).text for _ in range(6)] == list("abcabc")
    code, out = c.stop()
    assert code == 0, out
    assert "listener web on 127.0.0.1" in out
    assert f"data plane {BUILD}" in out


def _data_plane_sources() -> list[Path]:
    """setup.py's DATA_PLANE: every module of its DATA_PLANE_PACKAGES, which mypyc compiles."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign)
                and getattr(node.targets[0], "id", "") == "DATA_PLANE_PACKAGES"):
            return sorted(path for package in ast.literal_eval(node.value)
                          for path in (ROOT / "src" / "croupier" / package).glob("*.py"))
    raise AssertionError("no DATA_PLANE_PACKAGES in setup.py")


@pytest.mark.skipif(BUILD == "interpreted", reason="CROUPIER_PURE=1: nothing compiled")
def test_the_data_plane_runs_compiled_from_its_current_source():
    # A stale build would be imported in place of the source: every test would test old code.
    import importlib

    sources = _data_plane_sources()
    assert len(sources) >= 5
    for source in sources:
        name = ".".join(source.relative_to(ROOT / "src").with_suffix("").parts)
        name = name.removesuffix(".__init__")
        module = importlib.import_module(name)
        built = Path(module.__file__ or "")
        assert built.suffix == ".so", f"{name} is not compiled: {built} (run make install)"
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: run make install")


def test_the_interpreted_data_plane_serves_alike(backends, tmp_path):
    # The same source without the C extensions: what CROUPIER_PURE=1 installs.
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "croupier", src / "croupier",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    port = free_port()
    config = write_config(tmp_path, [b.address for b in backends], port=port)
    c = Running(config, port, env={"PYTHONPATH": str(src)})
    try:
        with httpx.Client() as client:
            assert [client.get(c.url()).text for _ in range(6)] == list("abcabc")
            r = client.post(c.url("/echo"), content=b"x" * 100_000)
            assert r.status_code == 200 and r.json()["body_len"] == 100_000
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 400 ")
    finally:
        code, out = c.stop()
    assert code == 0, out
    assert "data plane interpreted" in out


def test_check_prints_what_would_be_served(tmp_path: Path):
    path = write_config(tmp_path, ["127.0.0.1:9001", "127.0.0.1:9002"], port=8080)
    r = subprocess.run([CROUPIER, "check", "-c", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "listener web: http 127.0.0.1:8080 (proxy) -> pool app" in r.stdout
    assert "member 127.0.0.1:9002" in r.stdout


def test_check_lists_certificates_and_warns_of_a_key_others_can_read(tmp_path: Path):
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("a.test", "*.a.test")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "a.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "a.key"))
    (tmp_path / "a.key").chmod(0o644)
    (tmp_path / "croupier.toml").write_text("""
[[listeners]]
name = "web-tls"
listen = "127.0.0.1:8443"
pool = "app"
  [listeners.tls]
  certificates = [{ cert = "a.pem", key = "a.key" }]
[[pools]]
name = "app"
members = ["127.0.0.1:9001"]
""")
    r = subprocess.run([CROUPIER, "check", "-c", str(tmp_path / "croupier.toml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "listener web-tls: https 127.0.0.1:8443" in r.stdout
    assert "certificate a.pem: a.test, *.a.test (until " in r.stdout
    assert "a.key: the private key is readable by others (mode 644" in r.stderr


def test_bad_config_exits_nonzero_naming_file_and_key_before_listening(tmp_path: Path):
    port = free_port()
    path = write_config(tmp_path, ["127.0.0.1:9001"], port=port,
                        listener_extra='header_timeout = "10"')
    for cmd in ("check", "run"):
        r = subprocess.run([CROUPIER, cmd, "-c", str(path)], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 1
        assert f"{path}: listeners[0] (web).header_timeout: bad duration '10'" in r.stderr
    with socket.socket() as s:             # nothing was left listening
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_port_in_use_is_a_clear_error(tmp_path: Path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = write_config(tmp_path, ["127.0.0.1:9001"], port=port)
        r = subprocess.run([CROUPIER, "run", "-c", str(path)], capture_output=True, text=True,
                           timeout=20)
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (listener 'web')" in r.stderr


def _download(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        buf = bytearray(1024 * 1024)
        view = memoryview(buf)
        total = 0
        head_end = -1
        first = bytearray()
        while True:
            n = s.recv_into(view)
            if n == 0:
                break
            if head_end < 0:
                first += view[:n]
                head_end = first.find(b"\r\n\r\n")
                if head_end >= 0:
                    assert first.startswith(b"HTTP/1.1 200")
                    total = len(first) - head_end - 4
                continue
            total += n
        return total


def test_1gib_response_and_upload_stream_in_bounded_memory(backend_loop, run_croupier):
    backend = Backend(backend_loop, "big")
    c = run_croupier([backend.address])
    assert _download(c.port, f"/stream?n={GiB}&chunk=262144") == GiB

    with socket.create_connection(("127.0.0.1", c.port)) as s:
        s.sendall(b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GiB)
        block = b"u" * (1024 * 1024)
        for _ in range(1024):
            s.sendall(block)
        resp = b""
        while b"}" not in resp:
            chunk = s.recv(65536)
            assert chunk, resp
            resp += chunk
    assert json_body(resp.split(b"\r\n\r\n", 1)[1])["received"] == GiB

    rss = c.peak_rss_mib()
    print(f"croupier peak RSS after 1 GiB each way: {rss:.1f} MiB")
    assert rss < 100


def test_slow_reader_makes_croupier_stop_reading_from_the_member(backend_loop, run_croupier):
    backend = Backend(backend_loop, "big")
    c = run_croupier([backend.address])
    with socket.create_connection(("127.0.0.1", c.port)) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(f"GET /stream?n={GiB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        # Read nothing. Wait until the member's sending has stalled (the same count twice,
        # 300 ms apart), then check that only socket buffers' worth left it.
        last = [-1]

        def stalled() -> bool:
            now = backend.bytes_sent
            same = now == last[0] and now > 0
            last[0] = now
            return same
        wait_until(stalled, timeout=30, interval=0.3, message="the member to stall")
        sent = backend.bytes_sent
        assert sent < 64 * 1024 * 1024, f"member sent {sent} bytes to a client that reads none"
        # Reading again lets it continue: backpressure, not a dead transfer.
        got = 0
        while got < 4 * sent:
            got += len(s.recv(1024 * 1024))
        assert backend.bytes_sent > sent
    assert c.peak_rss_mib() < 100


def test_demo_rotates_through_three_instances(tmp_path: Path):
    port = free_port()
    # The demo's instances take three ports in a row: find three that nothing listens on.
    app_port = next(base for base in range(21000, 30000, 7)
                    if all(_free(base + i) and _bindable(base + i) for i in range(3)))
    tls_port = free_port()
    proc = subprocess.Popen([CROUPIER, "demo", "--port", str(port), "--app-port", str(app_port),
                             "--admin-port", str(free_port()), "--tls-port", str(tls_port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, timeout=30)
        with httpx.Client() as client:
            seen = [client.get(f"http://127.0.0.1:{port}/get-classes").text.strip()
                    for _ in range(6)]
        assert sorted(seen) == sorted([f"classes from instance-{i}" for i in (1, 2, 3)] * 2)
        assert seen[:3] == seen[3:]                 # strict rotation
        assert len(set(seen[:3])) == 3
        # The HTTPS listener, with the curl command the demo printed
        assert proc.stdout is not None
        line = ""
        while "curl --cacert" not in line:
            line = proc.stdout.readline().decode()
            assert line, "the demo printed no HTTPS curl command"
        argv = line.split("#")[0].split()
        assert argv[-1] == f"https://localhost:{tls_port}/get-classes"
        if shutil.which("curl"):
            out = subprocess.run([*argv, "-sS", "--max-time", "10"], capture_output=True,
                                 text=True, timeout=20)
            assert out.returncode == 0, out.stderr
            assert out.stdout.startswith("classes from instance-")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    for i in range(3):                               # the demo's instances went with it
        wait_until(lambda i=i: _free(app_port + i), timeout=10, message="demo instances to stop")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def test_many_sequential_connections_do_not_leak_file_descriptors(backends, run_croupier):
    c = run_croupier([b.address for b in backends])
    fd_dirs = [Path(f"/proc/{pid}/fd") for pid in c.all_pids()]

    def fds() -> int:
        return sum(len(list(d.iterdir())) for d in fd_dirs)
    for _ in range(30):                       # every worker opens its member connections
        with httpx.Client() as client:
            client.get(c.url())
    before = fds()
    for _ in range(300):
        with httpx.Client() as client:        # a new connection each time
            assert client.get(c.url()).status_code == 200
    wait_until(lambda: fds() <= before + 3, timeout=10,
               message="file descriptors to settle")


def _admin_config(tmp_path: Path, members: list[str]) -> tuple[Path, int, int]:
    port, admin_port = free_port(), free_port()
    return write_config(tmp_path, members, port=port, admin_port=admin_port), port, admin_port


def _cli(path: Path, *args: str) -> str:
    r = subprocess.run([CROUPIER, *args, "-c", str(path)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_admin_states_and_added_members_survive_a_kill_and_restart(backends, tmp_path):
    path, port, admin_port = _admin_config(tmp_path, [b.address for b in backends[:2]])
    first = Running(path, port)
    pids = first.all_pids()
    try:
        wait_for_port(admin_port)
        pids = first.all_pids()
        _cli(path, "drain", f"app/{backends[0].address}")
        _cli(path, "members", "add", "app", backends[2].address)
        _cli(path, "maint", backends[1].address)
        _cli(path, "ready", backends[1].address)
    finally:
        first.proc.kill()                       # no graceful stop: the state file must be whole
        first.proc.wait()
    # Its workers see the supervisor gone and leave; none may still hold the port.
    wait_until(lambda: _gone(pids), timeout=15, message="the first croupier's workers to go")
    state = json.loads((tmp_path / "croupier.state.json").read_text())
    assert state["member_admin"] == {f"app/{backends[0].address}": "drain"}
    second = Running(path, port)
    try:
        wait_for_port(admin_port)
        with httpx.Client() as client:
            assert {client.get(second.url()).text for _ in range(6)} == {"b", "c"}
        status = json.loads(_cli(path, "status", "--json"))
        members = {m["name"]: m for m in status["pools"][0]["members"]}
        assert members[backends[0].address]["admin_origins"] == {"api": "drain"}
        assert members[backends[2].address]["admin_state"] == "ready"
    finally:
        second.stop()


def test_sighup_reloads_the_config_without_dropping_a_request(backend_loop, tmp_path):
    bs = [Backend(backend_loop, n) for n in ("a", "b", "c")]
    path, port, _admin_port = _admin_config(tmp_path, [b.address for b in bs[:2]])
    c = Running(path, port)
    try:
        with httpx.Client() as client:
            assert {client.get(c.url()).text for _ in range(4)} == {"a", "b"}
            path.write_text(path.read_text().replace(
                f'"{bs[1].address}"]', f'"{bs[1].address}", "{bs[2].address}"]'))
            c.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: client.get(c.url()).text == "c", message="the new member")
            assert sorted(client.get(c.url()).text for _ in range(3)) == ["a", "b", "c"]
    finally:
        code, out = c.stop()
    assert code == 0
    assert "config reloaded" in out


def _wait_workers_ready(admin_port: int, n: int) -> None:
    def ready() -> bool:
        try:
            workers = httpx.get(f"http://127.0.0.1:{admin_port}/api/v1/status").json()["workers"]
        except httpx.HTTPError:
            return False
        return sum(w["ready"] for w in workers) == n
    wait_until(ready, timeout=30, message=f"{n} workers ready")


def _gone(pids: list[int]) -> bool:
    """No process left, or only zombies (PID 1 here may never reap orphans)."""
    def alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return not any(alive(pid) for pid in pids)


def _workers_config(tmp_path: Path, members: list[str]) -> tuple[Path, int, int]:
    path, port, admin_port = _admin_config(tmp_path, members)
    path.write_text("workers = 2\n" + path.read_text())
    return path, port, admin_port


def test_workers_share_state_within_100ms_and_add_up_their_counters(backend_loop, tmp_path):
    bs = [Backend(backend_loop, n) for n in ("a", "b", "c")]
    path, port, admin_port = _workers_config(tmp_path, [b.address for b in bs])
    c = Running(path, port)
    try:
        _wait_workers_ready(admin_port, 2)
        assert len(c.pids()) == 3                       # a supervisor and two workers
        for _ in range(300):
            with httpx.Client() as client:              # a new connection each time
                assert client.get(c.url()).status_code == 200
        counts = [b.requests for b in bs]
        assert sum(counts) == 300
        assert max(counts) - min(counts) <= 2, counts   # each worker rotates exactly
        wait_until(lambda: sum(m["requests"] for m in json.loads(_cli(
            path, "status", "--json"))["pools"][0]["members"]) == 300,
            message="the supervisor to add up both workers' counters")
        assert "workers: 2 of 2 ready" in _cli(path, "status")
        _cli(path, "drain", f"app/{bs[0].address}")
        time.sleep(0.1)     # the promise under test is a time: every worker within 100 ms
        before = bs[0].requests
        for _ in range(60):
            with httpx.Client() as client:
                client.get(c.url())
        assert bs[0].requests == before                 # no worker sent it anything new
    finally:
        code, out = c.stop()
    assert code == 0, out


def test_a_worker_that_dies_is_restarted_and_the_others_carry_on(backends, tmp_path):
    path, port, admin_port = _workers_config(tmp_path, [b.address for b in backends])
    c = Running(path, port)
    try:
        _wait_workers_ready(admin_port, 2)
        first = c.pids()
        os.kill(first[1], signal.SIGKILL)
        # A connection that reaches the dying worker's socket as it closes is one of its
        # own: wait until it is gone, then the other worker must serve every request.
        wait_until(lambda: first[1] not in c.pids(), message="the killed worker to go")
        with httpx.Client() as client:                 # the other worker still serves
            assert client.get(c.url()).status_code == 200
        wait_until(lambda: len(c.pids()) == 3 and c.pids() != first, timeout=15,
                   message="a new worker")
        for _ in range(20):
            with httpx.Client() as client:
                assert client.get(c.url()).status_code == 200
    finally:
        _code, out = c.stop()
    assert "exited with -9; starting it again" in out


def test_with_its_fork_server_gone_a_dead_worker_is_started_as_a_program(backends, tmp_path):
    path, port, admin_port = _workers_config(tmp_path, [b.address for b in backends])
    c = Running(path, port)
    try:
        _wait_workers_ready(admin_port, 2)
        fork_server = next(p for p in c.all_pids() if p not in c.pids())
        os.kill(fork_server, signal.SIGKILL)

        def workers() -> list[tuple[int, bool]]:
            got = httpx.get(f"http://127.0.0.1:{admin_port}/api/v1/status", timeout=5)
            return [(w["pid"], w["ready"]) for w in got.json()["workers"]]
        # Its workers are nobody's children now (the supervisor is told of their ends).
        first = workers()
        os.kill(first[1][0], signal.SIGKILL)
        wait_until(lambda: (w := workers())[1][0] != first[1][0] and w[1][1], timeout=15,
                   message="a new worker")
        assert workers()[1][0] in c.pids()      # a program the supervisor started
        for _ in range(20):
            with httpx.Client() as client:
                assert client.get(c.url()).status_code == 200
    finally:
        code, out = c.stop()
    assert "the fork server" in out and "is gone" in out, out
    assert "exited with -1; starting it again" in out, out      # its code went with it
    assert code == 0, out


@pytest.mark.parametrize("workers", [1, 2])
def test_every_process_stays_single_threaded_through_checks_and_admin_calls(backends, tmp_path,
                                                                            workers):
    """A thread makes the kernel count references on the file table for every read, write
    and epoll call of the data plane; uvloop would start four to resolve each HTTP health
    check's literal address."""
    path, port, _admin_port = _admin_config(tmp_path, [b.address for b in backends])
    path.write_text(f"workers = {workers}\n" + path.read_text() + """
  [pools.health]
  path = "/"
  interval = "100ms"
  rise = 1
""")
    c = Running(path, port)
    try:
        def checked() -> bool:
            members = json.loads(_cli(path, "status", "--json"))["pools"][0]["members"]
            return all(m["health"] == "up" for m in members)     # a check passed on each
        wait_until(checked, timeout=20, message="every member checked")
        with httpx.Client() as client:
            assert {client.get(c.url()).text for _ in range(6)} == {"a", "b", "c"}
        threads = {pid: len(list(Path(f"/proc/{pid}/task").iterdir())) for pid in c.all_pids()}
        assert len(threads) == (1 if workers == 1 else 2 + workers)   # and the fork server
        assert set(threads.values()) == {1}, threads
    finally:
        code, out = c.stop()
    assert code == 0, out
