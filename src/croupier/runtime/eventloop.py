"""The event loop every croupier process runs: uvloop, less one thread pool.

uvloop resolves the address of every `sock_connect` through libuv's thread pool, even a
literal "127.0.0.1" (aiohttp, which the HTTP health checks use, connects that way), and the
first resolution starts four threads. A process with threads shares its file table, so the
kernel takes and drops a reference on it for every read, write and epoll call: about 0.5 us
of kernel time per relayed request on the `small` bench (`bench/cpu_per_request.sh`). A
literal address needs no resolver, so it is answered here, on the loop, at once.

uvloop is imported with its record of transports by file descriptor made in compiled code
(proxy/transports.py): its own, a `weakref.WeakValueDictionary`, runs four Python functions
for every connection.
"""

from __future__ import annotations

import asyncio  # noqa: F401  (imported before the swap below, so that only uvloop sees it)
import socket
import weakref
from typing import Any

from croupier.proxy.transports import TransportTable

# uvloop reads `weakref.WeakValueDictionary` once, when `uvloop.loop` is first imported: its
# loops then record transports in a TransportTable. Imported earlier by someone else, it
# keeps its own (slower, the same answers).
_original = weakref.WeakValueDictionary
weakref.WeakValueDictionary = TransportTable  # type: ignore[misc, assignment]
try:
    import uvloop
finally:
    weakref.WeakValueDictionary = _original  # type: ignore[misc]


class Loop(uvloop.Loop):
    async def getaddrinfo(self, host: Any, port: Any, *, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:
        try:
            # AI_NUMERICHOST: parse the literal, never ask DNS; AI_ADDRCONFIG would ask the
            # kernel for the configured families, which a literal does not need either.
            return socket.getaddrinfo(host, port, family, type, proto,
                                      (flags & ~socket.AI_ADDRCONFIG) | socket.AI_NUMERICHOST)
        except (socket.gaierror, UnicodeError):
            return await super().getaddrinfo(host, port, family=family, type=type,
                                             proto=proto, flags=flags)


def new_loop() -> Loop:
    return Loop()


def run(main: Any) -> Any:
    """`uvloop.run` on croupier's loop."""
    return uvloop.run(main, loop_factory=new_loop)
