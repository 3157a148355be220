"""Several processes: one supervisor, N workers (`workers = N` in the config).

- Each worker is `croupier worker`, a subprocess that binds its own SO_REUSEPORT socket for
  every listener and runs only the data plane. The kernel spreads new connections across them.
- The supervisor binds no listener. It runs what must run once: health checks, maintenance
  windows, the admin API and the state file, on a model of its own that holds no connection.
- Down, over a socketpair per worker (JSON lines): member and host state (health, admin
  state, weight) whenever it changes, checked every 50 ms, so every worker sees a change
  within 100 ms; membership and config changes as an "apply" (with a reload when the config
  file changed).
- Up, every 100 ms: each worker's counters (requests, failures, retries, in flight,
  latency, ejections); the supervisor adds them up for the admin API and /metrics, and
  `drained` is true only when no worker has anything in flight.
- A worker that dies is started again; only its own connections were affected.
- Passive ejection and the retry budget act in each worker on what that worker sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from croupier.config.load import LoadedConfig, load_config
from croupier.runtime import sockets
from croupier.runtime.server import Balancer, freeze_startup_objects, install_signals

log = logging.getLogger("croupier.workers")

STATE_EVERY = 0.05       # supervisor -> workers: state, when it changed
STATS_EVERY = 0.1        # workers -> supervisor: counters
RESTART_DELAY = 0.5
START_TIMEOUT = 30.0
WATCH_EVERY = 0.2        # how often the supervisor looks whether a worker is still alive


def cores_available() -> int:
    """What `workers = "auto"` means: the cores this process may run on (its CPU affinity, as
    HAProxy counts them, not the machine's), fewer if a cgroup CPU quota allows less."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota() -> float | None:
    """CPUs' worth of time a cgroup allows (v2 cpu.max, or v1 cfs quota/period), if capped."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
                                     "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            fields = Path(quota_file).read_text().split()
            if period_file is not None:
                fields.append(Path(period_file).read_text().strip())
        except OSError:
            continue
        if len(fields) < 2 or fields[0] in ("max", "-1"):
            return None
        try:
            return int(fields[0]) / int(fields[1])
        except (ValueError, ZeroDivisionError):
            return None
    return None


def member_state(balancer: Balancer) -> dict[str, Any]:
    """What the supervisor decides and the workers follow."""
    return {
        "members": {m.key: [m.health, m.admin, m.weight, m.initial_up]
                    for m in balancer.members()},
        "hosts": {h.name: [h.health, h.admin] for h in balancer.hosts.values()},
    }


def apply_state(balancer: Balancer, state: dict[str, Any]) -> None:
    members = state["members"]
    for m in balancer.members():
        got = members.get(m.key)
        if got is not None:
            m.health, m.admin, m.weight, m.initial_up = got[0], dict(got[1]), got[2], got[3]
    for name, (health, admin) in state["hosts"].items():
        host = balancer.hosts.get(name)
        if host is not None:
            host.health, host.admin = health, dict(admin)
    for pool in balancer.pools.values():
        pool.refresh()
        for m in pool.members:
            if not m.eligible and m.upstream is not None:
                m.upstream.close_idle()


def worker_stats(balancer: Balancer) -> dict[str, Any]:
    return {
        "members": {m.key: [m.requests, m.failures, m.retries, m.in_flight, m.answered,
                            m.latency_total, m.ejected]
                    for m in balancer.members()},
        "connections": {lst.name: lst.open_connections for lst in balancer.listeners},
    }


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    await writer.drain()


# ---- the worker ---------------------------------------------------------------------------

def run_worker(config_path: str, channel_fd: int, index: int) -> None:
    """`croupier worker`: serve the listeners, follow the supervisor, report counters."""
    from croupier.runtime import eventloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=channel_fd)
        reader, writer = await asyncio.open_connection(sock=sock)
        first = json.loads(await reader.readline())
        balancer = Balancer(load_config(config_path), loop, role="worker",
                            overlay=first["overlay"])
        apply_state(balancer, first["state"])
        try:
            await balancer.start()
        except OSError as e:
            await _send(writer, {"op": "error", "message": e.strerror or str(e)})
            return
        await _send(writer, {"op": "ready", "pid": os.getpid()})
        freeze_startup_objects()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor reloads us

        async def report() -> None:
            while True:
                await asyncio.sleep(STATS_EVERY)
                try:
                    await _send(writer, {"op": "stats", **worker_stats(balancer)})
                except (ConnectionError, OSError):
                    stop.set()              # the supervisor is gone: so are we
                    return

        async def listen() -> None:
            while True:
                try:
                    line = await reader.readline()
                except (ConnectionError, OSError):
                    line = b""              # a reset, not an end of file: the same to us
                if not line:
                    stop.set()              # the supervisor is gone: so are we
                    return
                msg = json.loads(line)
                if msg["op"] == "state":
                    apply_state(balancer, msg["state"])
                elif msg["op"] == "apply":
                    if msg.get("reload"):
                        await balancer.reload(msg["overlay"])
                    else:
                        balancer.overlay = msg["overlay"]
                        balancer._apply(balancer.loaded, first=False)
                    apply_state(balancer, msg["state"])
                elif msg["op"] == "stop":
                    stop.set()
                    return

        tasks = [loop.create_task(report()), loop.create_task(listen())]
        await stop.wait()
        for t in tasks:
            t.cancel()
        await balancer.stop()

    logging.getLogger().name = f"worker-{index}"
    eventloop.run(main())


# ---- the supervisor -------------------------------------------------------------------------

class Worker:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.stats: dict[str, Any] = {}
        self.ready = False              # this incarnation said it serves
        self.error: str | None = None


class Supervisor:
    def __init__(self, loaded: LoadedConfig, workers: int) -> None:
        self.loaded = loaded
        self.count = workers
        self.workers = [Worker(i) for i in range(workers)]
        self.stopping = False
        self.balancer: Balancer | None = None
        self._last_state = ""
        self._tasks: set[asyncio.Task[Any]] = set()     # held: a task nobody holds may vanish
        self._retired: dict[str, list[float]] = {}    # counters of workers that died

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Workers bind with SO_REUSEPORT, which would let them share a port quietly with
        # another process that set it too (a second croupier): find one first.
        for lc in self.loaded.config.listeners:
            sockets.probe(lc.listen, f"listener {lc.name!r}")
        self.balancer = Balancer(self.loaded, loop, role="supervisor")
        self.balancer.on_change = self._changed
        self.balancer.workers_view = self.view
        await self.balancer.start()
        for w in self.workers:
            await self._spawn(w)
        # Wait for the workers as they are now: one that dies while starting is started again
        # by its watcher, and it is the new one that must say it is ready.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not all(w.ready for w in self.workers):
            failed = next((w.error for w in self.workers if w.error is not None), None)
            if failed is not None or loop.time() > deadline:
                await self.stop()
                raise OSError(0, failed or f"workers did not start in {START_TIMEOUT:g}s")
            await asyncio.sleep(0.02)
        self._task(self._push_state())
        self._task(self._sum_stats())

    def _task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, w: Worker) -> None:
        assert self.balancer is not None
        ours, theirs = socket.socketpair()
        w.ready = False
        w.error = None
        # Plain Popen, watched by polling: uvloop's own process handles take over SIGCHLD
        # through libuv, and after one respawn the supervisor stopped hearing SIGTERM.
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "croupier", "worker", "-c", str(self.loaded.path),
             "--channel-fd", str(theirs.fileno()), "--index", str(w.index)],
            pass_fds=(theirs.fileno(),))
        theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        w.writer = writer
        self.balancer._snapshot_overlay()
        await _send(writer, {"op": "init", "overlay": self.balancer.overlay,
                             "state": member_state(self.balancer)})
        self._task(self._listen(w, reader))
        self._task(self._watch(w))

    async def _listen(self, w: Worker, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                line = await reader.readline()
            except (ConnectionError, OSError):
                line = b""              # the worker died: its watcher starts another
            if not line:
                return
            msg = json.loads(line)
            if msg["op"] == "ready":
                log.info("worker %d ready (pid %d)", w.index, msg["pid"])
                w.ready = True
            elif msg["op"] == "error":
                w.error = msg["message"]
            elif msg["op"] == "stats":
                w.stats = msg

    def view(self) -> list[dict[str, Any]]:
        """The workers, for the admin API's status."""
        return [{"index": w.index, "pid": w.proc.pid if w.proc is not None else None,
                 "ready": w.ready} for w in self.workers]

    async def _watch(self, w: Worker) -> None:
        proc = w.proc
        assert proc is not None
        while (code := proc.poll()) is None:
            await asyncio.sleep(WATCH_EVERY)
        if self.stopping or w.error is not None or w.proc is not proc:
            return
        log.error("worker %d (pid %d) exited with %s; starting it again", w.index, w.proc.pid,
                  code)
        for key, counts in w.stats.get("members", {}).items():   # keep counters monotonic
            kept = self._retired.setdefault(key, [0, 0, 0, 0, 0, 0.0])
            for i in (0, 1, 2, 4, 5):
                kept[i] += counts[i]
        w.stats = {}
        await asyncio.sleep(RESTART_DELAY)
        if not self.stopping:
            await self._spawn(w)

    def _changed(self, reload: bool) -> None:
        """Membership, weights or config changed in the supervisor: tell every worker."""
        assert self.balancer is not None
        self.balancer._snapshot_overlay()
        message = {"op": "apply", "reload": reload, "overlay": self.balancer.overlay,
                   "state": member_state(self.balancer)}
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                self._task(_send(w.writer, message))

    async def _push_state(self) -> None:
        assert self.balancer is not None
        while not self.stopping:
            await asyncio.sleep(STATE_EVERY)
            state = member_state(self.balancer)
            encoded = json.dumps(state, sort_keys=True)
            if encoded == self._last_state:
                continue
            self._last_state = encoded
            for w in self.workers:
                if w.writer is not None and not w.writer.is_closing():
                    with contextlib.suppress(ConnectionError):
                        await _send(w.writer, {"op": "state", "state": state})

    async def _sum_stats(self) -> None:
        """The supervisor's members show the sum of every worker's counters."""
        assert self.balancer is not None
        while not self.stopping:
            await asyncio.sleep(STATS_EVERY)
            totals: dict[str, list[float]] = {k: list(v) for k, v in self._retired.items()}
            ejected: set[str] = set()
            connections: dict[str, int] = {}
            for w in self.workers:
                for key, counts in w.stats.get("members", {}).items():
                    t = totals.setdefault(key, [0, 0, 0, 0, 0, 0.0])
                    for i in range(6):
                        t[i] += counts[i]
                    if counts[6]:
                        ejected.add(key)
                for name, n in w.stats.get("connections", {}).items():
                    connections[name] = connections.get(name, 0) + n
            for m in self.balancer.members():
                key = m.key
                summed = totals.get(key)
                if summed is not None:
                    (m.requests, m.failures, m.retries, m.in_flight, m.answered,
                     m.latency_total) = (int(summed[0]), int(summed[1]), int(summed[2]),
                                         int(summed[3]), int(summed[4]), summed[5])
                # Shown, not acted on: each worker ejects on what it sees itself.
                m.ejected_until = 1.0 if key in ejected else 0.0
            for lst in self.balancer.listeners:
                lst.open_connections = connections.get(lst.name, 0)

    async def stop(self) -> None:
        self.stopping = True
        log.info("stopping %d workers", len(self.workers))
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    await _send(w.writer, {"op": "stop"})
        # The workers' own grace, and a little more for them to close and exit.
        deadline = asyncio.get_running_loop().time() + self.loaded.config.runtime.stop_grace + 5
        for w in self.workers:
            proc = w.proc
            if proc is None:
                continue
            while proc.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(WATCH_EVERY)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if self.balancer is not None:
            await self.balancer.stop(0)


def run_supervised(loaded: LoadedConfig, workers: int) -> None:
    from croupier.runtime import eventloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        supervisor = Supervisor(loaded, workers)

        async def reload() -> None:
            assert supervisor.balancer is not None
            await supervisor.balancer.reload()

        stop, started = install_signals(reload)
        # A SIGTERM while the workers start must stop them, not wait for them.
        starting = loop.create_task(supervisor.start())
        stopping = loop.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await supervisor.stop()
            return
        stopping.cancel()
        starting.result()               # an error while starting ends here, with its message
        started.set()
        for lc in loaded.config.listeners:
            log.info("listener %s on %s (%s) -> pool %s, %d workers", lc.name, lc.listen,
                     lc.mode, lc.pool, workers)
        if supervisor.balancer is not None and supervisor.balancer.admin_port is not None:
            log.info("admin API on %s", loaded.config.admin.listen)
        await stop.wait()
        log.info("stopping: letting requests in flight finish")
        await supervisor.stop()

    eventloop.run(main())
