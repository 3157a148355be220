"""The members that register themselves in etcd (`[pools.discovery]`), as a source: the
pools' registered members, kept by cluster/discovery.py's watch, on top of the listed ones."""

from __future__ import annotations

from croupier.cluster.discovery import PoolDiscovery
from croupier.model.reconcile import Wanted


class Discovery:
    """A source (croupier.sources): the pools' registered members on top of the listed ones
    (a listed member of the same name stays as listed)."""

    def __init__(self, pools: list[PoolDiscovery]) -> None:
        self.pools = pools

    def want(self, below: Wanted) -> Wanted:
        wanted = {pool: dict(members) for pool, members in below.items()}
        for d in self.pools:
            members = wanted.setdefault(d.pool, {})
            for name, spec in d.members.items():
                members.setdefault(name, spec)
        return wanted
