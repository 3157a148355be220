"""The running balancer: the model built from a config, its listeners, the admin API, and the
timeout sweep.

- Timeouts are deadlines on each connection (a float, 0 for none) swept four times a second,
  rather than a timer handle per request: setting a deadline on the hot path is one attribute
  write, and a 250 ms granularity is well inside every timeout we offer.
- What operators change at run time (admin states, added and removed members, weights,
  maintenance windows) is an overlay on the config, kept in the state file (written
  atomically) and applied again after every start and reload.
- A reload builds the new model in place: pools, members and hosts that are still there keep
  their objects, so their health, admin state, counters and requests in flight carry over;
  a listener whose address is unchanged keeps its socket, so no connection is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol, cast

from croupier.admin.ops import OpError
from croupier.admin.schedule import Scheduler
from croupier.balancing import make_policy
from croupier.config.load import ConfigError, LoadedConfig, MemberSpec, load_config
from croupier.config.schema import HostCheckConfig, PoolConfig
from croupier.health.checks import Checker
from croupier.health.outlier import Outlier
from croupier.model.state import Host, Member, Pool
from croupier.proxy.client import ClientConnection, client_protocol
from croupier.proxy.context import ProxyContext
from croupier.proxy.listener import Listener
from croupier.proxy.upstream import UpstreamPool
from croupier.runtime import sockets, state_file
from croupier.runtime.notify import notify

log = logging.getLogger("croupier")

SWEEP_INTERVAL = 0.25


class Coordinator(Protocol):
    """Who else must agree to a reload: the supervisor's workers."""

    async def prepare(self, loaded: LoadedConfig) -> list[str]:
        """Every worker validates `loaded` and binds its new listeners; the errors, if any
        could not (then all have let go of what they prepared)."""
        ...

    async def commit(self) -> list[dict[str, Any]]:
        """Every worker serves what it prepared; what each says it now serves."""
        ...


