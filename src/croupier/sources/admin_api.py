"""The admin API as a source of members: what operators added, removed and re-weighted at
run time, on top of the sources under it. Kept in the state file, sent to workers."""

from __future__ import annotations

import dataclasses
import logging

from croupier.config.load import MemberSpec
from croupier.config.overlay import AddedMember, ApiMembers
from croupier.model.reconcile import Wanted

log = logging.getLogger("croupier.sources")

__all__ = ["AddedMember", "AdminApi", "ApiMembers"]


class AdminApi:
    def __init__(self, changes: ApiMembers | None = None) -> None:
        self.changes = changes or ApiMembers()

    def want(self, below: Wanted) -> Wanted:
        """`below` with the removed members taken out, the added ones put in, the weights
        set. What names a pool or member that is no longer there is forgotten, with a
        warning: it must never keep croupier from starting or reloading."""
        changes = self.changes
        wanted = {pool: dict(members) for pool, members in below.items()}
        for added in list(changes.added):
            members = wanted.get(added.pool)
            if members is None:
                log.warning("member %s added to pool %s dropped: no such pool now",
                            added.name, added.pool)
                changes.added.remove(added)
            elif added.name not in members:
                members[added.name] = MemberSpec(added.pool, added.name, added.host,
                                                 added.address, added.port, added.weight)
        for key in changes.removed:
            pool, _, name = key.partition("/")
            wanted.get(pool, {}).pop(name, None)
        for key, weight in list(changes.weights.items()):
            pool, _, name = key.partition("/")
            spec = wanted.get(pool, {}).get(name)
            if spec is None:
                log.warning("weight %d for %s dropped: no such member now", weight, key)
                del changes.weights[key]
            else:
                wanted[pool][name] = dataclasses.replace(spec, weight=weight)
        return wanted

    def add(self, spec: MemberSpec, below: Wanted) -> None:
        """Serve `spec` too (with its weight), whatever the sources under this one want."""
        changes = self.changes
        key = f"{spec.pool}/{spec.name}"
        changes.removed = [k for k in changes.removed if k != key]
        if spec.name not in below.get(spec.pool, {}):
            changes.added.append(AddedMember(pool=spec.pool, name=spec.name, host=spec.host,
                                             address=spec.address, port=spec.port,
                                             weight=spec.weight))
        changes.weights[key] = spec.weight

    def remove(self, pool: str, name: str, below: Wanted) -> None:
        """Serve `pool/name` no more, whichever source wanted it."""
        changes = self.changes
        key = f"{pool}/{name}"
        changes.added = [a for a in changes.added if (a.pool, a.name) != (pool, name)]
        changes.weights.pop(key, None)
        if name in below.get(pool, {}) and key not in changes.removed:
            changes.removed.append(key)

    def set_weight(self, pool: str, name: str, weight: int) -> None:
        self.changes.weights[f"{pool}/{name}"] = weight
