"""Members that register themselves: a pool with `[pools.discovery] etcd = "apps/classes"`
takes, beside its listed members, every member registered under `PREFIX/apps/classes/` (the
[cluster] prefix), one key a member, each held by its registrant's lease:

    PREFIX/apps/classes/10.0.0.5:9001   {"address": "10.0.0.5", "port": 9001, "weight": 1,
                                          "host": "rack1-a", "draining": false}

A member is known as soon as its key is (the watch), and takes traffic from its first passing
health check (a member added at run time starts down); it leaves when its key goes: its lease
ran out (the registrant's host died) or it deregistered. `draining: true` is a clean stop
under way: no new requests (an admin state of origin `discovery`). Only addresses inside the
pool's `allowed_networks` are taken; a key that does not parse, or names another address, is
refused with a warning and named, never half applied. etcd unreachable: the members last
read stay (never an empty pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, ValidationError

from croupier.cluster.etcd import EtcdClient, EtcdError
from croupier.cluster.mirror import Mirror
from croupier.cluster.registry import BACKOFF, instances
from croupier.config.load import MemberSpec
from croupier.config.schema import Address, Name, PoolConfig, Port, Weight

log = logging.getLogger("croupier.cluster")


class Registered(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    address: Address
    port: Port
    weight: Weight = 1
    host: Name | None = None
    draining: bool = False


def discovery_prefix(prefix: str, key: str) -> str:
    return f"{prefix}/{key.strip('/')}/"


class PoolDiscovery(Mirror):
    def __init__(self, client: EtcdClient, prefix: str, pool: PoolConfig,
                 on_change: Callable[[], None]) -> None:
        assert pool.discovery is not None
        super().__init__(client, discovery_prefix(prefix, pool.discovery.etcd),
                         f"discovery of pool {pool.name}")
        self.pool = pool.name
        self.networks = [ipaddress.ip_network(n, strict=False) for n in pool.allowed_networks]
        self.on_change = on_change
        self.members: dict[str, MemberSpec] = {}
        self.draining: set[str] = set()          # member names whose registrant is stopping
        self.refused: list[str] = []             # keys not taken, with why

    def changed(self, revision: int) -> None:
        members: dict[str, MemberSpec] = {}
        draining: set[str] = set()
        refused: list[str] = []
        for kv in self.keys.values():
            try:
                entry = Registered.model_validate(json.loads(kv.value))
            except (ValueError, ValidationError) as e:
                why = e.errors()[0]["msg"] if isinstance(e, ValidationError) else str(e)
                refused.append(f"{kv.key}: {why}")
                continue
            name = f"{entry.address}:{entry.port}"
            if kv.key[len(self.prefix):] != name:
                refused.append(f"{kv.key}: its value names {name}")
                continue
            ip = ipaddress.ip_address(entry.address) if entry.address != "localhost" else \
                ipaddress.ip_address("127.0.0.1")
            if not any(ip in net for net in self.networks):
                refused.append(f"{kv.key}: {entry.address} is outside the pool's "
                               f"allowed_networks")
                continue
            members[name] = MemberSpec(self.pool, name, entry.host or entry.address,
                                       entry.address, entry.port, entry.weight)
            if entry.draining:
                draining.add(name)
        for why in set(refused) - set(self.refused):
            log.warning("%s: registration refused: %s", self.what, why)
        self.refused = refused
        if (members, draining) != (self.members, self.draining):
            self.members, self.draining = members, draining
            self.on_change()


async def keep_registered(client: EtcdClient, key: str, entry: Registered, ttl: float,
                          stop: asyncio.Event, member: str, fleet_prefix: str,
                          drain_timeout: float, say: Callable[[str], None]) -> None:
    """`croupier register`: hold `key` with a lease of `ttl` until `stop` is set, then leave
    cleanly: mark the entry draining, wait until every live instance shows `member` drained
    with nothing in flight (or `drain_timeout`), and delete it. etcd unreachable: try again
    with backoff; a lease that expired meanwhile is replaced."""
    value = json.dumps(entry.model_dump(), sort_keys=True).encode()
    lease, failures = 0, 0
    while not stop.is_set():
        try:
            if lease and await client.lease_keepalive(lease) <= 0:
                lease = 0
            if not lease:
                lease = await client.lease_grant(ttl)
                await client.put(key, value, lease=lease)
                say(f"registered {key} (lease {ttl:g}s)")
            failures = 0
            wait = ttl / 3
        except EtcdError as e:
            if failures == 0:
                say(f"etcd does not answer ({e}); trying again")
            wait = BACKOFF[min(failures, len(BACKOFF) - 1)]
            failures += 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
    if not lease:
        return
    draining = json.dumps(entry.model_copy(update={"draining": True}).model_dump(),
                          sort_keys=True).encode()
    await client.put(key, draining, lease=lease)
    say(f"draining {member}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + drain_timeout
    while loop.time() < deadline:
        found, _ = await instances(client, fleet_prefix)
        views = [e.get("members", {}).get(member) for e in found]
        if all(v is not None and v.get("admin") != "ready" and not v.get("in_flight")
               for v in views):
            break
        await client.lease_keepalive(lease)
        await asyncio.sleep(0.1)
    else:
        say(f"{member} still busy after {drain_timeout:g}s: leaving anyway")
    await client.delete(key)
    await client.lease_revoke(lease)
    say(f"deregistered {key}")
