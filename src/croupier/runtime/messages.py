"""What the supervisor and its workers say to each other: typed, versioned messages (pydantic),
one JSON line each over a socketpair per worker.

Down (supervisor -> worker): the config is sent as its TOML text with its digest, so a worker
never reads the config file (a worker restarted after a refused reload serves what its
siblings serve); member state is pushed when it changes. A reload is two phases: every worker
prepares (validates, binds new listeners) and answers; only when all could does the supervisor
commit, and each worker answers with the digest it now serves; else all abort.

Up (worker -> supervisor): ready with its digest, its counters every STATS_EVERY seconds, and
the answers of a reload.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from croupier.model.state import Tally
from croupier.sources.admin_api import ApiMembers

VERSION: Final = 2      # 2: membership as the admin API source's typed changes


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Literal[2] = VERSION


class MemberState(BaseModel):
    """What the supervisor decides of a member and every worker follows."""

    model_config = ConfigDict(extra="forbid")
    health: Literal["up", "down", "unknown"]
    admin: dict[str, str]
    weight: int
    initial_up: bool


class HostState(BaseModel):
    model_config = ConfigDict(extra="forbid")
    health: Literal["up", "down", "unknown"]
    admin: dict[str, str]


class States(BaseModel):
    model_config = ConfigDict(extra="forbid")
    members: dict[str, MemberState] = {}        # by member key (pool/name)
    hosts: dict[str, HostState] = {}


class TallyState(BaseModel):
    """model.state's Tally: what the exchanges came to."""

    model_config = ConfigDict(extra="forbid")
    codes: list[int] = [0, 0, 0, 0, 0, 0]
    ends: dict[str, int] = {}
    bytes_in: int = 0
    bytes_out: int = 0
    buckets: list[int] = []
    duration_total: float = 0.0

    @classmethod
    def of(cls, tally: Tally) -> TallyState:
        return cls(codes=list(tally.codes), ends=dict(tally.ends), bytes_in=tally.bytes_in,
                   bytes_out=tally.bytes_out, buckets=list(tally.buckets),
                   duration_total=tally.duration_total)

    def add(self, other: TallyState) -> None:
        """Sum another's counts into these: model.state's Tally.add does the summing."""
        summed = self.tally()
        summed.add(other.tally())
        self.codes, self.ends = summed.codes, summed.ends
        self.bytes_in, self.bytes_out = summed.bytes_in, summed.bytes_out
        self.buckets, self.duration_total = summed.buckets, summed.duration_total

    def tally(self) -> Tally:
        t = Tally()
        t.codes = list(self.codes)
        t.ends = dict(self.ends)
        t.bytes_in, t.bytes_out = self.bytes_in, self.bytes_out
        if self.buckets:
            t.buckets = list(self.buckets)
        t.duration_total = self.duration_total
        return t


class Counters(BaseModel):
    """One member's counters in one worker."""

    model_config = ConfigDict(extra="forbid")
    tally: TallyState = TallyState()
    requests: int = 0
    failures: int = 0
    retries: int = 0
    in_flight: int = 0
    answered: int = 0
    latency_total: float = 0.0
    ejected: bool = False

    def add(self, other: Counters, in_flight: bool = True) -> None:
        """Sum a worker's counts into these (`in_flight`: not for one that died)."""
        self.requests += other.requests
        self.failures += other.failures
        self.retries += other.retries
        if in_flight:
            self.in_flight += other.in_flight
        self.answered += other.answered
        self.latency_total += other.latency_total
        self.tally.add(other.tally)


# ---- down -----------------------------------------------------------------------------------

class Init(_Message):
    op: Literal["init"] = "init"
    config: str                 # the TOML text the supervisor accepted
    path: str                   # where it came from: for error messages, and relative paths
    digest: str
    members: ApiMembers         # what the admin API changed of the membership
    states: States
    # The listening sockets the supervisor holds for this worker's slot (listener -> the fd
    # number it has in the worker), and the socket new ones come down (SCM_RIGHTS).
    sockets: dict[str, int] = {}
    fd_channel: int


class Push(_Message):
    """Member and host state changed (health, admin state, weight)."""

    op: Literal["push"] = "push"
    states: States


class Apply(_Message):
    """Membership or weights changed through the admin API; the config did not."""

    op: Literal["apply"] = "apply"
    members: ApiMembers
    states: States


class Prepare(_Message):
    op: Literal["prepare"] = "prepare"
    seq: int
    config: str
    digest: str
    # Listeners the reload adds or moves: their sockets came just before, on the fd channel,
    # in this order.
    sockets: list[str] = []


class Commit(_Message):
    op: Literal["commit"] = "commit"
    seq: int
    members: ApiMembers
    states: States


class Abort(_Message):
    op: Literal["abort"] = "abort"
    seq: int


class Stop(_Message):
    op: Literal["stop"] = "stop"


# ---- up -------------------------------------------------------------------------------------

class Ready(_Message):
    op: Literal["ready"] = "ready"
    pid: int
    digest: str


class Failed(_Message):
    op: Literal["failed"] = "failed"
    message: str


class Stats(_Message):
    op: Literal["stats"] = "stats"
    members: dict[str, Counters]
    unserved: dict[str, TallyState] = {}     # by pool: answered with no member
    connections: dict[str, int]
    log_written: int = 0        # access log lines
    log_dropped: int = 0
    tls_failures: dict[str, int] = {}       # failed TLS handshakes by reason


class Prepared(_Message):
    op: Literal["prepared"] = "prepared"
    seq: int
    errors: list[str] = []


class Committed(_Message):
    op: Literal["committed"] = "committed"
    seq: int
    digest: str
    errors: list[str] = []


ToWorker = Annotated[Init | Push | Apply | Prepare | Commit | Abort | Stop,
                     Field(discriminator="op")]
ToSupervisor = Annotated[Ready | Failed | Stats | Prepared | Committed, Field(discriminator="op")]

to_worker: TypeAdapter[ToWorker] = TypeAdapter(ToWorker)
to_supervisor: TypeAdapter[ToSupervisor] = TypeAdapter(ToSupervisor)


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode() + b"\n"
