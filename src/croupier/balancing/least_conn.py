"""Least connections: the member with the fewest requests in flight for its weight; ties are
broken round robin, so an idle pool still rotates."""

from __future__ import annotations

from typing import TYPE_CHECKING

from croupier.model.policy import Policy

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.policy import PickContext
    from croupier.model.state import Member


class LeastConn(Policy):
    __slots__ = ("_members", "_n", "_next", "_weights")

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        self._members = list(members)
        self._weights = list(weights)
        self._n = len(members)
        self._next = 0

    def pick(self, req: PickContext | None = None) -> Member | None:
        n = self._n
        if n == 0:
            return None
        members, weights = self._members, self._weights
        start = self._next
        best = start
        # Compare in_flight / weight without dividing: a.in_flight * b.w < b.in_flight * a.w
        best_load = members[start].in_flight
        best_weight = weights[start]
        for step in range(1, n):
            i = start + step
            if i >= n:
                i -= n
            load = members[i].in_flight
            if load * best_weight < best_load * weights[i]:
                best, best_load, best_weight = i, load, weights[i]
        self._next = best + 1 if best + 1 < n else 0
        return members[best]
