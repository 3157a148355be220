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

import logging
from collections.abc import Callable
from typing import Any

from croupier.cluster.etcd import EtcdClient, Unavailable
from croupier.cluster.mirror import Mirror
from croupier.cluster.shared import STATE, overlay_keys, read_overlay

log = logging.getLogger("croupier.cluster")


class Conflict(Exception):
    """Another instance changed a key this change read, after it read it."""


class Fleet(Mirror):
    def __init__(self, client: EtcdClient, prefix: str,
                 on_overlay: Callable[[dict[str, Any], int], None]) -> None:
        super().__init__(client, prefix + STATE, "fleet")
        self.root = prefix
        self.on_overlay = on_overlay
        self.overlay: dict[str, Any] | None = None
        self.skipped: list[str] = []             # keys that did not parse, with why

    def changed(self, revision: int) -> None:
        overlay, skipped = read_overlay(self.root, list(self.keys.values()))
        for why in set(skipped) - set(self.skipped):
            log.warning("fleet: key skipped: %s", why)
        self.skipped = skipped
        if overlay != self.overlay:
            self.overlay = overlay
            self.on_overlay(overlay, revision)

    # ---- writing -----------------------------------------------------------------------------

    async def commit(self, overlay: dict[str, Any]) -> int:
        """Make the shared state `overlay`: the keys that differ from this instance's copy
        written in one transaction, on condition that none changed since the copy read them.
        The write's revision (the current one if nothing differed). Raises Conflict, or
        Unavailable when etcd does not answer (nothing is written then)."""
        if not self.connected:
            raise Unavailable("etcd is not reachable from this instance")
        wanted = overlay_keys(self.root, overlay)
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
