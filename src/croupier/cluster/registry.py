"""The fleet's list of instances: each registers under `PREFIX/instances/NAME` with a lease of a
few seconds that it keeps alive, so that one that stops, or loses its host, leaves the list on
its own. The entry says what the others and `croupier fleet` need: the address of its admin
API, its version, its config's digest, a summary of its view and the last revision of the
shared state it has applied.

etcd unreachable: the instance goes on serving (the registry is not on any request's path),
and registers again, with a new lease, once etcd answers; a lease that expired meanwhile
(keepalive answers TTL 0) is replaced the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from croupier.cluster.etcd import EtcdClient, EtcdError

log = logging.getLogger("croupier.cluster")

# Waits between attempts while etcd does not answer: doubled each time up to the last.
BACKOFF = (0.2, 0.4, 0.8, 1.6, 3.2, 5.0)


def instances_prefix(prefix: str) -> str:
    return f"{prefix}/instances/"


class Registration:
    """This instance's entry, kept while `run` runs. `describe` is called for the entry's
    content each time it is written: when it changed (checked every third of the TTL) and
    after every new lease."""

    def __init__(self, client: EtcdClient, prefix: str, name: str, ttl: float,
                 describe: Callable[[], dict[str, Any]]) -> None:
        self.client = client
        self.key = instances_prefix(prefix) + name
        self.name = name
        self.ttl = ttl
        self.describe = describe
        self.lease = 0
        self.registered = asyncio.Event()       # set while the entry is known to be in etcd
        self._written = b""
        self._poke = asyncio.Event()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._keep()
                failures = 0
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self.ttl / 3)
                self._poke.clear()
            except EtcdError as e:
                self.registered.clear()
                wait = BACKOFF[min(failures, len(BACKOFF) - 1)]
                if failures == 0:
                    log.warning("fleet: cannot keep instance %s registered (%s); trying again",
                                self.name, e)
                failures += 1
                await asyncio.sleep(wait)

    async def _keep(self) -> None:
        if self.lease and await self.client.lease_keepalive(self.lease) <= 0:
            log.info("fleet: the lease of instance %s expired; registering again", self.name)
            self.lease = 0
        if not self.lease:
            self.lease = await self.client.lease_grant(self.ttl)
            self._written = b""
        entry = json.dumps({"name": self.name, **self.describe()}, sort_keys=True).encode()
        if entry != self._written:
            await self.client.put(self.key, entry, lease=self.lease)
            self._written = entry
        self.registered.set()

    def poke(self) -> None:
        """Write the entry now if it changed (a new revision applied), not at the next turn."""
        self._poke.set()

    async def leave(self) -> None:
        """A clean stop: the entry goes now, not when the lease runs out."""
        self.registered.clear()
        if self.lease:
            lease, self.lease = self.lease, 0
            try:
                await self.client.lease_revoke(lease)
            except EtcdError as e:
                log.warning("fleet: instance %s could not leave the list (%s); it goes when "
                            "its lease ends", self.name, e)


async def instances(client: EtcdClient, prefix: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The registered instances by name, and the keys under the list that do not parse
    (written by hand, or by another version): skipped, never half read."""
    _, kvs = await client.get_prefix(instances_prefix(prefix))
    found, bad = [], []
    for kv in kvs:
        try:
            entry = json.loads(kv.value)
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ValueError("not an instance entry")
        except ValueError:
            bad.append(kv.key)
            continue
        found.append(entry)
    return sorted(found, key=lambda e: e["name"]), bad
