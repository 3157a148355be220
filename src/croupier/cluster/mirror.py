"""A copy of every key under an etcd prefix, kept by a watch: the fleet's shared state
(cluster/fleet.py) and each pool's self-registered members (cluster/discovery.py) are kept so.

After every change the subclass's `changed` is called with the revision the copy is at. etcd
unreachable: the copy stays as it was last (never emptied), and the mirror tries again with
backoff; once etcd answers it watches again from the last revision it applied (what changed
meanwhile comes first), or, if etcd compacted that revision away, reads the whole prefix again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from croupier.aio import cancelled
from croupier.cluster.etcd import Compacted, EtcdClient, EtcdError, KeyValue, Unavailable
from croupier.cluster.registry import BACKOFF

log = logging.getLogger("croupier.cluster")

PROBE = 2.0     # seconds a watch may be quiet before etcd is asked whether it is still there


class Mirror:
    def __init__(self, client: EtcdClient, prefix: str, what: str) -> None:
        self.client = client
        self.prefix = prefix                     # whole: every key starting with it
        self.what = what                         # for the log: "fleet", "discovery of pool P"
        self.keys: dict[str, KeyValue] = {}
        self.loaded = False
        self.applied = 0                         # the store's revision this copy is at
        self.connected = False
        self.resyncs = 0
        self.heard = time.time()                 # when etcd last answered (or the watch spoke)
        self._applied_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def changed(self, revision: int) -> None:
        """The copy changed (or was read whole): a subclass acts on `self.keys`."""

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancelled(self._task)
        self._task = None

    async def _run(self) -> None:
        failures = 0
        reload = not self.loaded            # started again: resume from what was applied
        while True:
            try:
                if reload:
                    await self._load()
                    reload = False
                failures = 0
                while True:                     # a watch ends when its connection does
                    await self._watch_checked()
            except Compacted as e:
                log.info("%s: history compacted past revision %d: reading it all again",
                         self.what, e.compact_revision)
                reload = True
            except EtcdError as e:
                if self.connected or failures == 0:
                    log.warning("%s: etcd does not answer (%s): going on with the last state "
                                "read, trying again", self.what, e)
                self.connected = False
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1

    async def _load(self) -> None:
        revision, kvs = await self.client.get_prefix(self.prefix)
        self.heard = time.time()
        self.keys = {kv.key: kv for kv in kvs}
        if self.loaded:
            self.resyncs += 1
        self.loaded = True
        self._publish(revision)

    async def refresh(self) -> None:
        """Bring the copy to the store's present with one read, not waiting for the watch:
        before a change is made on top of it, so that it is made on what the store holds
        (a copy a change behind would take a change already undone elsewhere for done).
        The watch then skips what the read already holds. Raises EtcdError."""
        revision, kvs = await self.client.get_prefix(self.prefix)
        self.heard = time.time()
        if revision > self.applied:         # the watch may have come further meanwhile
            self.keys = {kv.key: kv for kv in kvs}
            self._publish(revision)

    async def _watch_checked(self) -> None:
        """The watch, with etcd asked for its revision whenever it has been quiet for PROBE
        seconds: a watch on an etcd that went away without closing the connection (a host
        unplugged, a process frozen) says nothing, and would say so forever. A check that
        fails ends the watch (Unavailable), and the mirror tries again with backoff."""
        watch = asyncio.ensure_future(self._watch())
        try:
            while True:
                done, _ = await asyncio.wait({watch}, timeout=PROBE)
                if done:
                    return watch.result()
                if time.time() - self.heard >= PROBE:
                    await self.client.revision()
                    self.heard = time.time()
        finally:
            if not watch.done():
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError, EtcdError):
                    await watch

    async def _watch(self) -> None:
        """From the last revision applied on: after an outage, what changed meanwhile comes
        first (or Compacted, when etcd no longer has it)."""
        async for events in self.client.watch(self.prefix, self.applied + 1):
            self.heard = time.time()
            if not events:                      # etcd took the watch
                self.connected = True
                continue
            revision = self.applied
            for e in events:
                if e.mod_revision <= self.applied:      # a refresh read it already
                    continue
                revision = max(revision, e.mod_revision)
                if e.value is None:
                    self.keys.pop(e.key, None)
                else:
                    old = self.keys.get(e.key)
                    self.keys[e.key] = KeyValue(e.key, e.value, e.mod_revision,
                                                old.create_revision if old else e.mod_revision)
            if revision > self.applied:
                self._publish(revision)
        raise Unavailable("the watch ended")

    def _publish(self, revision: int) -> None:
        self.changed(revision)
        self.applied = max(self.applied, revision)
        self._applied_changed.set()
        self._applied_changed = asyncio.Event()

    async def wait_applied(self, revision: int, timeout: float) -> bool:
        """Whether this instance applied `revision` (or a later one) within `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.applied < revision:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._applied_changed.wait(), left)
        return True
