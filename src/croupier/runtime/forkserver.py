"""The fork server: the process every worker is forked from.

Why: Python cannot set TLS session-ticket keys; a context makes its own when it is created.
Workers started as new programs each make their own, and a client resumes its session only
when the kernel deals its next connection to the same worker (about 1 in N). Forked from one
process that made the TLS listeners' session contexts first (proxy/tls.py, `keep_sessions`),
every worker seals and opens tickets with the same keys, also a worker started later in the
place of one that died.

Why a process of its own: the supervisor runs an event loop (uvloop), and a process forked
from inside a running loop inherits it half way (its epoll set, its signal wakeup, every
connection it holds). The fork server is forked once, before the supervisor's loop starts; it
runs no loop and holds nothing but its channel, and each worker it forks starts a fresh one.

The supervisor asks over a SOCK_SEQPACKET socketpair, one message a worker with the worker's
descriptors (SCM_RIGHTS); the fork server answers with the pid, and later with the exit code
once it has reaped it. It ends when the supervisor closes its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import select
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

log = logging.getLogger("croupier.forkserver")

# What a forked worker runs: (index, its channel's descriptor, the supervisor's descriptor
# numbers to its own) -> exit code.
Main = Callable[[int, int, dict[int, int]], int]

FORK_SERVER_NAME = "croupier-fork"
MAX_FDS = 64
MESSAGE = 4096


class ForkServer:
    """The supervisor's end: `spawn` a worker, follow its exit (`Forked`)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.alive = True
        self._pending: list[asyncio.Future[int]] = []
        self._forked: dict[int, Forked] = {}
        self._exits: dict[int, int] = {}        # reaped before the supervisor knew the pid
        self._reading = False

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._gone()
                return
            msg = json.loads(data)
            if "pid" in msg:
                if self._pending:
                    fut = self._pending.pop(0)
                    if not fut.done():
                        fut.set_result(msg["pid"])
            elif "exited" in msg:
                pid, code = msg["exited"], msg["code"]
                forked = self._forked.pop(pid, None)
                if forked is not None:
                    forked.returncode = code
                else:
                    self._exits[pid] = code

    def _gone(self) -> None:
        if not self.alive:
            return
        self.alive = False
        log.error("the fork server (pid %d) is gone: workers started from now on are new "
                  "programs, and resume only their own TLS sessions", self.pid)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        for fut in self._pending:
            if not fut.done():
                fut.set_exception(ConnectionError("the fork server is gone"))
        self._pending = []
        self.reap()

    async def spawn(self, index: int, channel: socket.socket,
                    fds: list[int]) -> Forked:
        """Fork worker `index`; `channel` (its end of the supervisor's channel) and `fds`
        (descriptors it is told of by number) are handed over."""
        loop = asyncio.get_running_loop()
        if not self._reading:
            self.sock.setblocking(False)
            loop.add_reader(self.sock.fileno(), self._read)
            self._reading = True
        if not self.alive:
            raise ConnectionError("the fork server is gone")
        fut: asyncio.Future[int] = loop.create_future()
        self._pending.append(fut)
        body = json.dumps({"index": index, "fds": fds}).encode()
        try:
            socket.send_fds(self.sock, [body], [channel.fileno(), *fds])
        except OSError:
            self._pending.remove(fut)
            self._gone()
            raise ConnectionError("the fork server is gone") from None
        pid = await fut
        forked = Forked(pid, self)
        code = self._exits.pop(pid, None)
        if code is not None:
            forked.returncode = code
        else:
            self._forked[pid] = forked
        return forked

    def close(self) -> None:
        """The fork server ends when its channel does; reaped here."""
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        self.alive = False
        self.reap(wait=True)

    def reap(self, wait: bool = False) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0 if wait else os.WNOHANG)


class Forked:
    """A worker forked by the fork server, seen from the supervisor: what `subprocess.Popen`
    gives of one (poll, signals, pid), its exit told by the fork server that reaps it."""

    def __init__(self, pid: int, server: ForkServer) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.server = server
        # Its exit is also seen here, should the fork server be gone (it is not our child).
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:
            self._pidfd = None

    def poll(self) -> int | None:
        if self.returncode is None and not self.server.alive and self._exited():
            self.returncode = -1            # its code went with the fork server
        if self.returncode is not None and self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return self.returncode

    def _exited(self) -> bool:
        if self._pidfd is None:
            return True
        return bool(select.select([self._pidfd], [], [], 0)[0])

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(main: Main, close: list[Any]) -> ForkServer:
    """Fork the fork server (before any event loop: see above). `close`: what the supervisor
    holds that the fork server and its workers must not (the instance lock)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:            # the fork server
        code = 0
        try:
            ours.close()
            for thing in close:
                thing.close()
            _serve(theirs, main)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return ForkServer(pid, ours)


def _name(name: str) -> None:
    """What ps and top show for this process (its comm, 15 characters at most)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as f:
        f.write(name[:15])


def _serve(sock: socket.socket, main: Main) -> None:
    _name(FORK_SERVER_NAME)
    # Ctrl-C and a service manager's SIGTERM reach the whole group: the supervisor stops the
    # workers and then closes the channel, which is what ends this process.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            _reap(sock, children)
        if sock.fileno() not in ready:
            continue
        try:
            body, fds, _, _ = socket.recv_fds(sock, MESSAGE, MAX_FDS)
        except ConnectionError:
            body, fds = b"", []
        if not body:
            break
        request = json.loads(body)
        pid = os.fork()
        if pid == 0:        # the worker
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1,
                        signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            sock.close()
            _worker(main, request["index"], fds[0],
                    dict(zip(request["fds"], fds[1:], strict=True)))
        for fd in fds:
            os.close(fd)
        children.add(pid)
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"pid": pid}).encode())
    # The supervisor is gone or done: its workers end when their channels do.
    _reap(sock, children)


def _reap(sock: socket.socket, children: set[int]) -> None:
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, 0
        if done == 0:
            continue
        children.discard(pid)
        with contextlib.suppress(OSError):
            sock.send(json.dumps({"exited": pid,
                                  "code": os.waitstatus_to_exitcode(status)}).encode())


def _worker(main: Main, index: int, channel: int, fds: dict[int, int]) -> None:
    code = 1
    _name(f"croupier-w{index}")
    try:
        os.environ.pop("NOTIFY_SOCKET", None)   # systemd hears from the supervisor only
        code = main(index, channel, fds)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
