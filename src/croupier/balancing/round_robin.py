"""Round robin. Equal weights: exact rotation. Unequal weights: smooth weighted round robin
(the nginx algorithm): weights 5,1 give a a a b a a, never six in a row."""

from __future__ import annotations

from typing import TYPE_CHECKING

from croupier.model.policy import Policy

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.policy import PickContext
    from croupier.model.state import Member


class RoundRobin(Policy):
    __slots__ = ("_current", "_equal", "_members", "_n", "_next", "_total", "_weights")

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        self._members = list(members)
        self._n = len(self._members)
        self._next = 0
        self._weights = list(weights)
        self._current = [0] * self._n
        self._total = sum(self._weights)
        # The common case: equal weights, a plain rotation with no arithmetic per request.
        self._equal = self._n > 0 and len(set(self._weights)) == 1

    def pick(self, req: PickContext | None = None) -> Member | None:
        if self._equal:
            i = self._next
            self._next = i + 1 if i + 1 < self._n else 0
            return self._members[i]
        if self._n == 0:
            return None
        return self._pick_smooth()

    def _pick_smooth(self) -> Member:
        current = self._current
        weights = self._weights
        best = 0
        best_value = -1
        for i in range(self._n):
            v = current[i] + weights[i]
            current[i] = v
            if v > best_value:
                best_value = v
                best = i
        current[best] -= self._total
        return self._members[best]
