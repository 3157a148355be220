"""Several processes: one supervisor, N workers (`workers = N` in the config).

- Each worker is a process forked from the fork server (runtime/forkserver.py: so that all
  share their TLS listeners' session contexts, and so their ticket keys), or `croupier worker`
  started as a new program should the fork server be gone. It serves its own SO_REUSEPORT
  socket for every listener and runs only the data plane. The kernel spreads new connections
  across them.
- The supervisor binds no listener (it probe-binds each first, to find another process on
  it). It runs what must run once: health checks, maintenance windows, the admin API and the
  state file, on a model of its own that holds no connection. It owns the truth: workers
  never read the config file, they are sent the text the supervisor accepted.
- They talk in typed, versioned messages (runtime/messages.py), one JSON line each over a
  socketpair per worker. Down: member and host state, pushed when a pool is refreshed (which
  follows every change), so every worker follows within a loop turn; membership and weight
  changes; a reload in two phases (prepare everywhere, then commit, or abort everywhere).
  Up: each worker's counters every STATS_EVERY; the supervisor adds them up for the admin
  API and /metrics, and `drained` is true only when no worker has anything in flight.
- A worker that dies is started again, with the config the supervisor serves; only its own
  connections were affected.
- Passive ejection and the retry budget act in each worker on what that worker sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from croupier.config.load import ConfigError, LoadedConfig, load_text
from croupier.runtime import forkserver, messages, sockets
from croupier.runtime.forkserver import Forked, ForkServer
from croupier.runtime.messages import (
    Abort,
    Apply,
    Commit,
    Committed,
    Counters,
    Failed,
    HostState,
    Init,
    MemberState,
    Prepare,
    Prepared,
    Push,
    Ready,
    States,
    Stats,
    Stop,
    TallyState,
)
from croupier.runtime.notify import notify
from croupier.runtime.process import freeze_startup_objects, install_signals, until_stopped
from croupier.runtime.server import Balancer

log = logging.getLogger("croupier.workers")

# runtime/app.py's build: (model type, config, loop, saved state, inherited sockets) -> model
Build = Callable[[type[Any], LoadedConfig, asyncio.AbstractEventLoop, "dict[str, Any] | None",
                  "dict[str, socket.socket] | None"], Any]

STATS_EVERY = 0.1        # workers -> supervisor: counters
RESTART_DELAY = 0.5
START_TIMEOUT = 30.0
ANSWER_TIMEOUT = 10.0    # how long a reload waits for every worker's answer
WATCH_EVERY = 0.2        # how often the supervisor looks whether a worker is still alive


class SupervisorModel(Balancer):
    """The supervisor's model: it controls (checks, windows, the admin API, the state file)
    and serves no listener; its workers do, told what it decides."""

    serves = False


class WorkerModel(Balancer):
    """A worker's model: it serves its listeners on sockets its supervisor holds, and
    follows what the supervisor decides; it runs no check and keeps no state file."""

    controls = False
    reuse_port = True


def member_states(balancer: Balancer) -> States:
    """What the supervisor decides and the workers follow."""
    return States(
        members={m.key: MemberState(health=m.health, admin=dict(m.admin), weight=m.weight,
                                    initial_up=m.initial_up) for m in balancer.members()},
        hosts={h.name: HostState(health=h.health, admin=dict(h.admin))
               for h in balancer.hosts.values()})


def apply_states(balancer: Balancer, states: States) -> None:
    for m in balancer.members():
        got = states.members.get(m.key)
        if got is not None:
            m.health, m.admin, m.weight, m.initial_up = (got.health, dict(got.admin),
                                                         got.weight, got.initial_up)
    for name, host_state in states.hosts.items():
        host = balancer.hosts.get(name)
        if host is not None:
            host.health, host.admin = host_state.health, dict(host_state.admin)
    for pool in balancer.pools.values():
        pool.refresh()
        for m in pool.members:
            if not m.eligible and m.upstream is not None:
                m.upstream.close_idle()


def worker_stats(balancer: Balancer) -> Stats:
    return Stats(
        members={m.key: Counters(requests=m.requests, failures=m.failures, retries=m.retries,
                                 in_flight=m.in_flight, answered=m.answered,
                                 latency_total=m.latency_total, ejected=m.ejected,
                                 tally=TallyState.of(m.tally))
                 for m in balancer.members()},
        unserved={p.name: TallyState.of(p.unserved) for p in balancer.pools.values()},
        connections={lst.name: lst.open_connections for lst in balancer.listeners},
        log_written=sum(lg.written for lg in balancer.access_logs.values()),
        log_dropped=sum(lg.dropped for lg in balancer.access_logs.values()),
        tls_failures=dict(balancer.context.tls_failures))


async def _send(writer: asyncio.StreamWriter, message: BaseModel) -> None:
    writer.write(messages.encode(message))
    await writer.drain()


def _problems(e: ConfigError) -> list[str]:
    return [f"{e.path}: {k}: {r}" for k, r in e.problems]


def _listening(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


def _send_sockets(channel: socket.socket, socks: list[socket.socket]) -> None:
    """Hand listening sockets down (SCM_RIGHTS); they arrive before the message naming them."""
    if socks:
        socket.send_fds(channel, [b"s"], [s.fileno() for s in socks])


def _receive_sockets(channel: socket.socket, names: list[str]) -> dict[str, socket.socket]:
    """The sockets _send_sockets sent for `names`: already there, sent before the message
    that names them, so this blocking read returns at once."""
    if not names:
        return {}
    _, fds, _, _ = socket.recv_fds(channel, 16, len(names))
    return {name: _listening(fd) for name, fd in zip(names, fds, strict=True)}


# ---- the worker ---------------------------------------------------------------------------

def run_worker(channel_fd: int, index: int, build: Build,
               fds: dict[int, int] | None = None) -> None:
    """A worker: serve the listeners, follow the supervisor, report counters. `build`: the
    composition root's (runtime/app.py); `fds`: the descriptors the supervisor names, by its
    numbers, where a forked worker holds them under others."""
    mine = fds or {}
    from croupier.runtime import eventloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(fileno=channel_fd)
        reader, writer = await asyncio.open_connection(sock=sock)
        first = messages.to_worker.validate_json(await reader.readline())
        if not isinstance(first, Init):
            raise SystemExit(f"worker {index}: expected init, got {first.op}")
        fd_channel = socket.socket(fileno=mine.get(first.fd_channel, first.fd_channel))
        inherited = {name: _listening(mine.get(fd, fd)) for name, fd in first.sockets.items()}
        try:
            loaded = load_text(first.config, first.path)
        except ConfigError as e:
            await _send(writer, Failed(message="; ".join(_problems(e))))
            return
        balancer = build(WorkerModel, loaded, loop, first.members.model_dump(), inherited)
        apply_states(balancer, first.states)
        try:
            await balancer.start()
        except OSError as e:
            await _send(writer, Failed(message=e.strerror or str(e)))
            return
        # The handlers first: once it says it is ready, its supervisor may signal it (a
        # SIGUSR1 with no handler would end it).
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: None)   # the supervisor reloads us
        loop.add_signal_handler(signal.SIGUSR1, balancer.reopen_logs)
        await _send(writer, Ready(pid=os.getpid(), digest=loaded.digest))
        freeze_startup_objects()
        prepared: dict[int, tuple[LoadedConfig, dict[str, socket.socket]]] = {}

        async def report() -> None:
            while True:
                await asyncio.sleep(STATS_EVERY)
                try:
                    await _send(writer, worker_stats(balancer))
                except (ConnectionError, OSError):
                    stop.set()              # the supervisor is gone: so are we
                    return

        async def follow() -> None:
            while True:
                try:
                    line = await reader.readline()
                except (ConnectionError, OSError):
                    line = b""              # a reset, not an end of file: the same to us
                if not line:
                    stop.set()              # the supervisor is gone: so are we
                    return
                msg = messages.to_worker.validate_json(line)
                if isinstance(msg, Push):
                    apply_states(balancer, msg.states)
                elif isinstance(msg, Apply):
                    balancer.api_members.changes = msg.members
                    balancer.reconcile_members()
                    apply_states(balancer, msg.states)
                elif isinstance(msg, Prepare):
                    given = _receive_sockets(fd_channel, msg.sockets)
                    try:
                        new = load_text(msg.config, balancer.loaded.path)
                        prepared[msg.seq] = (new, balancer.bind_new_listeners(new, given))
                        errors: list[str] = []
                    except ConfigError as e:
                        errors = _problems(e)
                    except OSError as e:
                        errors = [f"worker {index}: {e.strerror or e}"]
                    if errors:
                        for s in given.values():
                            s.close()
                    await _send(writer, Prepared(seq=msg.seq, errors=errors))
                elif isinstance(msg, Commit):
                    if msg.seq not in prepared:
                        await _send(writer, Committed(seq=msg.seq, digest=balancer.loaded.digest,
                                                      errors=["nothing was prepared"]))
                        continue
                    new, socks = prepared.pop(msg.seq)
                    balancer.api_members.changes = msg.members
                    await balancer.commit(new, socks)
                    apply_states(balancer, msg.states)
                    await _send(writer, Committed(seq=msg.seq, digest=balancer.loaded.digest))
                elif isinstance(msg, Abort):
                    _, socks = prepared.pop(msg.seq, (None, {}))
                    for s in socks.values():
                        s.close()
                elif isinstance(msg, Stop):
                    stop.set()
                    return

        tasks = [loop.create_task(report()), loop.create_task(follow())]
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
        self.proc: subprocess.Popen[bytes] | Forked | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.stats: Stats | None = None
        self.ready = False              # this incarnation said it serves
        self.digest = ""                # the config it said it serves
        self.error: str | None = None
        self.answers: dict[int, asyncio.Future[Prepared | Committed]] = {}
        # This slot's listening sockets, by listener: held by the supervisor, so a worker that
        # dies leaves its accept queue open (connections wait, none is refused) and the one
        # started in its place takes the same socket.
        self.sockets: dict[str, socket.socket] = {}
        self.fd_channel: socket.socket | None = None       # the supervisor's end


class Supervisor:
    """Starts the workers, tells them what to serve, and adds up what they count. It is the
    Balancer's Coordinator: a reload is committed only when every worker has prepared it."""

    def __init__(self, loaded: LoadedConfig, workers: int, build: Build,
                 log_args: tuple[str, ...] = (), forks: ForkServer | None = None) -> None:
        self.loaded = loaded
        self.forks = forks
        self.build = build
        self.count = workers
        self.log_args = log_args        # how workers log: as the supervisor does
        self.workers = [Worker(i) for i in range(workers)]
        self.stopping = False
        self.balancer: Balancer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()     # held: a task nobody holds may vanish
        self._retired: dict[str, Counters] = {}         # counters of workers that died
        self._retired_log = (0, 0)                      # their access log lines, dropped
        self._retired_tls: dict[str, int] = {}         # their failed TLS handshakes
        self._retired_unserved: dict[str, TallyState] = {}   # their pools', no member
        self._seq = 0
        self._pushed: States | None = None
        self._push_due = False
        self._preparing: dict[int, dict[str, socket.socket]] = {}     # by worker: new sockets

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # Workers bind with SO_REUSEPORT, which would let them share a port quietly with
        # another process that set it too (a second croupier): find one first.
        for lc in self.loaded.config.listeners:
            sockets.probe(lc.listen, f"listener {lc.name!r}")
        try:
            for w in self.workers:
                w.sockets = self._bind_slot(self.loaded.config.listeners)
        except OSError:
            self._close_slots()
            raise
        self.balancer = self.build(SupervisorModel, self.loaded, loop, None, None)
        self.balancer.on_change = self._changed
        self.balancer.on_state = self._state_changed
        self.balancer.coordinator = self
        self.balancer.workers_view = self.view
        self.balancer.on_reopen = self._reopen_logs
        await self.balancer.start()
        for w in self.workers:
            await self._spawn(w)
        # Wait for the workers as they are now: one that dies while starting is started again
        # by its watcher, and it is the new one that must say it is ready.
        deadline = loop.time() + START_TIMEOUT
        while not all(w.ready for w in self.workers):
            failed = next((w.error for w in self.workers if w.error is not None), None)
            if failed is not None or loop.time() > deadline:
                await self.stop()
                raise OSError(0, failed or f"workers did not start in {START_TIMEOUT:g}s")
            await asyncio.sleep(0.02)
        self._task(self._sum_stats())

    def _task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _live(self) -> list[Worker]:
        return [w for w in self.workers
                if w.ready and w.writer is not None and not w.writer.is_closing()]

    async def _spawn(self, w: Worker) -> None:
        balancer = self.balancer
        assert balancer is not None
        ours, theirs = socket.socketpair()
        fd_ours, fd_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        if w.fd_channel is not None:
            w.fd_channel.close()
        w.fd_channel = fd_ours
        w.ready = False
        w.error = None
        w.answers = {}
        fd_channel = fd_theirs.fileno()     # the worker knows it by this number
        fds = [fd_channel, *(s.fileno() for s in w.sockets.values())]
        w.proc = None
        if self.forks is not None and self.forks.alive:
            with contextlib.suppress(ConnectionError):
                w.proc = await self.forks.spawn(w.index, theirs, fds)
        if w.proc is None:
            # Plain Popen, watched by polling: uvloop's own process handles take over SIGCHLD
            # through libuv, and after one respawn the supervisor stopped hearing SIGTERM.
            w.proc = subprocess.Popen(
                [sys.executable, "-m", "croupier", "worker", "--channel-fd",
                 str(theirs.fileno()), "--index", str(w.index), *self.log_args],
                pass_fds=(theirs.fileno(), *fds),
                # systemd hears from the supervisor only (NotifyAccess=main)
                env={k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"})
        theirs.close()
        fd_theirs.close()
        reader, writer = await asyncio.open_connection(sock=ours)
        w.writer = writer
        loaded = balancer.loaded
        await _send(writer, Init(config=loaded.text, path=str(loaded.path), digest=loaded.digest,
                                 members=balancer.worker_members(),
                                 states=member_states(balancer),
                                 sockets={n: s.fileno() for n, s in w.sockets.items()},
                                 fd_channel=fd_channel))
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
            try:
                msg = messages.to_supervisor.validate_json(line)
            except ValidationError as e:
                log.error("worker %d sent what it should not (%s): stopping it", w.index, e)
                if w.proc is not None:
                    w.proc.kill()
                return
            if isinstance(msg, Stats):
                w.stats = msg
            elif isinstance(msg, Ready):
                w.digest = msg.digest
                assert self.balancer is not None
                if msg.digest != self.balancer.loaded.digest:
                    # Started while a reload was committed: it serves what is no longer
                    # accepted. Its watcher starts it again with what is.
                    log.warning("worker %d started on a config since replaced: restarting it",
                                w.index)
                    if w.proc is not None:
                        w.proc.terminate()
                    continue
                log.info("worker %d ready (pid %d)", w.index, msg.pid)
                w.ready = True
            elif isinstance(msg, Failed):
                w.error = msg.message
            elif isinstance(msg, (Prepared, Committed)):
                answer = w.answers.pop(msg.seq, None)
                if answer is not None and not answer.done():
                    answer.set_result(msg)

    def _reopen_logs(self) -> int:
        """Every worker opens its access logs again (SIGUSR1 to each): how many files."""
        for w in self._live():
            if w.proc is not None:
                w.proc.send_signal(signal.SIGUSR1)
        assert self.balancer is not None
        config = self.balancer.loaded.config
        logs = [lc.access_log or config.access_log for lc in config.listeners]
        return len({(c.path, c.format) for c in logs if c is not None and c.enabled})

    def view(self) -> list[dict[str, Any]]:
        """The workers, for the admin API's status."""
        return [{"index": w.index, "pid": w.proc.pid if w.proc is not None else None,
                 "ready": w.ready, "digest": w.digest,
                 "requests": {k: c.requests for k, c in w.stats.members.items()}
                 if w.stats is not None else {}} for w in self.workers]

    async def _watch(self, w: Worker) -> None:
        proc = w.proc
        assert proc is not None
        while (code := proc.poll()) is None:
            await asyncio.sleep(WATCH_EVERY)
        if self.stopping or w.error is not None or w.proc is not proc:
            return
        log.error("worker %d (pid %d) exited with %s; starting it again", w.index, proc.pid,
                  code)
        for key, counts in (w.stats.members if w.stats is not None else {}).items():
            # keep counters monotonic
            self._retired.setdefault(key, Counters()).add(counts, in_flight=False)
        for pool, unserved in (w.stats.unserved if w.stats is not None else {}).items():
            self._retired_unserved.setdefault(pool, TallyState()).add(unserved)
        if w.stats is not None:
            self._retired_log = (self._retired_log[0] + w.stats.log_written,
                                 self._retired_log[1] + w.stats.log_dropped)
            for why, n in w.stats.tls_failures.items():
                self._retired_tls[why] = self._retired_tls.get(why, 0) + n
        w.stats = None
        w.ready = False
        for answer in w.answers.values():
            if not answer.done():
                answer.set_exception(ConnectionError(f"worker {w.index} exited"))
        await asyncio.sleep(RESTART_DELAY)
        if not self.stopping:
            await self._spawn(w)

    # ---- telling the workers --------------------------------------------------------------

    def _broadcast(self, message: BaseModel) -> None:
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                self._task(_send(w.writer, message))

    def _changed(self) -> None:
        """Membership or weights changed in the supervisor: tell every worker."""
        assert self.balancer is not None
        self._broadcast(Apply(members=self.balancer.worker_members(),
                              states=member_states(self.balancer)))

    def _state_changed(self) -> None:
        """A pool was refreshed: states may have changed. Pushed once this loop turn ends,
        however many pools a change refreshed."""
        if not self._push_due:
            self._push_due = True
            asyncio.get_running_loop().call_soon(self._push)

    def _push(self) -> None:
        self._push_due = False
        if self.balancer is None:
            return
        states = member_states(self.balancer)
        if states != self._pushed:
            self._pushed = states
            self._broadcast(Push(states=states))

    # ---- reloads, in two phases (Balancer's Coordinator) ----------------------------------

    async def _ask(self, workers: list[Worker], message: Prepare | Commit,
                   ) -> list[tuple[Worker, Prepared | Committed | None]]:
        """Send `message` to each worker and wait for its answer (None: none came)."""
        loop = asyncio.get_running_loop()
        waits = []
        for w in workers:
            answer: asyncio.Future[Prepared | Committed] = loop.create_future()
            w.answers[message.seq] = answer
            assert w.writer is not None
            with contextlib.suppress(ConnectionError):
                await _send(w.writer, message)
            waits.append(answer)
        done, _ = await asyncio.wait(waits, timeout=ANSWER_TIMEOUT) if waits else (set(), set())
        return [(w, a.result() if a in done and a.exception() is None else None)
                for w, a in zip(workers, waits, strict=True)]

    def _bind_slot(self, listeners: Any) -> dict[str, socket.socket]:
        """One worker slot's listening sockets for these listener configs (SO_REUSEPORT,
        listening at once: connections queue even before a worker accepts)."""
        slot: dict[str, socket.socket] = {}
        try:
            for lc in listeners:
                sock = sockets.bind_named(lc.listen, f"listener {lc.name!r}", reuse_port=True)
                slot[lc.name] = sock
                sock.listen(4096)
        except OSError:
            for sock in slot.values():
                sock.close()
            raise
        return slot

    def _close_slots(self) -> None:
        for w in self.workers:
            for sock in w.sockets.values():
                sock.close()
            w.sockets = {}
        self._abort_sockets()

    async def prepare(self, loaded: LoadedConfig) -> list[str]:
        self._seq += 1
        workers = self._live()
        if len(workers) < len(self.workers):
            return [f"{len(self.workers) - len(workers)} worker(s) not ready: try again"]
        assert self.balancer is not None
        # The same rule as Balancer.bind_new_listeners, which the workers follow.
        old = {lst.name: lst.config.listen for lst in self.balancer.listeners}
        moved = [lc for lc in loaded.config.listeners if old.get(lc.name) != lc.listen]
        try:
            for w in workers:
                self._preparing[w.index] = self._bind_slot(moved)
        except OSError as e:
            self._abort_sockets()
            return [f"{loaded.path}: {e.strerror or e}"]
        names = [lc.name for lc in moved]
        for w in workers:
            assert w.fd_channel is not None
            _send_sockets(w.fd_channel, [self._preparing[w.index][n] for n in names])
        answers = await self._ask(workers, Prepare(seq=self._seq, config=loaded.text,
                                                   digest=loaded.digest, sockets=names))
        errors = []
        for w, answer in answers:
            if answer is None:
                errors.append(f"worker {w.index} did not answer in {ANSWER_TIMEOUT:g}s")
            else:
                errors += answer.errors
        if errors:
            self._abort_sockets()
            self._broadcast(Abort(seq=self._seq))
        return sorted(set(errors))

    def _abort_sockets(self) -> None:
        for new in self._preparing.values():
            for sock in new.values():
                sock.close()
        self._preparing = {}

    async def commit(self) -> list[dict[str, Any]]:
        assert self.balancer is not None
        balancer = self.balancer
        # The slots take the new sockets; those of listeners removed or moved are let go
        # (a socket nobody accepts on would hold the connections the kernel deals it).
        names = {lc.name for lc in balancer.loaded.config.listeners}
        for w in self.workers:
            new = self._preparing.pop(w.index, {})
            for name in [n for n in w.sockets if n not in names or n in new]:
                w.sockets.pop(name).close()
            w.sockets.update(new)
        answers = await self._ask(self._live(), Commit(seq=self._seq,
                                                       members=balancer.worker_members(),
                                                       states=member_states(balancer)))
        served = []
        for w, answer in answers:
            if (not isinstance(answer, Committed) or answer.errors
                    or answer.digest != balancer.loaded.digest):
                # It cannot serve what all the others serve now: a new one will.
                log.error("worker %d did not take the reload (%s): restarting it", w.index,
                          answer.errors or answer.digest if isinstance(answer, Committed)
                          else "no answer")
                if w.proc is not None:
                    w.proc.terminate()
                continue
            w.digest = answer.digest
            served.append({"index": w.index, "pid": w.proc.pid if w.proc else None,
                           "digest": answer.digest})
        return served

    # ---- counting -------------------------------------------------------------------------

    async def _sum_stats(self) -> None:
        """The supervisor's members show the sum of every worker's counters."""
        assert self.balancer is not None
        while not self.stopping:
            await asyncio.sleep(STATS_EVERY)
            totals = {k: v.model_copy(deep=True) for k, v in self._retired.items()}
            unserved = {k: v.model_copy(deep=True) for k, v in self._retired_unserved.items()}
            ejected: set[str] = set()
            connections: dict[str, int] = {}
            for w in self.workers:
                if w.stats is None:
                    continue
                for key, counts in w.stats.members.items():
                    totals.setdefault(key, Counters()).add(counts)
                    if counts.ejected:
                        ejected.add(key)
                for name, tally in w.stats.unserved.items():
                    unserved.setdefault(name, TallyState()).add(tally)
                for name, n in w.stats.connections.items():
                    connections[name] = connections.get(name, 0) + n
            for name, tally in unserved.items():
                if name in self.balancer.pools:
                    self.balancer.pools[name].unserved = tally.tally()
            for m in self.balancer.members():
                summed = totals.get(m.key)
                if summed is not None:
                    m.requests, m.failures, m.retries = (summed.requests, summed.failures,
                                                         summed.retries)
                    m.in_flight, m.answered = summed.in_flight, summed.answered
                    m.latency_total = summed.latency_total
                    m.tally = summed.tally.tally()
                # Shown, not acted on: each worker ejects on what it sees itself.
                m.ejected_until = 1.0 if m.key in ejected else 0.0
            for lst in self.balancer.listeners:
                lst.open_connections = connections.get(lst.name, 0)
            written, dropped = self._retired_log
            failures = dict(self._retired_tls)
            for w in self.workers:
                if w.stats is not None:
                    written += w.stats.log_written
                    dropped += w.stats.log_dropped
                    for why, n in w.stats.tls_failures.items():
                        failures[why] = failures.get(why, 0) + n
            self.balancer.log_counts = (written, dropped)
            self.balancer.tls_failure_counts = failures

    async def stop(self) -> None:
        self.stopping = True
        log.info("stopping %d workers", len(self.workers))
        # The workers hold their own copies while they finish; a connection that comes now is
        # refused at once rather than queued on a socket that will not be served.
        self._close_slots()
        for w in self.workers:
            if w.writer is not None and not w.writer.is_closing():
                with contextlib.suppress(ConnectionError):
                    await _send(w.writer, Stop())
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
                while proc.poll() is None and asyncio.get_running_loop().time() < deadline + 5:
                    await asyncio.sleep(0.01)
        if self.balancer is not None:
            await self.balancer.stop(0)
        self._close_slots()
        if self.forks is not None:
            self.forks.close()


def run_supervised(loaded: LoadedConfig, workers: int, build: Build,
                   log_args: tuple[str, ...] = (), close: list[Any] | None = None) -> None:
    """The supervisor's process; `build`: the composition root's (runtime/app.py);
    `close`: what the workers must not hold (the instance lock)."""
    from croupier.proxy.tls import keep_sessions
    from croupier.runtime import eventloop

    # Before any loop: the fork server is forked from this process as it is now.
    kept = keep_sessions(loaded.config.listeners, loaded.beside("."))
    if kept:
        log.info("TLS sessions resume across workers on %s", ", ".join(kept))

    def forked(index: int, channel: int, fds: dict[int, int]) -> int:
        run_worker(channel, index, build, fds)
        return 0

    forks = forkserver.start(forked, close or [])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        supervisor = Supervisor(loaded, workers, build, log_args, forks)

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
        notify("READY=1")               # every worker has said it serves
        for lc in loaded.config.listeners:
            log.info("listener %s on %s (%s) -> pool %s, %d workers", lc.name, lc.listen,
                     lc.mode, lc.pool, workers)
        if supervisor.balancer is not None and supervisor.balancer.admin_port is not None:
            log.info("admin API on %s", loaded.config.admin.listen)
        await until_stopped(stop, supervisor.stop)

    eventloop.run(main())
