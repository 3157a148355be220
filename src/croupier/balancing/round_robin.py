"""Round robin. Equal weights: exact rotation. Unequal weights: smooth weighted round robin
(the nginx algorithm): weights 5,1 give a a b a a a, never five in a row."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.state import Member
    from croupier.proxy.client import Request


class RoundRobin:
    __slots__ = ("_current", "_members", "_n", "_next", "_total", "_weights", "pick")

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        self._members = list(members)
        self._n = len(self._members)
        self._next = 0
        self._weights = list(weights)
        self._current = [0] * self._n
        self._total = sum(self._weights)
        if self._n == 0:
            self.pick = self._pick_none
        elif len(set(self._weights)) == 1:
            self.pick = self._pick_rotate      # the common case: no arithmetic per request
        else:
            self.pick = self._pick_smooth

    def _pick_none(self, req: Request | None = None) -> Member | None:
        return None

    def _pick_rotate(self, req: Request | None = None) -> Member | None:
        i = self._next
        self._next = i + 1 if i + 1 < self._n else 0
        return self._members[i]

    def _pick_smooth(self, req: Request | None = None) -> Member | None:
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
