"""Random: each member with a probability proportional to its weight."""

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


class WeightedRandom(Policy):
    __slots__ = ("_cumulative", "_members", "_random", "_total")

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        self._members = list(members)
        self._cumulative = list(accumulate(weights))
        self._total = self._cumulative[-1] if self._cumulative else 0
        self._random = random.random

    def pick(self, req: PickContext | None = None) -> Member | None:
        if self._total <= 0:
            return None
        return self._members[bisect(self._cumulative, self._random() * self._total)]
