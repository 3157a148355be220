"""The interface every balancing policy implements (one policy a file, as Envoy lays them out).

A policy is built from the members that passed `Member.may_take_request()`, each with its
effective weight (in hundredths: slow start ramps a member's weight up from a few hundredths);
it never sees an ineligible member and never filters. `pick(req)` runs on the hot path: it
must not block or await, and should not allocate more than it must. It is rebuilt (cheaply)
whenever eligibility or weights change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.state import Member
    from croupier.proxy.client import Request


class Policy(Protocol):
    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None) -> None: ...

    def pick(self, req: Request | None) -> Member | None:
        """The member for the next request, or None when there is none."""
        ...
