"""The interface every balancing policy implements (one policy a file in `croupier.balancing`,
as Envoy lays them out), kept here because a pool holds its policy: the model defines what it
holds, the policies implement it, and the composition root hands each pool a factory.

A policy is built from the members that passed `Member.may_take_request()`, each with its
effective weight (in hundredths: slow start ramps a member's weight up from a few hundredths);
it never sees an ineligible member and never filters. `pick(ctx)` runs on the hot path: it
must not block or await, and should not allocate more than it must. It is rebuilt (cheaply)
whenever eligibility or weights change.

A base class, not a Protocol: compiled, `pool.policy.pick(req)` is then a vtable call into
the policy's native method instead of a Python method lookup and call (~350 instructions
a request).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from croupier.config.schema import PoolConfig
    from croupier.model.state import Member


class PickContext(Protocol):
    """What a policy may ask of the request it picks for (Envoy's LoadBalancerContext): the
    client's address, the target, its fields; and where a policy that binds sessions puts
    the cookie that binds one."""

    peer: bytes
    url: bytes
    set_cookie: bytes | None

    def field_values(self, lname: bytes) -> list[bytes]: ...


class Policy:
    __slots__ = ()

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        pass

    def pick(self, req: PickContext | None = None) -> Member | None:
        """The member for the next request, or None when there is none."""
        raise NotImplementedError


# The pool's algorithm, its eligible members, their weights, its config and all its members
# (sticky sessions need the drained ones too) -> the policy (`croupier.balancing.make_policy`).
PolicyFactory = Callable[[str, "list[Member]", "list[int] | None", "PoolConfig | None",
                          "list[Member] | None"], Policy]
