"""The exchange: one request and its answer, the object both sides of the data plane share.

It is made when a request head begins (client side), carries what the request said and what
became of it (the member chosen, attempts, bytes both ways, the times of its steps), and ends
once, in `finish`, however it ends: its counts (the member's Tally) and its access log line
are written there and nowhere else.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Final

from croupier.proxy.http import field_name

if TYPE_CHECKING:
    from croupier.model.state import Member, Pool
    from croupier.proxy.listener import Listener
    from croupier.proxy.upstream import UpstreamConnection


log = logging.getLogger("croupier.proxy")

# The states of an exchange, and for each the states it may go to (a bit each), as h11's
# _state.py writes its own. A transition the table does not have is a bug: it raises where
# CROUPIER_STRICT_STATES is set (the test suite), and is logged at ERROR elsewhere (see
# `illegal_transition`, which the connections' tables use too).
HEAD: Final = 0         # its head is being read
WAITING: Final = 1      # its head is read: queued behind another, or about to be routed
SENT: Final = 2         # an attempt went to a member (connecting, or sent); no final head yet
RESPONDING: Final = 3   # the member's final response head came
TUNNEL: Final = 4       # the member switched protocols: bytes are copied both ways
ANSWERED: Final = 5     # croupier answered it itself (an error, 503, redirect, lookup)
DONE: Final = 6         # it ended (finish ran): counted and logged
STATE_NAMES: Final = ("HEAD", "WAITING", "SENT", "RESPONDING", "TUNNEL", "ANSWERED", "DONE")
# A list, not a tuple: compiled, indexing a tuple constant by a variable boxes it anew.
NEXT: Final = [
    1 << WAITING | 1 << DONE,                                   # HEAD: read, or refused
    1 << SENT | 1 << ANSWERED | 1 << DONE,                      # WAITING
    1 << SENT | 1 << RESPONDING | 1 << ANSWERED | 1 << DONE,    # SENT: a retry goes again
    # RESPONDING: a head that never reached the client (a bad 101, one too large) fails the
    # attempt, which may still be retried or answered
    1 << SENT | 1 << TUNNEL | 1 << ANSWERED | 1 << DONE,
    1 << DONE,                                                  # TUNNEL
    1 << DONE,                                                  # ANSWERED
    0,                                                          # DONE
]
# "1", or a file: a transition raised inside a protocol or parser callback is caught by the
# event loop or the parser, so it is also written there for the test run to find.
STRICT: Final = os.environ.get("CROUPIER_STRICT_STATES", "")


class IllegalTransition(Exception):
    pass


def illegal_transition(what: str) -> None:
    """A transition a table does not have: raise (strict) or log it."""
    if not STRICT:
        log.error("%s (a bug: please report it)", what)
        return
    if STRICT != "1":
        with open(STRICT, "a") as record:
            record.write(what + "\n")
    raise IllegalTransition(what)


class Exchange:
    """One request and its answer, from the first byte of its head to its end: the one
    object a request (plain slots), and the one place it ends (`finish`), however it ends:
    the access log line is written there and nowhere else."""

    __slots__ = (
        "attempts",
        "begun",
        "body",
        "body_done",
        "body_size",
        "bytes_in",
        "bytes_out",
        "chunked",
        "close_after",
        "connect_time",
        "connection_field",
        "content_length",
        "discard",
        "drop",
        "fields",
        "first_byte",
        "forwarded_host",
        "forwarded_proto",
        "host",
        "http11",
        "listener",
        "log_client",
        "member",
        "method",
        "peer",
        "peer_port",
        "pool",
        "replay",
        "replay_limit",
        "replayable",
        "request_id",
        "response_done",
        "response_started",
        "sent_at",
        "served_by",
        "set_cookie",
        "sink",
        "state",
        "status",
        "tried",
        "upgrade",
        "upgrade_value",
        "url",
        "user_agent",
        "via",
        "xff",
    )

    def __init__(self, listener: Listener, peer: bytes, peer_port: int,
                 log_client: bytes = b"") -> None:
        self.listener = listener
        self.peer = peer                # the client's address: X-Forwarded-For, hash keys
        self.peer_port = peer_port
        self.log_client = log_client    # the log line's piece for peer and listener, or b""
        self.begun = 0.0                # loop time: the head was read (0: answered at once)
        self.connect_time = 0.0         # seconds the last attempt took to connect (0: reused)
        self.first_byte = 0.0           # loop time: the member's response head came
        self.bytes_in = 0               # from the client: head and body
        self.bytes_out = 0              # to the client: heads and body
        self.user_agent = b""
        self.request_id = b""
        self.forwarded_proto = b""      # the client's X-Forwarded-Proto and -Host: passed on
        self.forwarded_host = b""       # only from a trusted proxy
        self.served_by: Member | None = None    # the member of the last attempt, or chosen
        self.state = HEAD
        self.set_cookie: bytes | None = None    # sticky sessions: a cookie for the response
        self.url = b""
        self.method = b""
        # The field lines copied to the member, each b"Name: value\r\n" as the client sent
        # it; the request line and the forwarding fields are added when it is sent.
        self.fields = b""
        self.host: bytes | None = None
        self.xff = b""                  # X-Forwarded-For and Via from the client, merged
        self.via = b""
        self.drop: list[bytes] | None = None     # fields the client's Connection names
        self.upgrade_value = b""
        self.http11 = True
        self.upgrade = False
        self.chunked = False
        self.content_length = -1
        self.close_after = False
        self.connection_field = False   # a Connection field came: see on_headers_complete
        # Request body bytes held until a member connection (lists made when a body comes:
        # most requests have none).
        self.body: list[bytes] | None = None
        self.body_size = 0
        # Body bytes already sent, kept while they fit `replay_limit` so that a failed
        # attempt can be replayed on another member; `replayable` is False once they no
        # longer fit.
        self.replay: list[bytes] | None = None
        self.replayable = True
        self.replay_limit = 65536
        self.attempts = 0
        self.tried: list[Member] | None = None
        self.pool: Pool | None = None
        self.sent_at = 0.0
        self.status = 0
        self.body_done = False
        self.discard = False            # answered without a member: drop the body
        self.sink: UpstreamConnection | None = None
        self.member: Member | None = None
        self.response_started = False
        self.response_done = False

    def finish(self, termination: bytes, now: float = -1.0) -> None:
        """The exchange is over (`termination`: who ended it, at what stage; see
        proxy/access_log.py's table): its counts and its log line. Runs once, whoever
        calls it."""
        if self.state == DONE:
            return
        self.state = DONE
        listener = self.listener
        if now < 0.0:
            now = listener.time()
        begun = self.begun or now
        member = self.served_by
        pool = self.pool
        tally = member.tally if member is not None else pool.unserved if pool is not None \
            else None
        if tally is not None:
            tally.count(self.status, termination, self.bytes_in + self.body_size,
                        self.bytes_out, now - begun)
        log = listener.access_log
        if log is None:
            return
        log.write(self, now, member if member is not None else pool,
                  pool.name_bytes if pool is not None else b"",
                  member.name_bytes if member is not None else b"", termination,
                  int((now - begun) * 1000.0), int(self.connect_time * 1000.0),
                  int((self.first_byte - begun) * 1000.0) if self.first_byte else 0)

    def to(self, state: int) -> None:
        """Move to `state`, as the table allows (NEXT)."""
        if not (NEXT[self.state] >> state) & 1:
            self._illegal(state)
        self.state = state

    def _illegal(self, state: int) -> None:
        illegal_transition(
            f"exchange {self.method.decode('latin-1')} {self.url.decode('latin-1')}: "
            f"{STATE_NAMES[self.state]} -> {STATE_NAMES[state]} is not a transition")

    def hold(self, pieces: tuple[bytes, ...]) -> None:
        """Hold body bytes until a member connection takes the request."""
        if self.body is None:
            self.body = list(pieces)
        else:
            self.body.extend(pieces)

    def keep_for_replay(self, pieces: tuple[bytes, ...] | list[bytes]) -> None:
        """Keep body bytes sent to a member, while a failed attempt may be replayed."""
        if self.replay is None:
            self.replay = list(pieces)
        else:
            self.replay.extend(pieces)

    def field_values(self, lname: bytes) -> list[bytes]:
        """The values of a request field by lower-case name (balancing keys, cookies)."""
        if lname == b"host":
            return [self.host] if self.host is not None else []
        if lname == b"x-forwarded-for" or lname == b"via":
            value = self.xff if lname == b"x-forwarded-for" else self.via
            return [value] if value else []
        start = len(lname) + 1
        return [line[start:].strip() for line in self.fields.split(b"\r\n")
                if line and field_name(line) == lname]
