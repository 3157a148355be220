"""Balancing policies, one a file; `make_policy` maps a pool's `algorithm` to its class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from croupier.balancing.consistent_hash import ConsistentHash
from croupier.balancing.least_conn import LeastConn
from croupier.balancing.round_robin import RoundRobin
from croupier.balancing.sticky import Sticky
from croupier.balancing.two_choices import TwoChoices
from croupier.balancing.weighted_random import WeightedRandom

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.policy import Policy
    from croupier.model.state import Member

POLICIES: dict[str, type[Policy]] = {
    "round_robin": RoundRobin,
    "least_conn": LeastConn,
    "random": WeightedRandom,
    "two_choices": TwoChoices,
    "hash": ConsistentHash,
}


def make_policy(algorithm: str, members: list[Member], weights: list[int] | None = None,
                config: PoolConfig | None = None, all_members: list[Member] | None = None
                ) -> Policy:
    """The policy for the eligible `members`; wrapped in sticky sessions when the pool has
    them (which need every member, since a drained one keeps its sessions)."""
    if weights is None:
        weights = [m.weight * 100 for m in members]
    policy = POLICIES[algorithm](members, weights, config)
    if config is not None and config.sticky is not None:
        return Sticky(policy, all_members if all_members is not None else members,
                      config.sticky.cookie, int(config.sticky.max_age))
    return policy
