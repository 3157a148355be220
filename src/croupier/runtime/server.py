"""The running balancer: the model built from a config, its listeners, and the timeout sweep.

Timeouts are deadlines on each connection (a float, 0 for none) swept four times a second,
rather than a timer handle per request: setting a deadline on the hot path is one attribute
write, and a 250 ms granularity is well inside every timeout we offer.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from typing import Protocol

from croupier.config.load import LoadedConfig
from croupier.config.schema import HostCheckConfig, split_address
from croupier.health.checks import Checker
from croupier.health.outlier import Outlier
from croupier.model.state import Host, Member, Pool
from croupier.proxy.client import ClientConnection
from croupier.proxy.listener import Listener
from croupier.proxy.upstream import UpstreamPool

log = logging.getLogger("croupier")

SWEEP_INTERVAL = 0.25


class _HasDeadline(Protocol):
    deadline: float

    def on_timeout(self) -> None: ...


class Balancer:
    """Everything one croupier process serves, built from one validated config."""

    def __init__(self, loaded: LoadedConfig, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loaded = loaded
        self.loop = loop or asyncio.get_event_loop()
        self.connections: set[_HasDeadline] = set()
        self.hosts: dict[str, Host] = {}
        self.pools: dict[str, Pool] = {}
        self.listeners: list[Listener] = []
        self._servers: list[asyncio.AbstractServer] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeps = 0
        self.outlier = Outlier(self)
        self.checker = Checker(self)
        self.host_checks: dict[str, HostCheckConfig] = {}
        config = loaded.config
        for h in config.hosts:
            self.hosts[h.name] = Host(h.name, h.address)
            if h.check is not None:
                self.host_checks[h.name] = h.check
        for pc in config.pools:
            pool = Pool(pc.name, pc.algorithm, pc)
            for spec in loaded.members[pc.name]:
                host = self.hosts.get(spec.host)
                if host is None:     # a member named by address gets a host of that name
                    host = self.hosts[spec.host] = Host(spec.host, spec.address)
                member = Member(pool, spec.name, host, spec.address, spec.port, spec.weight)
                if pc.health is None:
                    member.health = "up"        # nothing checks it: it is up until it fails
                else:
                    # Present at start: serve at once unless the pool says otherwise.
                    member.initial_up = pc.health.initial != "down"
                member.upstream = UpstreamPool(self, member, pc.connect_timeout,
                                               pc.response_timeout, pc.idle_timeout, pc.max_idle)
                host.members.append(member)
                pool.members.append(member)
            pool.refresh()
            self.pools[pc.name] = pool
        for lc in config.listeners:
            self.listeners.append(Listener(self, lc, self.pools))

    def members(self) -> list[Member]:
        return [m for p in self.pools.values() for m in p.members]

    async def start(self) -> None:
        """Bind every listener, or bind none: a config never starts half way."""
        try:
            for listener in self.listeners:
                address, port = split_address(listener.config.listen)
                server = await self.loop.create_server(
                    lambda lst=listener: ClientConnection(lst),
                    address, port, reuse_address=True, backlog=4096,
                    family=socket.AF_INET6 if ":" in address else socket.AF_INET)
                listener.server = server
                self._servers.append(server)
        except OSError as e:
            await self.stop(0)
            raise OSError(e.errno, f"cannot listen on {listener.config.listen} "
                                   f"(listener {listener.name!r}): {e.strerror}") from None
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        self.checker.start()

    def bound_port(self, listener_name: str) -> int:
        """The port a listener got (useful when the config asked for port 0)."""
        for listener in self.listeners:
            if listener.name == listener_name and listener.server is not None:
                sock = listener.server.sockets[0]  # type: ignore[attr-defined]
                return int(sock.getsockname()[1])
        raise KeyError(listener_name)

    def _sweep(self) -> None:
        now = self.loop.time()
        self._sweeps += 1
        if self._sweeps % 4 == 0:           # once a second
            for pool in self.pools.values():
                pool.tick_retry_budget()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            try:
                conn.on_timeout()
            except Exception:   # one broken connection must not stop the sweep
                log.exception("timeout handling failed")
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting; let requests in flight finish (up to `grace` s); close the rest."""
        for server in self._servers:
            server.close()
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline and any(
                isinstance(c, ClientConnection) and (c.current is not None or c.tunnel)
                for c in self.connections):
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.checker.stop()
        for conn in list(self.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def run(loaded: LoadedConfig) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        balancer = Balancer(loaded, loop)
        await balancer.start()
        for listener in balancer.listeners:
            log.info("listener %s on %s (%s) -> pool %s", listener.name, listener.config.listen,
                     listener.mode, listener.default_pool.name)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: letting requests in flight finish")
        await balancer.stop()

    uvloop.run(main())
