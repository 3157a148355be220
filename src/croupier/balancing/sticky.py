"""Sticky sessions: cookie affinity on top of any policy.

The first answer from a member sets a cookie naming it (an opaque id: a hash of the pool and
member name, the same in every worker and after a restart). A later request with that cookie
goes to that member as long as it may take a sticky request: a drained member keeps the
sessions it has (what an operator expects of drain), a member in maint, down, or ejected
does not, and the request is dealt by the policy underneath and gets a new cookie.
"""

from __future__ import annotations

from hashlib import blake2b
from typing import TYPE_CHECKING

from croupier.model.policy import Policy

if TYPE_CHECKING:
    from croupier.model.policy import PickContext
    from croupier.model.state import Member


def sticky_id(member: Member) -> bytes:
    return blake2b(member.key.encode(), digest_size=8).hexdigest(
    ).encode()


class Sticky(Policy):
    __slots__ = ("_by_id", "_cookie", "_ids", "_inner", "_set_cookie_tail")

    def __init__(self, inner: Policy, members: list[Member], cookie: str, max_age: int) -> None:
        self._inner = inner
        self._cookie = cookie.encode() + b"="
        self._by_id = {sticky_id(m): m for m in members}
        self._ids = {id(m): i for i, m in self._by_id.items()}
        tail = "; Path=/; HttpOnly; SameSite=Lax"
        if max_age:
            tail += f"; Max-Age={max_age}"
        self._set_cookie_tail = tail.encode()

    def pick(self, req: PickContext | None = None) -> Member | None:
        if req is not None:
            wanted = self._read(req)
            if wanted is not None:
                member = self._by_id.get(wanted)
                if member is not None and member.may_take_request(sticky=True):
                    return member
        member = self._inner.pick(req)
        if member is not None and req is not None:
            req.set_cookie = self._cookie + self._ids[id(member)] + self._set_cookie_tail
        return member

    def _read(self, req: PickContext) -> bytes | None:
        prefix = self._cookie
        for value in req.field_values(b"cookie"):
            for part in value.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return part[len(prefix):]
        return None
