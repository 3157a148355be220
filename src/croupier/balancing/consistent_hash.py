"""Consistent hashing on a key of the request: the same key lands on the same member, and a
member that leaves or joins moves only about 1/n of the keys (a ring with virtual nodes,
160 per unit of weight, as ketama does).

The key is `hash_key`: "client_ip", "path", "header:NAME" or "cookie:NAME". A request without
the key (no such header) is dealt round robin. The hash is blake2b, not Python's hash(), so
every worker process and every restart agrees on where a key goes.
"""

from __future__ import annotations

from bisect import bisect
from hashlib import blake2b
from typing import TYPE_CHECKING

from croupier.model.policy import Policy

if TYPE_CHECKING:
    from collections.abc import Callable

    from croupier.config.schema import PoolConfig
    from croupier.model.policy import PickContext
    from croupier.model.state import Member

POINTS_PER_WEIGHT = 160


def _h(data: bytes) -> int:
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


def key_reader(spec: str) -> Callable[[PickContext], bytes | None]:
    """How to read the key a pool hashes on, decided once at config time."""
    if spec == "client_ip":
        return lambda req: req.peer
    if spec == "path":
        return lambda req: req.url.split(b"?", 1)[0]
    kind, _, name = spec.partition(":")
    wanted = name.strip().lower().encode()
    if kind == "header":
        def header(req: PickContext) -> bytes | None:
            values = req.field_values(wanted)
            return values[0] if values else None
        return header
    if kind == "cookie":
        prefix = wanted + b"="

        def cookie(req: PickContext) -> bytes | None:
            for v in req.field_values(b"cookie"):
                for part in v.split(b";"):
                    part = part.strip()
                    if part.lower().startswith(prefix):
                        return part[len(prefix):]
            return None
        return cookie
    raise ValueError(f"bad hash_key {spec!r}")


class ConsistentHash(Policy):
    __slots__ = ("_fallback", "_key", "_members", "_owners", "_points")

    def __init__(self, members: list[Member], weights: list[int],
                 config: PoolConfig | None = None) -> None:
        self._members = list(members)
        ring: list[tuple[int, int]] = []
        for i, (m, w) in enumerate(zip(members, weights, strict=True)):
            # Points come from the member's name, so they do not move when others change;
            # weights are in hundredths, a weight of 1 is 100.
            count = max(1, POINTS_PER_WEIGHT * w // 100)
            name = m.key.encode()
            ring.extend((_h(name + b"#%d" % p), i) for p in range(count))
        ring.sort()
        self._points = [p for p, _ in ring]
        self._owners = [i for _, i in ring]
        self._key = key_reader(config.hash_key if config is not None else "client_ip")
        self._fallback = 0

    def pick(self, req: PickContext | None = None) -> Member | None:
        if not self._members:
            return None
        key = self._key(req) if req is not None else None
        if key is None:
            self._fallback = (self._fallback + 1) % len(self._members)
            return self._members[self._fallback]
        i = bisect(self._points, _h(key))
        if i == len(self._points):
            i = 0
        return self._members[self._owners[i]]
