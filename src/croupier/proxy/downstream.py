"""The downstream interface: all the upstream side (a member's connection) may do to the
client side. It is how the two sides meet, and where TLS (and later HTTP/2's streams) plug
in: a client side of another kind implements these methods, and the upstream side does not
change.

Rules (kept by both sides; h11's `_state.py` states its rules the same way):
- The upstream side writes to the client only through `send` and `send_pieces`, which say
  whether the client is still there; it never holds the client's transport, and never reads
  or sets its state.
- Flow control: when the member cannot take more request body, the upstream side calls
  `pause()`, and `resume()` when it can again; the client side stops and restarts reading.
  The other way, the client side calls the member connection's `pause_reading` and
  `resume_reading` (a client that reads slowly).
- An exchange ends on the client side, told by the upstream side exactly once: whole
  (`response_done`), failed (`upstream_failed`), or the member stopped taking a body it had
  answered early (`body_sink_lost`). A new member connection is announced by
  `upstream_connected`. A switch of protocols hands both connections over to a tunnel
  (`start_tunnel`, then `tunnel_activity` on every member read, `tunnel_closed` at its end).
- The client side talks to a member connection only through its public methods (`send`,
  `send_pieces`, `attach`, `detach`, `release`, `request_sent`, `pause_reading`,
  `resume_reading`), never its transport or private state.

A compiled native base class, not a `typing.Protocol`: calls through a Protocol are generic
and slow once compiled; calls on a native base class are vtable calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from croupier.proxy.exchange import Exchange
    from croupier.proxy.upstream import UpstreamConnection


class Downstream:
    def send(self, data: bytes | memoryview) -> bool:
        """Write response bytes to the client; False when it is gone (nothing written)."""
        raise NotImplementedError

    def send_pieces(self, pieces: list[bytes | memoryview] | list[bytes]) -> bool:
        """Write several pieces at once (a head and its body, a batch of chunks)."""
        raise NotImplementedError

    def buffered(self) -> int:
        """Bytes written to the client and not yet sent (a slow reader's backlog)."""
        raise NotImplementedError

    def pause(self) -> None:
        """The member cannot take more request body now: stop reading the client."""
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def keep(self, conn: UpstreamConnection) -> bool:
        """A member connection of this client's own (send_proxy) is free: keep it for the
        client's next request (False: the client is gone, close it)."""
        raise NotImplementedError

    def upstream_connected(self, ex: Exchange, conn: UpstreamConnection) -> None:
        """A new connection to the exchange's member is open: send the request on it."""
        raise NotImplementedError

    def response_done(self, ex: Exchange, now: float = -1.0) -> None:
        """The member's response was passed on whole (`now`: the loop's time, if read)."""
        raise NotImplementedError

    def upstream_failed(self, ex: Exchange, why: str, *, status: int = 502,
                        sent_to_client: bool = False, stale: bool = False,
                        connect: bool = False, termination: bytes = b"") -> None:
        """The attempt failed: retry it, answer `status`, or cut the client when part of
        the response already went out (`sent_to_client`)."""
        raise NotImplementedError

    def body_sink_lost(self, ex: Exchange) -> None:
        """The member that answered early stopped taking the rest of the request body."""
        raise NotImplementedError

    def start_tunnel(self, conn: UpstreamConnection, rest: bytes) -> None:
        """The member switched protocols: copy bytes both ways from now on, starting with
        `rest`, what came from the member after its 101."""
        raise NotImplementedError

    def tunnel_activity(self) -> None:
        """Bytes came through the tunnel from the member: it is not idle."""
        raise NotImplementedError

    def tunnel_closed(self) -> None:
        """The member closed the tunnel."""
        raise NotImplementedError
