"""The interface every balancing policy implements (one policy a file, as Envoy lays them out).

A policy is built from the members that passed `Member.may_take_request()`; it never sees an
ineligible member and never filters. `pick()` runs on the hot path: it must not block, await,
or allocate more than it must.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from croupier.model.state import Member


class Policy(Protocol):
    def pick(self) -> Member | None:
        """The member for the next request, or None when there is none."""
        ...
