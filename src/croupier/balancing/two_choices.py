"""Power of two random choices: draw two members (by weight), take the one with fewer
requests in flight for its weight. Nearly as even as least_conn, without a scan of the pool."""

from __future__ import annotations

import random
from bisect import bisect
from itertools import accumulate
from typing import TYPE_CHECKING

from croupier.model.policy import Policy

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.policy import PickContext
    from croupier.model.state import Member


class TwoChoices(Policy):
    __slots__ = ("_cumulative", "_members", "_n", "_random", "_total", "_weights")

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        self._members = list(members)
        self._weights = list(weights)
        self._cumulative = list(accumulate(weights))
        self._total = self._cumulative[-1] if self._cumulative else 0
        self._n = len(members)
        self._random = random.random

    def pick(self, req: PickContext | None = None) -> Member | None:
        if self._total <= 0:
            return None
        if self._n == 1:
            return self._members[0]
        cumulative, total, rnd = self._cumulative, self._total, self._random
        a = bisect(cumulative, rnd() * total)
        b = bisect(cumulative, rnd() * total)
        while b == a:
            b = bisect(cumulative, rnd() * total)
        ma, mb = self._members[a], self._members[b]
        if mb.in_flight * self._weights[a] < ma.in_flight * self._weights[b]:
            return mb
        return ma
