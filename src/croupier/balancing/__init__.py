"""Balancing policies, one a file; `make_policy` maps a pool's `algorithm` to its class."""

from __future__ import annotations

from typing import TYPE_CHECKING

from croupier.balancing.round_robin import RoundRobin

if TYPE_CHECKING:
    from croupier.balancing.base import Policy
    from croupier.model.state import Member

POLICIES = {"round_robin": RoundRobin}


def make_policy(algorithm: str, members: list[Member]) -> Policy:
    return POLICIES[algorithm](members)
