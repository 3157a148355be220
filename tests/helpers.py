"""Real servers for the tests: croupier in-process, aiohttp backends, raw-socket backends.

Each runs on its own event loop in a daemon thread, on 127.0.0.1 and an ephemeral port, so a
test talks to them over real sockets with an ordinary blocking client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from croupier.config import validate_config
from croupier.runtime import eventloop
from croupier.runtime.app import build
from croupier.runtime.server import Balancer


class LoopThread:
    """An event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = eventloop.new_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, fn: Callable[[], Any], timeout: float = 10) -> Any:
        """Run a plain function on the loop's thread (to read or change state safely)."""
        async def wrapper() -> Any:
            return fn()
        return self.run(wrapper(), timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dead_port() -> Iterator[int]:
    """A port that is bound but never listens: connecting to it is refused, guaranteed."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield int(s.getsockname()[1])
    finally:
        s.close()


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01,
               message: str = "condition") -> Any:
    """Poll for an event (never a bare sleep in a test)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}")
        time.sleep(interval)


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    def answers() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False
    wait_until(answers, timeout, 0.02, f"port {port}")


CROUPIER = str(Path(sys.executable).parent / "croupier")


# ---- croupier in-process -------------------------------------------------------------------

class Croupier:
    """A Balancer on its own loop thread, built from a config dict."""

    def __init__(self, config: dict[str, Any], path: str = "<config>") -> None:
        # No admin API unless a test asks for one (with its own port, token and state file).
        config.setdefault("admin", {"enabled": False})
        self.loaded = validate_config(config, path)
        self.lt = LoopThread()
        self.balancer = build(Balancer, self.loaded, self.lt.loop)
        self.lt.run(self.balancer.start())
        self.ports = {lst.name: self.balancer.bound_port(lst.name)
                      for lst in self.balancer.listeners}

    @classmethod
    def from_file(cls, path: Any) -> Croupier:
        """From a TOML file on disk (what reload re-reads), admin API as the file says."""
        from croupier.config import load_config
        self = cls.__new__(cls)
        self.loaded = load_config(path)
        self.lt = LoopThread()
        self.balancer = build(Balancer, self.loaded, self.lt.loop)
        self.lt.run(self.balancer.start())
        self.ports = {lst.name: self.balancer.bound_port(lst.name)
                      for lst in self.balancer.listeners}
        return self

    @property
    def port(self) -> int:
        return next(iter(self.ports.values()))

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def member(self, pool: str, index: int) -> Any:
        return self.balancer.pools[pool].members[index]

    def state(self, fn: Callable[[], Any]) -> Any:
        return self.lt.call(fn)

    def close(self) -> None:
        if getattr(self, "closed", False):      # a test may stop it before its fixture does
            return
        self.closed = True
        self.lt.run(self.balancer.stop(0))
        self.lt.stop()


def proxy_config(members: list[str], **listener: Any) -> dict[str, Any]:
    pool = listener.pop("pool_options", {})
    return {
        "listeners": [{"name": "web", "listen": f"127.0.0.1:{free_port()}", "pool": "app",
                       **listener}],
        "pools": [{"name": "app", "members": members, **pool}],
    }


# ---- backends ------------------------------------------------------------------------------