class Balancer:
    """Everything one croupier process serves, built from one validated config. A single
    process both serves (binds its listeners, relays requests) and controls (runs the
    checks, the windows, the admin API and the state file); with workers, the supervisor's
    model only controls and each worker's only serves (runtime/workers.py's two types)."""

    serves = True
    controls = True
    reuse_port = False      # a worker's listeners share their port with its siblings'

    def __init__(self, loaded: LoadedConfig, loop: asyncio.AbstractEventLoop | None = None,
                 overlay: dict[str, Any] | None = None,
                 inherited: dict[str, socket.socket] | None = None) -> None:
        # Listening sockets handed down (a worker's, held by its supervisor), by listener.
        self.inherited = inherited or {}
        self.loaded = loaded
        self.loop = loop or asyncio.get_event_loop()
        self.outlier = Outlier(self.loop)
        # What the data plane is given of this process (the listeners and member pools).
        self.context = ProxyContext(self.loop, self.outlier.failure)
        self.connections = self.context.connections
        self.hosts: dict[str, Host] = {}
        self.pools: dict[str, Pool] = {}
        self.listeners: list[Listener] = []
        self.host_checks: dict[str, HostCheckConfig] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeps = 0
        self._admin_server: Any = None
        self._admin_task: asyncio.Task[None] | None = None
        self.admin_port: int | None = None
        self.checker = Checker(self)
        self.scheduler = Scheduler(self, self.loop, self._persist_windows)
        # The supervisor's: after a change of membership or weights (it tells its workers),
        # after any member or host state change (it pushes the new states), and the workers'
        # two phases of a reload.
        self.on_change: Callable[[], None] | None = None
        self.on_state: Callable[[], None] | None = None
        self.coordinator: Coordinator | None = None
        self.workers_view: Any = None   # the supervisor's list of workers, for the status
        admin = loaded.config.admin
        self.state_file = (loaded.beside(admin.state_file)
                           if admin.enabled and self.controls else None)
        if overlay is not None:
            self.overlay = overlay
        elif self.state_file is not None:
            self.overlay = state_file.read(self.state_file)
        else:
            self.overlay = state_file.empty()
        self._apply(loaded, first=True)

    # ---- building the model ---------------------------------------------------------------

    def _apply(self, loaded: LoadedConfig, first: bool) -> None:
        """Make the model match `loaded` plus the overlay, keeping what is still there."""
        config = loaded.config
        overlay = self.overlay
        self.host_checks = {h.name: h.check for h in config.hosts if h.check is not None}
        for h in config.hosts:
            host = self.hosts.get(h.name)
            if host is None:
                self.hosts[h.name] = Host(h.name, h.address)
            else:
                host.address = h.address
        wanted_pools: dict[str, Pool] = {}
        for pc in config.pools:
            pool = self.pools.get(pc.name) or Pool(pc.name, pc.algorithm, make_policy, pc)
            pool.on_refresh = self._state_changed
            pool.configure(pc)
            pool.algorithm = pc.algorithm
            specs = [s for s in loaded.members[pc.name]
                     if f"{pc.name}/{s.name}" not in overlay["removed"]]
            names = {s.name for s in specs}
            for added in overlay["added"]:
                if added["pool"] == pc.name and added["name"] not in names:
                    specs.append(MemberSpec(pc.name, added["name"], added["host"],
                                            added["address"], added["port"], added["weight"]))
                    names.add(added["name"])
            old = {m.name: m for m in pool.members}
            members = []
            for spec in specs:
                member = old.pop(spec.name, None)
                if member is None:
                    member = self._new_member(pool, pc, spec, present_at_start=first)
                else:
                    member.weight = spec.weight
                    self._configure_upstream(member, pc)
                weight = overlay["weights"].get(f"{pc.name}/{spec.name}")
                if weight is not None:
                    member.weight = weight
                member.admin.pop("api", None)
                state = overlay["member_admin"].get(f"{pc.name}/{spec.name}")
                if state is not None:
                    member.admin["api"] = state
                members.append(member)
            for gone in old.values():
                self._retire(gone)
            pool.members = members
            wanted_pools[pc.name] = pool
        for name, pool in self.pools.items():
            if name not in wanted_pools:
                for m in pool.members:
                    self._retire(m)
        self.pools = wanted_pools
        for host in self.hosts.values():
            host.members = [m for p in self.pools.values() for m in p.members if m.host is host]
            host.admin.pop("api", None)
            state = overlay["host_admin"].get(host.name)
            if state is not None:
                host.admin["api"] = state
        for pool in self.pools.values():
            pool.refresh()
        self._drop_stale_overlay()
        # Maintenance windows: the config's, replaced on each load, and the API's, kept. One
        # whose target is gone (removed through the API since) is dropped with a warning: it
        # must never keep croupier from starting or reloading.
        self.scheduler.windows = [w for w in self.scheduler.windows if w.origin == "api"]
        if first:
            now = time.time()
            for w in overlay["windows"]:
                if w["end"] > now:
                    try:
                        self.scheduler.add(w["target"], w["start"], w["end"], w["lead"], "api",
                                           w.get("reason", ""), w["id"])
                    except OpError as e:
                        log.warning("maintenance window %s from the state file dropped: %s",
                                    w.get("id"), e.message)
        for i, mc in enumerate(config.maintenance):
            start, end = mc.span()
            if end > time.time():
                try:
                    self.scheduler.add(mc.target, start, end, mc.lead, "config", mc.reason,
                                       mc.id or f"config-{i + 1}")
                except OpError as e:
                    log.warning("%s: maintenance[%d] (%s) left out: %s", loaded.path, i,
                                mc.target, e.message)

    def _drop_stale_overlay(self) -> None:
        """Admin states and weights the state file holds for members or hosts that are gone
        (the config changed under it) are dropped, each with a warning: the file is advisory."""
        overlay = self.overlay
        keys = {m.key for m in self.members()}
        for kind in ("member_admin", "weights"):
            for key in [k for k in overlay[kind] if k not in keys]:
                log.warning("state file: %s for %s dropped: no such member now", kind, key)
                del overlay[kind][key]
        for name in [h for h in overlay["host_admin"] if h not in self.hosts]:
            log.warning("state file: admin state of host %s dropped: no such host now", name)
            del overlay["host_admin"][name]
        for added in [a for a in overlay["added"] if a["pool"] not in self.pools]:
            log.warning("state file: member %s added to pool %s dropped: no such pool now",
                        added["name"], added["pool"])
            overlay["added"].remove(added)

    def _state_changed(self) -> None:
        if self.on_state is not None:
            self.on_state()

    def _new_member(self, pool: Pool, pc: PoolConfig, spec: MemberSpec,
                    present_at_start: bool) -> Member:
        host = self.hosts.get(spec.host)
        if host is None:     # a member named by address gets a host of that name
            host = self.hosts[spec.host] = Host(spec.host, spec.address)
        member = Member(pool, spec.name, host, spec.address, spec.port, spec.weight)
        member.public_url = spec.public_url
        if pc.health is None:
            member.health = "up"        # nothing checks it: it is up until it fails
        elif pc.health.initial is not None:
            member.initial_up = pc.health.initial == "up"
        else:
            # Present at start: serve at once, so a restart does not black out a pool.
            # Added later: down until its first check passes.
            member.initial_up = present_at_start
        self._configure_upstream(member, pc)
        return member

    def _configure_upstream(self, member: Member, pc: PoolConfig) -> None:
        if member.upstream is None:
            member.upstream = UpstreamPool(self.context, member, pc.connect_timeout,
                                           pc.response_timeout, pc.idle_timeout, pc.max_idle)
        else:
            up = cast(UpstreamPool, member.upstream)
            up.connect_timeout = pc.connect_timeout
            up.response_timeout = pc.response_timeout
            up.idle_timeout = pc.idle_timeout
            up.max_idle = pc.max_idle

    def _retire(self, member: Member) -> None:
        """A member leaves: no new requests; those in flight finish on their own."""
        self.checker.unwatch(member)
        if member.upstream is not None:
            cast(UpstreamPool, member.upstream).max_idle = 0
            member.upstream.close_idle()
        member.record("removed", f"{member.in_flight} request(s) in flight finish")

    def members(self) -> list[Member]:
        return [m for p in self.pools.values() for m in p.members]

    # ---- runtime changes (the admin API) -------------------------------------------------

    def add_member(self, pool_name: str, host_name: str | None, address: str | None, port: int,
                   weight: int) -> Member:
        pool = self.pools.get(pool_name)
        if pool is None or pool.config is None:
            raise OpError(404, f"no pool named {pool_name!r}")
        if (host_name is None) == (address is None):
            raise OpError(422, "give exactly one of host and address")
        if host_name is not None:
            host = self.hosts.get(host_name)
            if host is None:
                raise OpError(404, f"no host named {host_name!r}")
            spec = MemberSpec(pool.name, f"{host_name}:{port}", host_name, host.address, port,
                              weight)
        else:
            assert address is not None
            known = next((h.name for h in self.hosts.values() if h.address == address), address)
            spec = MemberSpec(pool.name, f"{address}:{port}", known, address, port, weight)
        if any(m.name == spec.name for m in pool.members):
            raise OpError(409, f"pool {pool.name!r} already has member {spec.name}")
        key = f"{pool.name}/{spec.name}"
        if key in self.overlay["removed"]:
            self.overlay["removed"].remove(key)
        if not any(m.name == spec.name for m in self._config_specs(pool.name)):
            self.overlay["added"].append({"pool": pool.name, "name": spec.name,
                                          "host": spec.host, "address": spec.address,
                                          "port": port, "weight": weight})
        self.overlay["weights"][key] = weight
        member = self._new_member(pool, pool.config, spec, present_at_start=False)
        pool.members.append(member)
        member.host.members.append(member)
        member.record("added", "by the admin API")
        pool.refresh()
        if pool.config.health is not None:
            self.checker.watch_member(member, pool.config.health)
        return member

    def _config_specs(self, pool: str) -> list[MemberSpec]:
        return self.loaded.members.get(pool, [])

    def remove_member(self, member: Member) -> None:
        pool = member.pool
        key = member.key
        self.overlay["added"] = [a for a in self.overlay["added"]
                                 if not (a["pool"] == pool.name and a["name"] == member.name)]
        if any(s.name == member.name for s in self._config_specs(pool.name)):
            self.overlay["removed"].append(key)
        self.overlay["weights"].pop(key, None)
        self.overlay["member_admin"].pop(key, None)
        pool.members.remove(member)
        if member in member.host.members:
            member.host.members.remove(member)
        self._retire(member)
        pool.refresh()

    def set_weight(self, member: Member, weight: int) -> None:
        before = member.weight
        member.weight = weight
        self.overlay["weights"][member.key] = weight
        member.record(f"weight {before} -> {weight}", "by the admin API")
        member.pool.refresh()

    # ---- the state file --------------------------------------------------------------------

    def _snapshot_overlay(self) -> dict[str, Any]:
        overlay = self.overlay
        overlay["member_admin"] = {m.key: m.admin["api"]
                                   for m in self.members() if "api" in m.admin}
        overlay["host_admin"] = {h.name: h.admin["api"] for h in self.hosts.values()
                                 if "api" in h.admin}
        overlay["windows"] = [{"id": w.id, "target": w.target, "start": w.start, "end": w.end,
                               "lead": w.lead, "reason": w.reason}
                              for w in self.scheduler.windows if w.origin == "api"]
        return overlay

    def _persist_windows(self) -> None:
        """Windows ended: the state file keeps only those still to come."""
        if self.state_file is not None:
            self.save_state()

    def save_state(self, notify: bool = True) -> None:
        """Keep the runtime overlay in the state file (and tell the workers)."""
        overlay = self._snapshot_overlay()
        if notify and self.on_change is not None:
            self.on_change()
        if self.state_file is not None:
            state_file.write(self.state_file, overlay)

    # ---- serving ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind every listener and the admin API, or bind none: a config never starts half way."""
        try:
            for listener in self.listeners_for(self.loaded):
                if self.serves:
                    await self._listen(listener)
            if self.loaded.config.admin.enabled and self.controls:
                await self._start_admin()
        except OSError as e:
            await self.stop(0)
            raise e from None
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)
        if self.controls:
            self.checker.start()
            self.scheduler.start()

    def listeners_for(self, loaded: LoadedConfig) -> Iterator[Listener]:
        for lc in loaded.config.listeners:
            listener = Listener(self.context, lc, self.pools)
            self.listeners.append(listener)
            yield listener

    async def _listen(self, listener: Listener) -> None:
        sock = self.inherited.pop(listener.name, None)
        if sock is None:
            sock = sockets.bind_named(listener.config.listen, f"listener {listener.name!r}",
                                      reuse_port=self.reuse_port)
        listener.server = await self.loop.create_server(
            client_protocol(listener), sock=sock, backlog=4096)

    async def _start_admin(self) -> None:
        import uvicorn

        from croupier.admin.api import build_app

        admin = self.loaded.config.admin
        token = self._admin_token()
        sock = sockets.bind_named(admin.listen, "[admin].listen")
        self.admin_port = sock.getsockname()[1]

        class EmbeddedServer(uvicorn.Server):
            """uvicorn on croupier's loop; croupier, not uvicorn, owns the signals."""

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self._admin_server = EmbeddedServer(uvicorn.Config(
            build_app(self, token), log_level="warning", lifespan="off", access_log=False,
            timeout_graceful_shutdown=2))
        self._admin_task = self.loop.create_task(self._admin_server.serve(sockets=[sock]))
        while not self._admin_server.started:
            if self._admin_task.done():
                self._admin_task.result()
                raise OSError(0, "the admin API did not start")
            await asyncio.sleep(0.01)

    def _admin_token(self) -> str:
        path = self.loaded.beside(self.loaded.config.admin.token_file)
        if path.exists():
            token = path.read_text().strip()
            if token:
                return token
        token = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        log.info("admin token written to %s (mode 0600)", path)
        return token

    def bound_port(self, listener_name: str) -> int:
        """The port a listener got (useful when the config asked for port 0)."""
        for listener in self.listeners:
            if listener.name == listener_name and listener.server is not None:
                sock = listener.server.sockets[0]
                return int(sock.getsockname()[1])
        raise KeyError(listener_name)

    def _sweep(self) -> None:
        now = self.loop.time()
        self._sweeps += 1
        if self._sweeps % 4 == 0:           # once a second
            for pool in self.pools.values():
                pool.tick_retry_budget()
                if pool.ramping:
                    pool.refresh()          # slow start: the next step of the ramp
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            try:
                conn.on_timeout()
            except Exception:   # one broken connection must not stop the sweep
                log.exception("timeout handling failed")
        self._sweeper = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    async def reload(self) -> dict[str, Any]:
        """Re-read the config file (SIGHUP, the admin API). Nothing in flight is dropped; on
        any error nothing changes, anywhere: with workers, every one of them prepares first,
        and the reload is committed only when all could (see Coordinator)."""
        notify("RELOADING=1")
        try:
            return await self._reload()
        finally:
            notify("READY=1")

    async def _reload(self) -> dict[str, Any]:
        try:
            loaded = load_config(self.loaded.path)
        except ConfigError as e:
            return _refused([f"{e.path}: {k}: {r}" for k, r in e.problems])
        try:
            socks = self.bind_new_listeners(loaded)
        except OSError as e:
            return _refused([f"{loaded.path}: {e.strerror}"])
        if self.coordinator is not None:
            errors = await self.coordinator.prepare(loaded)
            if errors:
                return _refused(errors)
        result = await self.commit(loaded, socks)
        if self.coordinator is not None:
            result["workers"] = await self.coordinator.commit()
        return result

    def bind_new_listeners(self, loaded: LoadedConfig,
                           given: dict[str, socket.socket] | None = None
                           ) -> dict[str, socket.socket]:
        """Bind the listeners `loaded` adds or moves, before anything changes, so that a
        reload that cannot listen changes nothing (OSError naming the listener). The
        supervisor serves none itself, but finds another process on a new port; a worker
        takes the sockets its supervisor `given` it."""
        old = {lst.name: lst.config.listen for lst in self.listeners}
        socks: dict[str, socket.socket] = {}
        try:
            for lc in loaded.config.listeners:
                if old.get(lc.name) == lc.listen:
                    continue
                if given and lc.name in given:
                    socks[lc.name] = given[lc.name]
                elif not self.serves:
                    sockets.probe(lc.listen, f"listener {lc.name!r}")
                else:
                    socks[lc.name] = sockets.bind_named(lc.listen, f"listener {lc.name!r}",
                                                        reuse_port=self.reuse_port)
        except OSError:
            for sock in socks.values():
                sock.close()
            raise
        return socks

    async def commit(self, loaded: LoadedConfig,
                     socks: dict[str, socket.socket]) -> dict[str, Any]:
        """Serve `loaded` from now on, with the sockets bind_new_listeners made for it."""
        await self.checker.stop()
        self._snapshot_overlay()
        self.loaded = loaded
        self._apply(loaded, first=False)
        old = {lst.name: lst for lst in self.listeners}
        listeners = []
        for lc in loaded.config.listeners:
            listener = old.pop(lc.name, None)
            if listener is not None and listener.config.listen == lc.listen:
                listener.update(lc, self.pools)
            else:
                if listener is not None and listener.server is not None:
                    listener.server.close()         # open connections finish on their own
                listener = Listener(self.context, lc, self.pools)
                if lc.name in socks:
                    listener.server = await self.loop.create_server(
                        client_protocol(listener), sock=socks[lc.name], backlog=4096)
            listeners.append(listener)
        for gone in old.values():
            if gone.server is not None:
                gone.server.close()
        self.listeners = listeners
        if self.controls:
            self.checker.start()
        self.save_state(notify=False)       # the workers hear of it in the commit
        log.info("config reloaded from %s (%s): %d listener(s), %d pool(s), %d member(s)",
                 loaded.path, loaded.digest[:12], len(listeners), len(self.pools),
                 len(self.members()))
        return {"reloaded": True, "digest": loaded.digest,
                "listeners": sorted(lc.name for lc in loaded.config.listeners),
                "pools": sorted(self.pools), "members": len(self.members())}

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; close idle connections at once, and the others once their request
        in flight is answered, within `grace` seconds ([runtime] stop_grace); then the rest."""
        if grace is None:
            grace = self.loaded.config.runtime.stop_grace
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()
        for conn in list(self.connections):
            if isinstance(conn, ClientConnection):
                conn.shutdown()
        deadline = self.loop.time() + grace
        while self.loop.time() < deadline and any(
                isinstance(c, ClientConnection) and (c.current is not None or c.tunnel)
                for c in self.connections):
            await asyncio.sleep(0.05)
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self.checker.stop()
        await self.scheduler.stop()
        if self._admin_server is not None:
            self._admin_server.should_exit = True
            if self._admin_task is not None:
                with contextlib.suppress(Exception):
                    await self._admin_task
        for conn in list(self.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.close()
        for listener in self.listeners:
            if listener.server is not None:
                await listener.server.wait_closed()


def _refused(errors: list[str]) -> dict[str, Any]:
    """A reload that changes nothing: logged at ERROR with its reasons, and answered so."""
    log.error("reload refused, the running config stays: %s", "; ".join(errors))
    return {"reloaded": False, "errors": errors}
