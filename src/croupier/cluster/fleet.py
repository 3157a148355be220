"""One instance's side of the fleet's shared admin state: it keeps a copy of the keys under
`PREFIX/state/` (cluster/shared.py), hands the overlay they hold to `on_overlay` after every
change, and writes what an operator changes on this instance as one compare-and-swap
transaction on the keys it touches.

- Writes go to etcd first; every instance, this one included, applies them when its watch
  brings them back, through the same `on_overlay` (and so the same reconcile) as any other
  change. `commit` returns the write's revision; `wait_applied` waits for this instance to have
  applied it.
- Two instances changing one key from the same revision: one transaction succeeds, the other
  raises `Conflict`, and both end with the one that succeeded (the watch brings it).
- etcd unreachable: `commit` raises `Unavailable` (the change is refused, not queued); the
  instance keeps the last state it applied and tries again with backoff; once etcd answers it
  watches again from the last revision it applied (what changed meanwhile comes first). If
  etcd compacted that revision away, it reads the whole prefix again and watches from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from croupier.cluster.etcd import Compacted, EtcdClient, EtcdError, KeyValue, Unavailable
from croupier.cluster.registry import BACKOFF
from croupier.cluster.shared import STATE, overlay_keys, read_overlay

log = logging.getLogger("croupier.cluster")


class Conflict(Exception):
    """Another instance changed a key this change read, after it read it."""


class Fleet:
    def __init__(self, client: EtcdClient, prefix: str,
                 on_overlay: Callable[[dict[str, Any], int], None]) -> None:
        self.client = client
        self.prefix = prefix
        self.on_overlay = on_overlay
        self.keys: dict[str, KeyValue] = {}     # the copy: every key under PREFIX/state/
        self.overlay: dict[str, Any] | None = None
        self.applied = 0                         # the store's revision this copy is at
        self.connected = False
        self.skipped: list[str] = []             # keys that did not parse, with why
        self.resyncs = 0
        self.heard = time.time()                 # when etcd last answered (or the watch spoke)
        self._applied_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ---- reading -----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failures = 0
        reload = self.overlay is None       # started again: resume from what was applied
        while True:
            try:
                if reload:
                    await self._load()
                    reload = False
                failures = 0
                while True:                     # a watch ends when its connection does
                    await self._watch()
            except Compacted as e:
                log.info("fleet: history compacted past revision %d: reading the whole "
                         "state again", e.compact_revision)
                reload = True
            except EtcdError as e:
                if self.connected or failures == 0:
                    log.warning("fleet: etcd does not answer (%s): serving with the last "
                                "state applied, trying again", e)
                self.connected = False
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF) - 1)])
                failures += 1

    async def _load(self) -> None:
        revision, kvs = await self.client.get_prefix(self.prefix + STATE)
        self.heard = time.time()
        self.keys = {kv.key: kv for kv in kvs}
        if self.overlay is not None:
            self.resyncs += 1
        self._publish(revision)

    async def _watch(self) -> None:
        """From the last revision applied on: after an outage, what changed meanwhile comes
        first (or Compacted, when etcd no longer has it)."""
        async for events in self.client.watch(self.prefix + STATE, self.applied + 1):
            self.heard = time.time()
            if not events:                      # etcd took the watch
                self.connected = True
                continue
            revision = self.applied
            for e in events:
                revision = max(revision, e.mod_revision)
                if e.value is None:
                    self.keys.pop(e.key, None)
                else:
                    old = self.keys.get(e.key)
                    self.keys[e.key] = KeyValue(e.key, e.value, e.mod_revision,
                                                old.create_revision if old else e.mod_revision)
            self._publish(revision)
        raise Unavailable("the watch ended")

    def _publish(self, revision: int) -> None:
        overlay, skipped = read_overlay(self.prefix, list(self.keys.values()))
        for why in set(skipped) - set(self.skipped):
            log.warning("fleet: key skipped: %s", why)
        self.skipped = skipped
        if overlay != self.overlay:
            self.overlay = overlay
            self.on_overlay(overlay, revision)
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

    # ---- writing -----------------------------------------------------------------------------

    async def commit(self, overlay: dict[str, Any]) -> int:
        """Make the shared state `overlay`: the keys that differ from this instance's copy
        written in one transaction, on condition that none changed since the copy read them.
        The write's revision (the current one if nothing differed). Raises Conflict, or
        Unavailable when etcd does not answer (nothing is written then)."""
        if not self.connected:
            raise Unavailable("etcd is not reachable from this instance")
        wanted = overlay_keys(self.prefix, overlay)
        writes: dict[str, bytes | None] = {
            key: value for key, value in wanted.items()
            if key not in self.keys or self.keys[key].value != value}
        writes.update({key: None for key in self.keys if key not in wanted})
        if not writes:
            return self.applied
        expected = {key: self.keys[key].mod_revision if key in self.keys else 0
                    for key in writes}
        ok, revision = await self.client.transaction(expected, writes)
        if not ok:
            raise Conflict("changed meanwhile on another instance: this change was not "
                           "made; the fleet's state now is what that one set")
        return revision
