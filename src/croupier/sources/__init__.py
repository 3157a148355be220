"""Where members come from. Each source is a layer: told what the layers under it want, it
says what it wants instead; the top layer's answer goes to the one reconcile
(croupier.model.reconcile), whoever asked for the change. Today's stack, bottom up: the
config file, the members registered in etcd (discovery.py), then the admin API (members it
added or removed, weights it set)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from croupier.model.reconcile import Wanted


class Source(Protocol):
    def want(self, below: Wanted) -> Wanted:
        """The members wanted, given what the sources under this one want."""
        ...


def stack(sources: Iterable[Source]) -> Wanted:
    """What the sources want together, each on top of those before it."""
    wanted: Wanted = {}
    for source in sources:
        wanted = source.want(wanted)
    return wanted
