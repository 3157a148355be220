"""Hosts, members and pools, and the one predicate that says who may take a new request.

Two dimensions are kept apart (DESIGN.md, "State of a member"):
- health, from checks: up / down / unknown;
- admin state, from people and schedules: ready / drain / maint, one per origin, so that
  clearing one origin does not clear another. The strongest origin wins: maint > drain > ready.

The control plane changes state through the methods here; every change ends in
`Pool.refresh()`, which rebuilds the list of eligible members that the balancing policy sees.
The data plane only reads `pool.policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from croupier.balancing import make_policy

if TYPE_CHECKING:
    from croupier.balancing.base import Policy
    from croupier.proxy.upstream import UpstreamPool

Health = Literal["up", "down", "unknown"]
AdminState = Literal["ready", "drain", "maint"]
Origin = Literal["config", "api", "schedule", "host"]

_RANK: dict[str, int] = {"ready": 0, "drain": 1, "maint": 2}


def strongest(states: dict[str, str]) -> str:
    """The admin state in force, given one state per origin."""
    best = "ready"
    for s in states.values():
        if _RANK[s] > _RANK[best]:
            best = s
    return best


class Host:
    __slots__ = ("address", "admin", "health", "members", "name")

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.health: Health = "up"
        self.admin: dict[str, str] = {}
        self.members: list[Member] = []

    @property
    def admin_state(self) -> str:
        return strongest(self.admin)


class Member:
    """One application instance. Counters are plain ints: the data plane bumps them."""

    __slots__ = ("address", "admin", "failures", "health", "host", "in_flight", "name", "pool",
                 "port", "requests", "upstream", "weight")

    def __init__(self, pool: Pool, name: str, host: Host, address: str, port: int,
                 weight: int) -> None:
        self.pool = pool
        self.name = name
        self.host = host
        self.address = address
        self.port = port
        self.weight = weight
        self.health: Health = "unknown"
        self.admin: dict[str, str] = {}
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.upstream: UpstreamPool | None = None

    @property
    def admin_state(self) -> str:
        """Own admin state combined with the host's: a member inherits its host's drain/maint."""
        own = strongest(self.admin)
        inherited = self.host.admin_state
        return own if _RANK[own] >= _RANK[inherited] else inherited

    def may_take_request(self) -> bool:
        """THE eligibility predicate: the only place that decides who gets new work."""
        if self.weight <= 0:
            return False
        if self.admin_state != "ready":
            return False
        if self.host.health == "down":
            return False
        # `unknown` counts as up: members present at start serve at once (no black-out on
        # restart); health checks (when configured) mark them down on the first failures.
        return self.health != "down"

    def __repr__(self) -> str:
        return f"<Member {self.pool.name}/{self.name}>"


class Pool:
    __slots__ = ("algorithm", "config", "eligible", "members", "name", "policy")

    def __init__(self, name: str, algorithm: str, config: object = None) -> None:
        self.name = name
        self.algorithm = algorithm
        self.config = config
        self.members: list[Member] = []
        self.eligible: list[Member] = []
        self.policy: Policy = make_policy(algorithm, [])

    def refresh(self) -> None:
        """Recompute who may take requests and hand that list to a fresh policy."""
        self.eligible = [m for m in self.members if m.may_take_request()]
        self.policy = make_policy(self.algorithm, self.eligible)

    def describe_unavailable(self) -> str:
        """Why no member may take a request, for the 503 body and the log."""
        if not self.members:
            return "the pool has no members"
        reasons: dict[str, int] = {}
        for m in self.members:
            if m.admin_state != "ready":
                why = m.admin_state
            elif m.host.health == "down":
                why = "host down"
            elif m.health == "down":
                why = "down"
            elif m.weight <= 0:
                why = "weight 0"
            else:
                why = "busy"
            reasons[why] = reasons.get(why, 0) + 1
        parts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        return f"{len(self.members)} members: {parts}"
