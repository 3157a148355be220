"""Balancing policies, one a file; `make_policy` maps a pool's `algorithm` to its class.

A policy is registered by name in one place: an entry point of the group `croupier.policies`
in pyproject.toml (`name = "module:Class"`), which the config validates against too. A new
policy is one file and that line; `make install` registers it.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from croupier.balancing.sticky import Sticky
from croupier.config.schema import POLICY_GROUP

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.policy import Policy
    from croupier.model.state import Member

POLICIES: dict[str, type[Policy]] = {ep.name: ep.load()
                                     for ep in entry_points(group=POLICY_GROUP)}


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
