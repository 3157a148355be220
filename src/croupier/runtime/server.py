"""The running balancer: the model built from a config, its listeners, the admin API, and the
timeout sweep.

- Timeouts are deadlines on each connection (a float, 0 for none) swept four times a second,
  rather than a timer handle per request: setting a deadline on the hot path is one attribute
  write, and a 250 ms granularity is well inside every timeout we offer.
- Members come from sources (croupier.sources: the config file, the admin API), and every
  change of membership, whoever asked, goes through the one reconcile (model/reconcile.py):
  members, pools and hosts that stay keep their objects, so their health, admin state,
  counters and requests in flight carry over. What operators change at run time is kept in
  the state file (written atomically) and restored at start.
- A listener whose address is unchanged by a reload keeps its socket: no connection drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from croupier import __version__
from croupier.admin.dashboard import Dashboard
from croupier.admin.ops import OpError, Target, set_state
from croupier.admin.schedule import Scheduler
from croupier.aio import cancelled
from croupier.cluster.discovery import PoolDiscovery
from croupier.cluster.etcd import EtcdError, client_for
from croupier.cluster.fleet import Conflict, Fleet
from croupier.cluster.registry import Registration, instances
from croupier.cluster.shared import shared_part
from croupier.config.certificates import CertificateError, certificate_end, member_context
from croupier.config.load import ConfigError, LoadedConfig, MemberSpec, load_config
from croupier.config.schema import ListenerConfig, PoolConfig, split_address
from croupier.health.checks import Checker
from croupier.model.policy import PolicyFactory
from croupier.model.reconcile import Changes, reconcile
from croupier.model.state import Host, Member, Model
from croupier.proxy.access_log import AccessLog
from croupier.proxy.client import ClientConnection, client_protocol
from croupier.proxy.context import ProxyContext
from croupier.proxy.listener import Listener
from croupier.proxy.proxy_protocol import proxy_protocol
from croupier.proxy.tls import ListenerTls, load_table
from croupier.proxy.tls_layer import tls_protocol
from croupier.proxy.upstream import UpstreamPool
from croupier.runtime import sockets, state_file
from croupier.runtime.notify import notify
from croupier.sources import Source, stack
from croupier.sources.admin_api import AddedMember, AdminApi, ApiMembers
from croupier.sources.config_file import ConfigFile
from croupier.sources.discovery import Discovery

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


@dataclass
class Parts:
    """What a Balancer is made of, made by the composition root (runtime/app.py)."""

    model: Model
    context: ProxyContext
    checker: Checker
    scheduler: Scheduler
    make_policy: PolicyFactory
    config_members: ConfigFile          # the sources, bottom up
    api_members: AdminApi
    admin_app: Callable[[Any, str], Any]    # (the instance, its token) -> the ASGI app
    state_file: Path | None             # where what operators change is kept, if anywhere


class Balancer:
    """Everything one croupier process serves, built from one validated config. A single
    process both serves (binds its listeners, relays requests) and controls (runs the
    checks, the windows, the admin API and the state file); with workers, the supervisor's
    model only controls and each worker's only serves (runtime/workers.py's two types)."""

    serves = True
    controls = True
    reuse_port = False      # a worker's listeners share their port with its siblings'

    def __init__(self, loaded: LoadedConfig, parts: Parts, saved: dict[str, Any],
                 inherited: dict[str, socket.socket] | None = None) -> None:
        """`parts`: what the composition root (runtime/app.py's build) made for it; `saved`:
        what the state file kept; `inherited`: listening sockets handed down (a worker's,
        held by its supervisor), by listener."""
        self.inherited = inherited or {}
        self.loaded = loaded
        self.parts = parts
        self.loop = parts.context.loop
        self.model = parts.model
        self.hosts = parts.model.hosts          # the same dicts: reconcile changes them in place
        self.pools = parts.model.pools
        self.context = parts.context            # what the data plane is given of this process
        self.connections = parts.context.connections
        self.checker = parts.checker
        self.scheduler = parts.scheduler
        self.scheduler.persist = self._persist_windows
        self.config_members = parts.config_members
        self.api_members = parts.api_members
        self.listeners: list[Listener] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweeps = 0
        self._admin_server: Any = None
        self._admin_task: asyncio.Task[None] | None = None
        self._dashboard: Dashboard | None = None     # started with the admin API
        self.admin_port: int | None = None
        # Open access logs, by (path, format): listeners that share one share its buffer.
        self.access_logs: dict[tuple[str, bool], AccessLog] = {}
        self._certificate_ends: dict[tuple[str, int], float] = {}    # by file and mtime
        self.tls_failure_counts: dict[str, int] | None = None   # set by a supervisor
        self._member_tls: dict[tuple[str, str], ssl.SSLContext] = {}   # by pool and config
        # The supervisor's: after a change of membership or weights (it tells its workers),
        # after any member or host state change (it pushes the new states), and the workers'
        # two phases of a reload.
        self.on_change: Callable[[], None] | None = None
        self.on_state: Callable[[], None] | None = None
        self.coordinator: Coordinator | None = None
        self.workers_view: Any = None   # the supervisor's list of workers, for the status
        self.on_reopen: Callable[[], int] | None = None     # the supervisor's: tell workers
        self.log_counts: tuple[int, int] | None = None      # the supervisor's: workers' sum
        self.state_file = parts.state_file
        # The admin listener and the fleet's connection are made once, at start, by the
        # process that controls: a reload that changes their sections says they wait for a
        # restart.
        self.started_with = {"admin": loaded.config.admin, "cluster": loaded.config.cluster}
        # A fleet ([cluster]): the shared admin state and this instance's entry in its list
        self.fleet: Fleet | None = None
        self.discovery: Discovery | None = None     # pools' self-registered members
        self.instance_name = ""
        self.registration: Registration | None = None
        self._registration_task: asyncio.Task[None] | None = None
        self.reconcile_members(at_start=True)
        self._restore(saved)
        self._load_windows(loaded)

    # ---- building the model ---------------------------------------------------------------

    def reconcile_members(self, at_start: bool = False) -> Changes:
        """The model, made to hold what the sources want now."""
        sources: list[Source] = [self.config_members]
        if self.discovery is not None:
            sources.append(self.discovery)
        sources.append(self.api_members)
        changes = reconcile(self.hosts, self.pools, self.loaded.config, stack(sources),
                            self.parts.make_policy, self, at_start, self._state_changed)
        self.model.host_checks = {h.name: h.check for h in self.loaded.config.hosts
                                  if h.check is not None}
        if self.checker.running:    # watch who came
            for member in changes.added:
                health = member.pool.config.health if member.pool.config else None
                if health is not None:
                    self.checker.watch_member(member, health)
        return changes

    def attach(self, member: Member, pc: PoolConfig) -> None:
        """The upstream side of a member (model.reconcile's Attach)."""
        if member.upstream is None:
            member.upstream = UpstreamPool(self.context, member, pc.connect_timeout,
                                           pc.response_timeout, pc.idle_timeout, pc.max_idle)
        up = cast(UpstreamPool, member.upstream)
        up.connect_timeout = pc.connect_timeout
        up.response_timeout = pc.response_timeout
        up.idle_timeout = pc.idle_timeout
        up.max_idle = pc.max_idle
        send_proxy = {"v1": 1, "v2": 2}.get(pc.send_proxy or "", 0)
        if send_proxy != up.send_proxy:
            up.close_idle()                 # opened with another header, or none
        up.send_proxy = send_proxy
        tls = self.member_tls(pc)
        if tls is not up.tls:
            up.close_idle()                 # kept connections were made the old way
        up.tls = tls
        up.server_name = (pc.tls.server_name or "") if pc.tls is not None else ""

    def member_tls(self, pc: PoolConfig) -> ssl.SSLContext | None:
        """A pool's client context for TLS to its members, made once a config."""
        if pc.tls is None:
            return None
        key = (pc.name, self.loaded.digest)
        ctx = self._member_tls.get(key)
        if ctx is None:
            t = pc.tls
            beside = self.loaded.beside
            ctx = member_context(beside(t.ca) if t.ca else None, t.verify,
                                 beside(t.cert) if t.cert else None,
                                 beside(t.key) if t.key else None)
            self._member_tls = {k: v for k, v in self._member_tls.items()
                                if k[1] == self.loaded.digest}
            self._member_tls[key] = ctx
        return ctx

    def retire(self, member: Member) -> None:
        """A member left: no new requests; those in flight finish on their own."""
        self.checker.unwatch(member)
        if member.upstream is not None:
            cast(UpstreamPool, member.upstream).max_idle = 0
            member.upstream.close_idle()

    def _restore(self, saved: dict[str, Any]) -> None:
        """At start: what the state file kept (no history: nothing changed)."""
        self.apply_overlay(saved, quiet=True, source="state file")

    def apply_overlay(self, saved: dict[str, Any], cause: str = "", quiet: bool = False,
                      source: str = "state file") -> None:
        """Make the model hold `saved`: what operators set at run time, as the state file
        keeps it (and as the fleet shares it). Membership goes through the one reconcile;
        admin states of origin `api` are set or cleared where they differ, so that one already
        held records nothing; windows of origin `api` are added, replaced or cancelled by id.
        Whatever names a member, host or target that is gone is dropped with a warning: the
        overlay is advisory and must never keep croupier from starting or going on. `quiet`:
        set without history or closing idle connections (at start, nothing changed);
        `source` names where the overlay came from in the warnings."""
        changes = state_file.api_members(saved)
        if changes != self.api_members.changes:
            self.api_members.changes = changes
            self.reconcile_members()
        self._apply_admin("api", saved.get("member_admin", {}), saved.get("host_admin", {}),
                          cause, quiet, source)
        if "local_member_admin" in saved:   # this instance's own (the state file's, not the
            self._apply_admin("local", saved["local_member_admin"],    # fleet's)
                              saved.get("local_host_admin", {}), cause, quiet, source)
        if quiet:
            for pool in self.pools.values():
                pool.refresh()
        self._apply_windows(saved.get("windows", []), source)

    def _apply_admin(self, origin: str, member_admin: dict[str, str],
                     host_admin: dict[str, str], cause: str, quiet: bool, source: str) -> None:
        """The admin states of `origin`: set where they differ, cleared where none is given."""
        members = {m.key: m for m in self.members()}
        targets: list[tuple[Member | Host, Target, str]] = []
        for key in member_admin.keys() - members.keys():
            log.warning("%s: admin state of %s dropped: no such member now", source, key)
        for key, m in members.items():
            targets.append((m, Target(key, members=(m,)), member_admin.get(key, "ready")))
        for name in host_admin.keys() - self.hosts.keys():
            log.warning("%s: admin state of host %s dropped: no such host now", source,
                        name)
        for name, h in self.hosts.items():
            targets.append((h, Target(f"host:{name}", host=h), host_admin.get(name, "ready")))
        for obj, target, state in targets:
            if obj.admin.get(origin, "ready") == state:
                continue
            if not quiet:
                set_state(target, state, origin, cause)
            elif state == "ready":
                obj.admin.pop(origin, None)
            else:
                obj.admin[origin] = state

    def _apply_windows(self, saved: list[dict[str, Any]], source: str) -> None:
        now = time.time()
        wanted = {w["id"]: w for w in saved if w["end"] > now}
        for w in [w for w in self.scheduler.windows if w.origin == "api"]:
            kept = wanted.get(w.id)
            if kept is None or (kept["target"], kept["start"], kept["end"], kept["lead"],
                                kept.get("reason", "")) != (w.target, w.start, w.end,
                                                            w.lead, w.reason):
                self.scheduler.remove(w.id)
            else:
                del wanted[w.id]            # held already, as it is
        for saved_window in wanted.values():
            try:
                self.scheduler.add(saved_window["target"], saved_window["start"],
                                   saved_window["end"], saved_window["lead"], "api",
                                   saved_window.get("reason", ""), saved_window["id"])
            except OpError as e:
                log.warning("maintenance window %s from the %s dropped: %s",
                            saved_window["id"], source, e.message)

    def _load_windows(self, loaded: LoadedConfig) -> None:
        """The config's maintenance windows, replaced on each load (the API's are kept). One
        whose target is gone is left out with a warning."""
        self.scheduler.windows = [w for w in self.scheduler.windows if w.origin == "api"]
        for i, mc in enumerate(loaded.config.maintenance):
            start, end = mc.span()
            if end > time.time():
                try:
                    self.scheduler.add(mc.target, start, end, mc.lead, "config", mc.reason,
                                       mc.id or f"config-{i + 1}")
                except OpError as e:
                    log.warning("%s: maintenance[%d] (%s) left out: %s", loaded.path, i,
                                mc.target, e.message)

    def _state_changed(self) -> None:
        if self.on_state is not None:
            self.on_state()

    def members(self) -> list[Member]:
        return self.model.members()

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
        self.api_members.add(spec, self.config_members.want({}))
        self.reconcile_members()
        member = next(m for m in pool.members if m.name == spec.name)
        member.record("added", "by the admin API")
        return member

    def remove_member(self, member: Member) -> None:
        self.api_members.remove(member.pool.name, member.name, self.config_members.want({}))
        self.reconcile_members()

    def set_weight(self, member: Member, weight: int) -> None:
        before = member.weight
        self.api_members.set_weight(member.pool.name, member.name, weight)
        self.reconcile_members()
        member.record(f"weight {before} -> {weight}", "by the admin API")

    # ---- the state file --------------------------------------------------------------------

    def saved_state(self) -> dict[str, Any]:
        """What the state file keeps: what operators changed at run time."""
        return self.api_members.changes.model_dump() | {
            "member_admin": {m.key: m.admin["api"] for m in self.members() if "api" in m.admin},
            "host_admin": {h.name: h.admin["api"] for h in self.hosts.values()
                           if "api" in h.admin},
            # set with --local: this instance's alone, never the fleet's
            "local_member_admin": {m.key: m.admin["local"] for m in self.members()
                                   if "local" in m.admin},
            "local_host_admin": {h.name: h.admin["local"] for h in self.hosts.values()
                                 if "local" in h.admin},
            "windows": [{"id": w.id, "target": w.target, "start": w.start, "end": w.end,
                         "lead": w.lead, "reason": w.reason}
                        for w in self.scheduler.windows if w.origin == "api"]}

    def _persist_windows(self) -> None:
        """Windows ended: the state file keeps only those still to come."""
        if self.state_file is not None:
            self.save_state()

    def save_state(self, notify: bool = True) -> None:
        """Keep what operators changed in the state file (and tell the workers)."""
        if notify and self.on_change is not None:
            self.on_change()
        if self.state_file is not None:
            state_file.write(self.state_file, self.saved_state())

    # ---- the fleet (cluster/) ----------------------------------------------------------------

    def _start_fleet(self) -> None:
        cluster = self.loaded.config.cluster
        if cluster is None:
            return
        client = client_for(cluster, self.loaded.beside)
        self.instance_name = cluster.instance or socket.gethostname()
        self.fleet = Fleet(client, cluster.prefix, self._fleet_changed)
        self.fleet.start()
        self.registration = Registration(client, cluster.prefix, self.instance_name,
                                         cluster.lease_ttl, self._fleet_entry)
        pools = [PoolDiscovery(client, cluster.prefix, pc, self._discovery_changed)
                 for pc in self.loaded.config.pools if pc.discovery is not None]
        if pools:
            self.discovery = Discovery(pools)
            for d in pools:
                d.start()
        self._registration_task = self.loop.create_task(self.registration.run())

    async def _stop_fleet(self) -> None:
        if self.fleet is None:
            return
        await cancelled(self._registration_task)
        if self.registration is not None:
            await self.registration.leave()
        for d in self.discovery.pools if self.discovery is not None else []:
            await d.stop()
        await self.fleet.stop()
        await self.fleet.client.close()

    def _fleet_changed(self, overlay: dict[str, Any], revision: int) -> None:
        """The fleet's state changed (here or on another instance): applied as any overlay,
        and kept in the state file, from which an instance starts while etcd is down."""
        self.apply_overlay(overlay, cause=f"by the fleet (revision {revision})", source="fleet")
        self.save_state()
        if self.registration is not None:
            self.registration.poke()        # the others learn of the revision applied at once

    def _discovery_changed(self) -> None:
        """Members registered or left (or began a clean stop): the one reconcile, then the
        stopping ones drained (origin "discovery"), and the workers told."""
        self.reconcile_members()
        assert self.discovery is not None
        for d in self.discovery.pools:
            pool = self.pools.get(d.pool)
            for m in pool.members if pool is not None else []:
                state = "drain" if m.name in d.draining else "ready"
                if m.admin.get("discovery", "ready") != state:
                    set_state(Target(m.key, members=(m,)), state, "discovery",
                              "its registrant is stopping" if state == "drain" else "")
        if self.on_change is not None:
            self.on_change()
        if self.registration is not None:
            self.registration.poke()        # a registrant waits for every instance's view

    def worker_members(self) -> ApiMembers:
        """The membership workers are sent: what the API changed, and the members registered
        through discovery as if added (workers reconcile the same way from it)."""
        changes = self.api_members.changes
        if self.discovery is None:
            return changes
        known = {(pool, name) for pool, members in self.config_members.want({}).items()
                 for name in members} | {(a.pool, a.name) for a in changes.added}
        extra = [AddedMember(pool=s.pool, name=s.name, host=s.host, address=s.address,
                             port=s.port, weight=s.weight)
                 for d in self.discovery.pools for s in d.members.values()
                 if (s.pool, s.name) not in known]
        return changes.model_copy(update={"added": [*changes.added, *extra]}) if extra \
            else changes

    def _fleet_entry(self) -> dict[str, Any]:
        """What this instance publishes in the fleet's list."""
        fleet = self.fleet
        return {
            "version": __version__,
            "config_digest": self.loaded.fleet_digest,
            "admin": (f"{self.loaded.config.admin.listen.rsplit(':', 1)[0]}:{self.admin_port}"
                      if self.admin_port else None),
            "applied": fleet.applied if fleet is not None else 0,
            "connected": fleet.connected if fleet is not None else False,
            "members": {m.key: {"health": m.health, "admin": m.admin_state,
                                "in_flight": m.in_flight} for m in self.members()},
        }

    def fleet_metrics(self) -> dict[str, float] | None:
        fleet = self.fleet
        if fleet is None:
            return None
        return {"connected": float(fleet.connected), "applied": float(fleet.applied),
                "lag": max(0.0, time.time() - fleet.heard),
                "skipped": float(len(self._skipped_keys())),
                "resyncs": float(fleet.resyncs)}

    async def fleet_ready(self) -> None:
        """Before a change an operator asks for: with a fleet, this instance's copy of its
        state is brought to the store's present, so that the change is made on top of what
        the store holds; with a store that does not answer, the change is refused (503), not
        made here alone nor queued to be lost."""
        fleet = self.fleet
        if fleet is None:
            return
        refused = "the fleet's store (etcd) does not answer from this instance: nothing was " \
                  "changed"
        if not fleet.connected:
            raise OpError(503, refused)
        try:
            await fleet.refresh()
        except EtcdError as e:
            raise OpError(503, f"{refused} ({e})") from None

    async def fleet_view(self) -> dict[str, Any]:
        """This instance's side of the fleet and the list of instances, with where their views
        of the members disagree."""
        fleet, cluster = self.fleet, self.loaded.config.cluster
        if fleet is None or cluster is None:
            raise OpError(404, "this instance is in no fleet (its config has no [cluster])")
        try:
            found, bad = await instances(fleet.client, cluster.prefix)
        except EtcdError as e:
            raise OpError(503, f"the fleet's store (etcd) does not answer: {e}") from None
        views: dict[str, dict[str, str]] = {}
        for entry in found:
            for key, m in entry.get("members", {}).items():
                views.setdefault(key, {})[entry["name"]] = f"{m.get('health')}/{m.get('admin')}"
        return {
            "instance": self.instance_name, "prefix": cluster.prefix,
            "connected": fleet.connected, "applied": fleet.applied, "resyncs": fleet.resyncs,
            "instances": found,
            "config_digests_differ": len({e.get("config_digest") for e in found}) > 1,
            "disagreements": {k: v for k, v in views.items() if len(set(v.values())) > 1},
            "skipped_keys": self._skipped_keys() + [f"{k}: not an instance entry" for k in bad]}

    def _skipped_keys(self) -> list[str]:
        """Keys under the prefix not taken, with why: shared state that does not parse, and
        registrations refused (not parsing, or outside the pool's allowed_networks)."""
        refused = [r for d in self.discovery.pools for r in d.refused] if self.discovery else []
        return (self.fleet.skipped if self.fleet is not None else []) + refused

    async def commit_change(self, local: bool = False) -> int | None:
        """An operator's change was made to the model: kept in the state file alone, or with a
        fleet, written to etcd and applied once the watch brings it back (every instance
        applies it the same way). Refused by etcd (a conflicting change came first, or it
        stopped answering), the change is undone here and the reason raised."""
        fleet = self.fleet
        if fleet is None or local:
            self.save_state()
            return None
        try:
            revision = await fleet.commit(self.saved_state())
        except (Conflict, EtcdError) as e:
            # Undone to the fleet's state as it is now, not as it was before: the watch may
            # have brought the change that won meanwhile, and will bring nothing more.
            self.apply_overlay(fleet.overlay if fleet.overlay is not None
                               else shared_part(state_file.empty()),
                               cause="undone: the fleet refused the change", source="fleet")
            self.save_state()
            if isinstance(e, Conflict):
                raise OpError(409, str(e)) from None
            raise OpError(503, f"the fleet's store (etcd) did not take the change, which is "
                               f"undone here: {e}") from None
        cluster = self.loaded.config.cluster
        await fleet.wait_applied(revision, cluster.timeout if cluster else 2.0)
        return revision

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
            self._start_fleet()

    def listeners_for(self, loaded: LoadedConfig) -> Iterator[Listener]:
        for lc in loaded.config.listeners:
            listener = Listener(self.context, lc, self.pools, self._access_log(loaded, lc),
                                self._tls(loaded, lc), _redirect_port(loaded, lc))
            self.listeners.append(listener)
            yield listener

    async def _listen(self, listener: Listener) -> None:
        sock = self.inherited.pop(listener.name, None)
        if sock is None:
            sock = sockets.bind_named(listener.config.listen, f"listener {listener.name!r}",
                                      reuse_port=self.reuse_port)
        listener.server = await self._serve(listener, sock)

    async def _serve(self, listener: Listener, sock: socket.socket) -> asyncio.Server:
        # TLS is croupier's own layer (proxy/tls_layer.py), not uvloop's: measured the same
        # in requests a second, less memory an idle connection, and it can count failed
        # handshakes, answer plain HTTP and close lingering.
        factory = (proxy_protocol if listener.config.proxy_protocol
                   else tls_protocol if listener.tls is not None else client_protocol)
        return await self.loop.create_server(factory(listener), sock=sock, backlog=4096)

    def _tls(self, loaded: LoadedConfig, lc: ListenerConfig) -> ListenerTls | None:
        """A TLS listener's contexts (only where connections are served)."""
        if lc.tls is None or not self.serves:
            return None
        return ListenerTls(lc.name, lc.tls, load_table(lc.tls, loaded.beside(".")))

    def _renew_tls(self, listener: Listener, loaded: LoadedConfig, lc: ListenerConfig) -> None:
        """A reload with the listener's TLS still on: its certificates loaded anew, in place
        (open connections keep theirs; the session context, and so resumption, stay). A set
        that does not load keeps the old one, and says why."""
        if listener.tls is None or lc.tls is None:
            return
        old = listener.tls.config
        if (old.min_version, old.client_ca, old.client_verify) != (
                lc.tls.min_version, lc.tls.client_ca, lc.tls.client_verify):
            log.warning("listener %r: a new min_version or client certificate setting takes a "
                        "restart; the certificates are renewed now", lc.name)
        try:
            listener.tls.replace(load_table(lc.tls, loaded.beside(".")))
            listener.tls.config = lc.tls
        except (CertificateError, ssl.SSLError, OSError) as e:
            log.error("listener %r keeps its certificates: %s", lc.name, e)

    async def _start_admin(self) -> None:
        import uvicorn

        admin = self.loaded.config.admin
        token = self._admin_token()
        sock = sockets.bind_named(admin.listen, "[admin].listen")
        self.admin_port = sock.getsockname()[1]

        class EmbeddedServer(uvicorn.Server):
            """uvicorn on croupier's loop; croupier, not uvicorn, owns the signals."""

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        app = self.parts.admin_app(self, token)
        self._admin_server = EmbeddedServer(uvicorn.Config(
            app, log_level="warning", lifespan="off",
            access_log=False, timeout_graceful_shutdown=2))
        self._admin_task = self.loop.create_task(self._admin_server.serve(sockets=[sock]))
        while not self._admin_server.started:
            if self._admin_task.done():
                self._admin_task.result()
                raise OSError(0, "the admin API did not start")
            await asyncio.sleep(0.01)
        self._dashboard = app.state.dashboard       # admin/api.py made it; it runs here
        self._dashboard.start()

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

    def _access_log(self, loaded: LoadedConfig, lc: ListenerConfig) -> AccessLog | None:
        """The access log `lc` writes to (its own, else the top level's), opened once."""
        config = lc.access_log or loaded.config.access_log
        if config is None or not config.enabled or not self.serves:
            return None
        path = config.path if config.path == "-" else str(loaded.beside(config.path))
        key = (path, config.format == "json")
        access_log = self.access_logs.get(key)
        if access_log is None:
            try:
                access_log = AccessLog(path, json=key[1])
            except OSError as e:
                where = (f"listener {lc.name!r}'s access_log.path" if lc.access_log
                         else "access_log.path")
                raise OSError(e.errno, f"{where} {path}: {e.strerror or e}") from None
            access_log.clock(self.loop.time())
            self.access_logs[key] = access_log
        return access_log

    def _close_unused_logs(self) -> None:
        used = {id(lst.access_log) for lst in self.listeners}
        for key, access_log in list(self.access_logs.items()):
            if id(access_log) not in used:
                access_log.flush()
                access_log.close()
                del self.access_logs[key]

    def reopen_logs(self) -> int:
        """SIGUSR1, `croupier reopen-logs`: logrotate moved the access logs. How many files
        (the supervisor: how many its workers will reopen)."""
        for access_log in self.access_logs.values():
            try:
                access_log.reopen()
            except OSError as e:    # it keeps writing to the one it had
                log.error("access log %s could not be opened again: %s", access_log.path,
                          e.strerror or e)
        if self.on_reopen is not None:
            return self.on_reopen()
        return len(self.access_logs)

    def certificate_ends(self) -> list[tuple[str, str, float]]:
        """(listener, certificate file as the config names it, when it expires as a Unix
        time) for every TLS listener's certificates; files read again only when changed."""
        out = []
        for lc in self.loaded.config.listeners:
            for c in lc.tls.certificates if lc.tls is not None else ():
                path = self.loaded.beside(c.cert)
                try:
                    key = (str(path), path.stat().st_mtime_ns)
                    end = self._certificate_ends.get(key)
                    if end is None:
                        end = self._certificate_ends[key] = certificate_end(path).timestamp()
                except (OSError, ValueError):
                    continue        # gone or broken since it was loaded: check says so
                out.append((lc.name, c.cert, end))
        return out

    def tls_failures(self) -> dict[str, int]:
        """TLS handshakes that failed, by reason (the supervisor: its workers' sum)."""
        if self.tls_failure_counts is not None:
            return self.tls_failure_counts
        return dict(self.context.tls_failures)

    def access_log_counts(self) -> tuple[int, int]:
        """Access log lines written and dropped (pipes or sockets that did not keep up)."""
        if self.log_counts is not None:
            return self.log_counts
        return (sum(lg.written for lg in self.access_logs.values()),
                sum(lg.dropped for lg in self.access_logs.values()))

    def _sweep(self) -> None:
        now = self.loop.time()
        self._sweeps += 1
        if self._sweeps % 4 == 0:           # once a second
            for access_log in self.access_logs.values():
                access_log.flush()
                access_log.clock(now)
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
        kept = _kept_listeners_that_change_kind(self.listeners, loaded)
        if kept:
            return _refused([f"{loaded.path}: listener {name!r} keeps its address but turns TLS "
                             f"or proxy_protocol on or off: that takes a restart (or the new "
                             f"setting on another address)" for name in kept])
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
        for lc in loaded.config.listeners:     # opened now: a commit then cannot fail on one
            self._access_log(loaded, lc)
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
        restart = [section for section, running in self.started_with.items()
                   if getattr(loaded.config, section) != running] if self.controls else []
        if restart:
            log.warning("config reloaded, but [%s] changed: that takes a restart (the running "
                        "one is kept until then)", "], [".join(restart))
        self.loaded = loaded
        self.config_members = ConfigFile(loaded)
        self.reconcile_members()
        self._load_windows(loaded)
        old = {lst.name: lst for lst in self.listeners}
        listeners = []
        for lc in loaded.config.listeners:
            listener = old.pop(lc.name, None)
            if listener is not None and listener.config.listen == lc.listen:
                listener.update(lc, self.pools, _redirect_port(loaded, lc))
                listener.access_log = self._access_log(loaded, lc)
                self._renew_tls(listener, loaded, lc)
            else:
                if listener is not None and listener.server is not None:
                    listener.server.close()         # open connections finish on their own
                listener = Listener(self.context, lc, self.pools, self._access_log(loaded, lc),
                                    self._tls(loaded, lc), _redirect_port(loaded, lc))
                if lc.name in socks:
                    listener.server = await self._serve(listener, socks[lc.name])
            listeners.append(listener)
        for gone in old.values():
            if gone.server is not None:
                gone.server.close()
        self.listeners = listeners
        self._close_unused_logs()
        if self.controls:
            self.checker.start()
        self.save_state(notify=False)       # the workers hear of it in the commit
        log.info("config reloaded from %s (%s): %d listener(s), %d pool(s), %d member(s)",
                 loaded.path, loaded.digest[:12], len(listeners), len(self.pools),
                 len(self.members()))
        return {"reloaded": True, "digest": loaded.digest,
                "listeners": sorted(lc.name for lc in loaded.config.listeners),
                "pools": sorted(self.pools), "members": len(self.members()),
                "needs_restart": restart}

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
        await self._stop_fleet()
        if self._dashboard is not None:
            await self._dashboard.stop()        # its streams end: the pages say so, reconnect
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
        for access_log in self.access_logs.values():
            access_log.flush()
            access_log.close()
        self.access_logs.clear()


def _kept_listeners_that_change_kind(listeners: list[Listener],
                                     loaded: LoadedConfig) -> list[str]:
    """Listeners a reload keeps (same name and address, so the same socket and protocol)
    whose config turns TLS or the PROXY protocol on or off: what their socket speaks would
    not change with it."""
    old = {lst.name: lst.config for lst in listeners}
    return [lc.name for lc in loaded.config.listeners
            if lc.name in old and old[lc.name].listen == lc.listen
            and ((old[lc.name].tls is None) != (lc.tls is None)
                 or old[lc.name].proxy_protocol != lc.proxy_protocol)]


def _redirect_port(loaded: LoadedConfig, lc: ListenerConfig) -> int:
    """The port of the TLS listener `lc` redirects every request to, or 0."""
    for target in loaded.config.listeners:
        if target.name == lc.redirect_to_https:
            return split_address(target.listen)[1]
    return 0


def _refused(errors: list[str]) -> dict[str, Any]:
    """A reload that changes nothing: logged at ERROR with its reasons, and answered so."""
    log.error("reload refused, the running config stays: %s", "; ".join(errors))
    return {"reloaded": False, "errors": errors}
