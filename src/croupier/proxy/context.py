"""What the data plane is given of the process around it: a narrow context, never the whole
runtime (DESIGN.md, "Architecture"). The composition root makes one per event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from croupier.model.state import Member


class HasDeadline(Protocol):
    """A connection the timeout sweep looks at: `deadline` is loop time, 0 for none."""

    deadline: float

    def on_timeout(self) -> None: ...


class ProxyContext:
    __slots__ = ("connections", "loop", "member_failed", "request_count", "request_prefix",
                 "time", "tls_failures")

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 member_failed: Callable[[Member, str], None]) -> None:
        self.loop = loop
        self.time = loop.time           # bound once: the hot path reads the clock often
        # Every open connection, client and member side, for the timeout sweep and the stop.
        self.connections: set[HasDeadline] = set()
        # A member failed live traffic (passive ejection counts it).
        self.member_failed = member_failed
        # Request IDs: a prefix drawn once a process, then a counter (no syscall a request).
        self.request_prefix = os.urandom(6).hex().encode() + b"-"
        self.request_count = 0
        self.tls_failures: dict[str, int] = {}     # handshakes that failed, by reason

    def count_tls_failure(self, reason: str) -> None:
        self.tls_failures[reason] = self.tls_failures.get(reason, 0) + 1

    def new_request_id(self) -> bytes:
        self.request_count += 1
        return self.request_prefix + str(self.request_count).encode()
