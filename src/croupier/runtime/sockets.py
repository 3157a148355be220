"""Listening sockets: bound here, so that every way croupier takes a port (a listener, the
admin API, a worker's SO_REUSEPORT socket, the demo) says the same thing when it is taken."""

from __future__ import annotations

import socket

from croupier.config.schema import split_address


def bind(address: str, port: int, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:      # every worker binds its own socket; the kernel spreads connections
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_named(listen: str, what: str, reuse_port: bool = False) -> socket.socket:
    """Bind "address:port" for `what` (a listener, [admin].listen), or an OSError naming
    both the address and `what`."""
    address, port = split_address(listen)
    try:
        return bind(address, port, reuse_port)
    except OSError as e:
        raise OSError(e.errno, f"cannot listen on {listen} ({what}): {e.strerror}") from None


def probe(listen: str, what: str) -> None:
    """Raise, as bind_named does, if another process holds `listen`. Bound without
    SO_REUSEPORT: workers bind with it, and the kernel would quietly let a second croupier
    (or anything else that set it) share the port, each serving part of the clients."""
    bind_named(listen, what).close()
