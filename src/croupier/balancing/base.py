"""The interface every balancing policy implements (one policy a file, as Envoy lays them out).

A policy is built from the members that passed `Member.may_take_request()`, each with its
effective weight (in hundredths: slow start ramps a member's weight up from a few hundredths);
it never sees an ineligible member and never filters. `pick(req)` runs on the hot path: it
must not block or await, and should not allocate more than it must. It is rebuilt (cheaply)
whenever eligibility or weights change.

A base class, not a Protocol: compiled, `pool.policy.pick(req)` is then a vtable call into
the policy's native method instead of a Python method lookup and call (~350 instructions
a request).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.state import Member
    from croupier.proxy.client import Request


class Policy:
    __slots__ = ()

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        pass

    def pick(self, req: Request | None = None) -> Member | None:
        """The member for the next request, or None when there is none."""
        raise NotImplementedError