class Backend:
    """An aiohttp application instance with the endpoints the tests need."""

    def __init__(self, lt: LoopThread, name: str) -> None:
        self.name = name
        self.lt = lt
        self.requests = 0
        self.delay = 0.0            # seconds every plain answer waits: a slow member
        self.bytes_sent = 0
        self.connections = 0
        self.app = self._make_app()
        self.runner = web.AppRunner(self.app, access_log=None, handler_cancellation=True)
        lt.run(self.runner.setup())
        self.site = web.TCPSite(self.runner, "127.0.0.1", 0)
        lt.run(self.site.start())
        self.port = int(self.site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.lt.run(self.runner.cleanup())

    def _make_app(self) -> web.Application:
        backend = self

        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            backend.requests += 1
            return await handler(request)

        async def name(request: web.Request) -> web.Response:
            if backend.delay:
                await asyncio.sleep(backend.delay)
            return web.Response(text=backend.name)

        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            return web.json_response({
                "name": backend.name, "method": request.method,
                "raw_path": request.raw_path, "version": f"{request.version.major}."
                f"{request.version.minor}",
                "headers": [[k.decode("latin-1"), v.decode("latin-1")]
                            for k, v in request.raw_headers],
                "body_len": len(body), "body_sha256": hashlib.sha256(body).hexdigest(),
            })

        async def sink(request: web.Request) -> web.Response:
            n = 0
            digest = hashlib.sha256()
            async for chunk in request.content.iter_any():
                n += len(chunk)
                digest.update(chunk)
            return web.json_response({"received": n, "sha256": digest.hexdigest()})

        async def stream(request: web.Request) -> web.StreamResponse:
            total = int(request.query.get("n", "1024"))
            chunk = int(request.query.get("chunk", "65536"))
            resp = web.StreamResponse()
            if request.query.get("chunked") != "1":
                resp.content_length = total
            await resp.prepare(request)
            block = b"x" * chunk
            left = total
            while left > 0:
                piece = block if left >= chunk else block[:left]
                await resp.write(piece)
                backend.bytes_sent += len(piece)
                left -= len(piece)
            await resp.write_eof()
            return resp

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(float(request.query.get("delay", "1")))
            return web.Response(text=f"slow {backend.name}")

        async def status(request: web.Request) -> web.Response:
            code = int(request.match_info["code"])
            return web.Response(status=code, body=None if code in (204, 304) else b"s")

        async def cookies(request: web.Request) -> web.Response:
            resp = web.Response(text="cookies")
            resp.headers.add("Set-Cookie", "a=1; Path=/")
            resp.headers.add("Set-Cookie", "b=2; Path=/")
            return resp

        async def ws(request: web.Request) -> web.WebSocketResponse:
            sock = web.WebSocketResponse()
            await sock.prepare(request)
            async for msg in sock:
                await sock.send_str(f"{backend.name}: {msg.data}")
            return sock

        app = web.Application(middlewares=[web.middleware(count)],
                              client_max_size=2**40)
        app.router.add_route("*", "/echo", echo)
        app.router.add_route("*", "/echo/{tail:.*}", echo)
        app.router.add_post("/sink", sink)
        app.router.add_put("/sink", sink)
        app.router.add_get("/stream", stream)
        app.router.add_get("/slow", slow)
        app.router.add_route("*", "/status/{code}", status)
        app.router.add_get("/cookies", cookies)
        app.router.add_get("/ws", ws)
        app.router.add_route("*", "/{tail:.*}", name)
        return app


class RawBackend:
    """A backend that answers with whatever bytes `respond(request_head)` returns, for
    behaviours no well-behaved server library would produce."""

    def __init__(self, lt: LoopThread,
                 respond: Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.lt = lt
        self.respond = respond
        self.heads: list[bytes] = []
        self.connections = 0
        self.server = lt.run(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = int(self.server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                await self.respond(head, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.server.close()


# ---- a raw HTTP client -----------------------------------------------------------------------

def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes, read until the server closes; return everything it sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def read_response(sock: socket.socket, buf: bytearray,
                  bodyless: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Read one Content-Length or chunked response from `sock` (leftover stays in buf)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before a response head")
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    head = bytes(buf[:end]).decode("latin-1")
    del buf[:end + 4]
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()

    def need(n: int) -> None:
        while len(buf) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            buf.extend(chunk)

    body = b""
    if bodyless or status in (204, 304) or 100 <= status < 200:
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"])
        need(n)
        body = bytes(buf[:n])
        del buf[:n]
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            while b"\r\n" not in buf:
                need(len(buf) + 1)
            line_end = buf.index(b"\r\n")
            size = int(bytes(buf[:line_end]).split(b";")[0], 16)
            del buf[:line_end + 2]
            need(size + 2)
            parts.append(bytes(buf[:size]))
            del buf[:size + 2]
            if size == 0:
                break
        body = b"".join(parts)
    return status, headers, body


def resumed_chain(port: int, ctx: ssl.SSLContext, server_name: str,
                  session: ssl.SSLSession | None, n: int,
                  ) -> tuple[list[bool], ssl.SSLSession | None]:
    """n HTTPS connections, each offering the session the one before it was given (the
    first: `session`): whether each resumed, and the last session."""
    resumed = []
    for _ in range(n):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=server_name, session=session) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % server_name.encode())
            status, _, _ = read_response(s, bytearray())    # TLS 1.3 tickets come after
            assert status == 200
            resumed.append(s.session_reused)
            session = s.session
    return resumed, session


async def ws_echoes(ws: Any, words: tuple[str, ...] = ("one", "two", "three")) -> list[str]:
    """Send each word on an open aiohttp WebSocket and collect the replies (the demo
    backends answer "<name>: <word>")."""
    replies = []
    for word in words:
        await ws.send_str(word)
        replies.append((await ws.receive()).data)
    return replies


def json_body(body: bytes) -> Any:
    return json.loads(body)


# ---- backends as processes (they can be killed, stopped and restarted for real) -------------

class ProcBackend:
    """A demo application instance in its own process: `croupier demo-app`."""

    def __init__(self, name: str, port: int | None = None) -> None:
        import subprocess
        import sys
        self.name = name
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "croupier", "demo-app", "--name", name, "--port",
             str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def restart(self) -> None:
        self.__init__(self.name, self.port)  # type: ignore[misc]

    def close(self) -> None:
        import signal as _signal
        if self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


class Load:
    """`clients` threads sending keep-alive GETs to `url` until stopped (bounded by `limit` s).
    Counts answers by status, failures (anything but 200) with their reason, and per-body."""

    def __init__(self, url: str, clients: int = 20, limit: float = 30.0,
                 verify: Any = True, headers: dict[str, str] | None = None) -> None:
        import collections
        import threading
        self.url = url
        self.verify = verify            # httpx's: an SSLContext trusting a test CA
        self.headers = headers or {}    # {"Connection": "close"}: a connection a request
        self.ok = 0
        self.failed: list[str] = []
        self.bodies: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + limit
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def _run(self) -> None:
        import httpx
        with httpx.Client(timeout=20, verify=self.verify, headers=self.headers) as client:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                try:
                    r = client.get(self.url)
                    outcome = None if r.status_code == 200 else f"{r.status_code} {r.text!r}"
                    body = r.text
                except httpx.HTTPError as e:
                    outcome, body = f"{type(e).__name__}: {e}", ""
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                        self.bodies[body.strip()] += 1
                    else:
                        self.failed.append(outcome)

    def total(self) -> int:
        with self._lock:
            return self.ok + len(self.failed)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


# A pool's health checks for tests that wait on them: a member is up after one check that
# passes and down after one that fails, five checks a second (write_config's pool_extra).
FAST_HEALTH = """
  [pools.health]
  path = "/"
  interval = "200ms"
  timeout = "500ms"
  rise = 1
  fall = 1
"""


def write_config(tmp_path: Any, members: list[str], *, port: int | None = None,
                 admin_port: int | None = None, listener_extra: str = "", hosts: str = "",
                 pool_extra: str = "", top: str = "") -> Any:
    """A croupier.toml with one listener "web" and one pool "app", on free ports (the admin
    API never on the default 9900 that something else may hold); `top`: top-level keys."""
    path = tmp_path / "croupier.toml"
    quoted = ", ".join(f'"{m}"' for m in members)
    path.write_text(f"""{top}
[admin]
listen = "127.0.0.1:{admin_port or free_port()}"

[[listeners]]
name = "web"
listen = "127.0.0.1:{port or free_port()}"
pool = "app"
{listener_extra}

{hosts}

[[pools]]
name = "app"
members = [{quoted}]
{pool_extra}
""")
    return path


# ---- croupier as a user runs it -------------------------------------------------------------

class Running:
    def __init__(self, config: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.proc = subprocess.Popen([CROUPIER, "run", "-c", str(config)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        wait_for_port(port)
        # The listener answers as soon as one worker serves; wait for all of them, as the
        # admin API lists them (none in a single process).
        admin = tomllib.loads(config.read_text())["admin"]["listen"]

        def ready() -> bool:
            try:
                r = httpx.get(f"http://{admin}/api/v1/status", timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and all(w["ready"] for w in r.json()["workers"])
        wait_until(ready, timeout=30, message="croupier and all its workers")

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def all_pids(self) -> list[int]:
        """croupier's processes: the supervisor and every process under it."""
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                todo += map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
        return found

    def pids(self) -> list[int]:
        """The supervisor and its workers (or the one process): not the fork server."""
        def name(pid: int) -> str:
            try:
                return Path(f"/proc/{pid}/comm").read_text().strip()
            except (FileNotFoundError, ProcessLookupError):
                return ""
        return [p for p in self.all_pids() if name(p) != "croupier-fork"]

    def peak_rss_mib(self) -> float:
        """The highest peak RSS of any of croupier's processes."""
        peaks = []
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        assert peaks, "no VmHWM"
        return max(peaks)

    def stop(self) -> tuple[int, str]:
        """SIGTERM and wait; if that hangs, kill every process of croupier's and fail."""
        pids = self.all_pids() if self.proc.poll() is None else [self.proc.pid]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            out, _ = self.proc.communicate(timeout=10)
            raise AssertionError(
                "croupier did not stop on SIGTERM:\n" + out.decode()[-3000:]) from None
        return self.proc.returncode, out.decode()


class Etcd:
    """A real etcd (Debian's etcd-server, tests/install.sh) on two free ports with its own
    temporary data directory. Stopped and started again, it keeps its data: an outage, not a
    new store. Free ports rather than port 0: etcd's gateway breaks on port 0."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        self.proc = subprocess.Popen(
            ["etcd", "--name", "test", "--data-dir", str(self.data_dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"etcd exited with {self.proc.returncode}")
            try:
                return bool(httpx.get(self.url + "/health", timeout=0.5).json()
                            .get("health") == "true")
            except (httpx.HTTPError, ValueError):
                return False
        wait_until(healthy, 30, 0.05, "etcd to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def compact(self) -> int:
        """Compact the history up to the current revision; that revision."""
        rev = int(httpx.post(self.url + "/v3/kv/range", json={"key": "AA=="}, timeout=5)
                  .json()["header"]["revision"])
        httpx.post(self.url + "/v3/kv/compaction", json={"revision": str(rev),
                                                          "physical": True}, timeout=5)
        return rev
