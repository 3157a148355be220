"""Hosts, members and pools, and the one predicate that says who may take a new request.

Two dimensions are kept apart (DESIGN.md, "State of a member"):
- health, from checks: up / down / unknown;
- admin state, from people and schedules: ready / drain / maint, one per origin, so that
  clearing one origin does not clear another. The strongest origin wins: maint > drain > ready.

The control plane changes state through the methods here; every change ends in
`Pool.refresh()`, which rebuilds the list of eligible members that the balancing policy sees.
The data plane only reads `pool.policy`.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections import deque
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from croupier.config.schema import HostCheckConfig, PoolConfig
    from croupier.model.policy import Policy, PolicyFactory

Health = Literal["up", "down", "unknown"]
AdminState = Literal["ready", "drain", "maint"]
Origin = Literal["config", "api", "schedule", "host"]

_RANK: dict[str, int] = {"ready": 0, "drain": 1, "maint": 2}
HISTORY = 32        # state changes kept per member and per host, for the admin API

log = logging.getLogger("croupier.state")


class Event:
    """One state change: when, what changed, and why."""

    __slots__ = ("cause", "change", "when")

    def __init__(self, change: str, cause: str) -> None:
        self.when = time.time()
        self.change = change
        self.cause = cause

    def as_dict(self) -> dict[str, object]:
        return {"time": self.when, "change": self.change, "cause": self.cause}


class _Recorded:
    """Something whose state changes are logged once and kept in a short history."""

    __slots__ = ()
    history: deque[Event]

    def label(self) -> str:
        raise NotImplementedError

    def record(self, change: str, cause: str) -> None:
        self.history.append(Event(change, cause))
        log.info("%s: %s (%s)", self.label(), change, cause)


class Reason(StrEnum):
    """Why a member takes no new request now, or READY: one list that the data plane (through
    Pool.refresh), the admin API, the CLI, metrics and 503 bodies all render (Envoy's
    HEALTH_FLAG list). Checked in this order: the first that holds is the reason."""

    READY = "ready"
    MAINT = "maint"                 # its own admin state
    HOST_MAINT = "host-maint"       # inherited from its host
    DRAINED = "drained"
    HOST_DRAINED = "host-drained"
    HOST_DOWN = "host-down"         # the host's own check failed
    EJECTED = "ejected"             # passive: live traffic kept failing
    DOWN = "down"                   # its health check failed (or has not passed yet)
    WEIGHT_ZERO = "weight-0"


class Upstream(Protocol):
    """A member's kept-alive connections (the data plane's UpstreamPool), as the control plane
    handles them: emptied when the member may take no more requests."""

    def close_idle(self) -> None: ...

    # TLS to the member ([pools.tls]), which health checks use too; None: plain HTTP
    tls: ssl.SSLContext | None
    server_name: str
    send_proxy: int         # 1, 2: a PROXY header of that version opens each connection


def strongest(states: dict[str, str]) -> str:
    """The admin state in force, given one state per origin."""
    best = "ready"
    for s in states.values():
        if _RANK[s] > _RANK[best]:
            best = s
    return best


# Upper bounds (seconds) of the exchange-duration histogram's buckets, as Prometheus's
# defaults with 1 ms and 2.5 ms below them; the last bucket takes the rest.
DURATION_BOUNDS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                          5.0, 10.0)
# The bucket of a duration, by its half milliseconds (every bound is a whole number of
# them): one list index an exchange instead of a walk along the bounds.
_HALF_MS: Final = 2000
_BUCKET_AT: Final = [next((b for b, bound in enumerate(DURATION_BOUNDS)
                           if h <= round(bound * _HALF_MS)), len(DURATION_BOUNDS))
                     for h in range(round(DURATION_BOUNDS[-1] * _HALF_MS) + 1)]


class Tally:
    """What the exchanges of a member (or those a pool answered with none) came to, counted
    once each as it ends (Exchange.finish): responses by status class, the ways they ended
    other than normally (termination codes), bytes both ways, and how long they took.
    Plain native counters: this runs once a request."""

    __slots__ = ("buckets", "bytes_in", "bytes_out", "c1", "c2", "c3", "c4", "c5",
                 "duration_total", "ends", "no_status")

    def __init__(self) -> None:
        self.no_status = 0      # the exchange ended before a status was sent
        self.c1 = self.c2 = self.c3 = self.c4 = self.c5 = 0
        self.ends: dict[str, int] = {}       # termination code -> count, all but "--"
        self.bytes_in = 0
        self.bytes_out = 0
        self.buckets = [0] * (len(DURATION_BOUNDS) + 1)
        self.duration_total = 0.0

    @property
    def codes(self) -> list[int]:
        """By status // 100; [0]: no status was sent."""
        return [self.no_status, self.c1, self.c2, self.c3, self.c4, self.c5]

    @codes.setter
    def codes(self, codes: list[int]) -> None:
        self.no_status, self.c1, self.c2, self.c3, self.c4, self.c5 = codes

    def count(self, status: int, termination: bytes, bytes_in: int, bytes_out: int,
              duration: float) -> None:
        if status < 300:
            if status >= 200:
                self.c2 += 1
            elif status >= 100:
                self.c1 += 1
            else:
                self.no_status += 1
        elif status < 400:
            self.c3 += 1
        elif status < 500:
            self.c4 += 1
        else:
            self.c5 += 1
        if termination != b"--":
            code = termination.decode()
            self.ends[code] = self.ends.get(code, 0) + 1
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out
        self.duration_total += duration
        half_ms = int(duration * _HALF_MS + 0.999999)      # rounded up: a bound is "<="
        buckets = self.buckets
        i = _BUCKET_AT[half_ms] if half_ms < len(_BUCKET_AT) else len(DURATION_BOUNDS)
        buckets[i] += 1

    def add(self, other: Tally) -> None:
        """Sum another's counts into this one (the supervisor, its workers')."""
        self.codes = [a + b for a, b in zip(self.codes, other.codes, strict=True)]
        for code, n in other.ends.items():
            self.ends[code] = self.ends.get(code, 0) + n
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        for i, n in enumerate(other.buckets):
            self.buckets[i] += n
        self.duration_total += other.duration_total


class Host(_Recorded):
    __slots__ = ("address", "admin", "health", "history", "members", "name")

    def __init__(self, name: str, address: str) -> None:
        self.name = name
        self.address = address
        self.health: Health = "up"
        self.admin: dict[str, str] = {}
        self.members: list[Member] = []
        self.history: deque[Event] = deque(maxlen=HISTORY)

    def label(self) -> str:
        return f"host {self.name}"

    def pools(self) -> list[Pool]:
        """The pools with a member on this host (each needs a refresh when the host changes)."""
        seen: dict[str, Pool] = {}
        for m in self.members:
            seen.setdefault(m.pool.name, m.pool)
        return list(seen.values())

    @property
    def admin_state(self) -> str:
        return strongest(self.admin)


class Member(_Recorded):
    """One application instance. Counters are plain ints: the data plane bumps them."""

    __slots__ = ("address", "admin", "answered", "consecutive_failures", "ejected_until",
                 "ejections", "eligible", "failures", "health", "history", "host", "in_flight",
                 "initial_up", "key", "latency_total", "name", "name_bytes", "pool", "port",
                 "public_url", "ramp_from", "requests", "retries", "tally", "upstream",
                 "weight")

    def __init__(self, pool: Pool, name: str, host: Host, address: str, port: int,
                 weight: int) -> None:
        self.pool = pool
        self.name = name
        self.name_bytes = name.encode()     # as the access log writes it
        self.key = f"{pool.name}/{name}"    # how the state file, workers and targets name it
        self.host = host
        self.address = address
        self.port = port
        self.weight = weight
        self.health: Health = "unknown"
        self.initial_up = True          # how `unknown` counts: the pool's `initial` setting
        self.admin: dict[str, str] = {}
        self.eligible = False           # set by Pool.refresh: a plain read for the hot path
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.retries = 0
        self.answered = 0               # whole responses passed on
        self.latency_total = 0.0        # seconds from request sent to response passed on
        self.consecutive_failures = 0   # live traffic, for passive ejection
        self.ejected_until = 0.0        # loop time; 0 when not ejected
        self.ejections = 0              # how often in a row: the back-off grows with it
        self.history: deque[Event] = deque(maxlen=HISTORY)
        self.upstream: Upstream | None = None
        self.public_url: str | None = None  # where clients reach it (redirect, lookup)
        self.ramp_from = 0.0                # slow start: when it came back (0: not ramping)
        self.tally = Tally()                # what its exchanges came to

    def label(self) -> str:
        return f"pool {self.pool.name} member {self.name}"

    def url_for(self, path: str) -> str:
        """The member's own URL for `path`, as a client reaches it."""
        if self.public_url is not None:
            return self.public_url + path
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}{path}"

    @property
    def ejected(self) -> bool:
        return self.ejected_until > 0.0

    @property
    def admin_state(self) -> str:
        """Own admin state combined with the host's: a member inherits its host's drain/maint."""
        own = strongest(self.admin)
        inherited = self.host.admin_state
        return own if _RANK[own] >= _RANK[inherited] else inherited

    def why_not(self, sticky: bool = False) -> Reason:
        """THE eligibility predicate, the only place that decides who gets new work: READY
        when the member may take a new request, else why not. `sticky`: the request's
        session is bound to this member, and a drained member keeps the sessions it has
        (maint, down, ejected or weight 0 still refuse it)."""
        own = strongest(self.admin)
        host = self.host
        inherited = strongest(host.admin) if host.admin else "ready"
        if own == "maint":
            return Reason.MAINT
        if inherited == "maint":
            return Reason.HOST_MAINT
        if not sticky:
            if own == "drain":
                return Reason.DRAINED
            if inherited == "drain":
                return Reason.HOST_DRAINED
        if host.health == "down":
            return Reason.HOST_DOWN
        if self.ejected_until > 0.0:
            return Reason.EJECTED
        health = self.health
        # `unknown` (no check has finished yet) counts as the pool's `initial` says: up for
        # members present at start, so that a restart does not black out a pool.
        if health == "down" or (health == "unknown" and not self.initial_up):
            return Reason.DOWN
        if self.weight <= 0:
            return Reason.WEIGHT_ZERO
        return Reason.READY

    def may_take_request(self, sticky: bool = False) -> bool:
        return self.why_not(sticky) is Reason.READY

    def __repr__(self) -> str:
        return f"<Member {self.pool.name}/{self.name}>"


class Pool:
    __slots__ = ("_dealt", "_make_policy", "_retry_seen", "_retry_tokens", "_window",
                 "algorithm", "built", "config", "eligible", "members", "name", "name_bytes",
                 "on_refresh", "policy", "ramping", "retry_body_limit", "retry_cap",
                 "unserved")

    WINDOW = 10         # seconds of requests the retry budget is measured against

    def __init__(self, name: str, algorithm: str, make_policy: PolicyFactory,
                 config: PoolConfig | None = None) -> None:
        self.name = name
        self.name_bytes = name.encode()
        self.unserved = Tally()         # exchanges answered with no member (503, 400 ...)
        self.algorithm = algorithm
        self.config: PoolConfig | None = None
        self.retry_body_limit = 65536   # the config's default, for a pool made without one
        self.configure(config)
        self.members: list[Member] = []
        self.eligible: list[Member] = []
        self._make_policy = make_policy
        self.policy: Policy = make_policy(algorithm, [], None, None, None)
        # Told of every refresh, which follows every change of state (the supervisor pushes
        # the new states to its workers).
        self.on_refresh: Callable[[], None] | None = None
        self.ramping = False        # some member is in slow start: refresh it every second
        self.built = False
        self._dealt: tuple[object, ...] = ()   # what the policy was built from
        burst = float(config.retry_burst) if config is not None else 10.0
        self._retry_tokens = burst
        self._retry_seen = 0
        self._window: deque[int] = deque(maxlen=self.WINDOW + 1)
        self.retry_cap = burst

    def configure(self, config: PoolConfig | None) -> None:
        """Take the pool's config (at start and on reload)."""
        self.config = config
        if config is not None:      # read per request: a plain attribute, not the model's
            self.retry_body_limit = config.retry_body_limit

    def requests(self) -> int:
        return sum(m.requests for m in self.members)

    def tick_retry_budget(self) -> None:
        """Once a second (control plane): the most retries the budget may hold now, which is
        `retry_budget_percent` of the last WINDOW seconds' requests, or `retry_burst`."""
        config = self.config
        if config is None:
            return
        window = self._window
        window.append(self.requests())
        recent = window[-1] - window[0]
        self.retry_cap = max(float(config.retry_burst),
                             recent * config.retry_budget_percent / 100.0)

    def take_retry(self) -> bool:
        """The retry budget: a token bucket that requests fill by `retry_budget_percent` each,
        settled only when a retry is wanted (nothing is counted per request). It holds at most
        `retry_cap`, or the pool's requests in flight if more: what one member had in flight
        when it died can all be retried at once, while a pool whose every member keeps
        failing gets at most `retry_budget_percent` added to its load."""
        config = self.config
        percent = config.retry_budget_percent if config is not None else 20
        seen = self.requests()
        cap = max(self.retry_cap, float(sum(m.in_flight for m in self.members)))
        tokens = min(cap, self._retry_tokens + (seen - self._retry_seen) * percent / 100.0)
        self._retry_seen = seen
        if tokens < 1.0:
            self._retry_tokens = tokens
            return False
        self._retry_tokens = tokens - 1.0
        return True

    def give_back_retry(self) -> None:
        """A retry taken from the budget was not made after all (no member to take it)."""
        self._retry_tokens += 1.0

    def refresh(self) -> None:
        """Recompute who may take requests, and their weights, and hand them to a fresh
        policy. A member that comes back (health, admin, ejection, or added) while the pool
        has `slow_start` ramps from 5% of its weight to all of it over that time."""
        if self.on_refresh is not None:
            self.on_refresh()
        config = self.config
        eligible = [m for m in self.members if m.may_take_request()]
        slow = config.slow_start if config is not None else 0.0
        now = time.monotonic()
        if slow and self.built:
            before = {id(m) for m in self.eligible}
            for m in eligible:
                if id(m) not in before:
                    m.ramp_from = now
        weights = []
        ramping = False
        for m in eligible:
            w = m.weight * 100
            if m.ramp_from:
                share = (now - m.ramp_from) / slow if slow else 1.0
                if share < 1.0:
                    w = max(1, int(w * max(share, 0.05)))
                    ramping = True
                else:
                    m.ramp_from = 0.0
            weights.append(w)
        chosen = {id(m) for m in eligible}
        for m in self.members:
            m.eligible = id(m) in chosen
        dealt = (eligible, weights, config, self.algorithm, list(self.members))
        if self.built and dealt == self._dealt:
            return      # nothing changed: keep the policy, and its place in the rotation
        self._dealt = dealt
        self.eligible = eligible
        self.ramping = ramping
        self.built = True
        self.policy = self._make_policy(self.algorithm, eligible, weights, config, self.members)

    def describe_unavailable(self) -> str:
        """Why no member may take a request, for the 503 body and the log."""
        if not self.members:
            return "the pool has no members"
        reasons: dict[str, int] = {}
        for m in self.members:
            why = m.why_not()
            text = "busy" if why is Reason.READY else why.value
            reasons[text] = reasons.get(text, 0) + 1
        parts = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        return f"{len(self.members)} members: {parts}"


class Model:
    """What one instance serves: its hosts and pools (made and changed by model/reconcile.py
    only), and the hosts' own checks. The checks, the schedules and the admin API read and
    change states on it; the data plane reads the pools through its listeners."""

    __slots__ = ("host_checks", "hosts", "pools")

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.pools: dict[str, Pool] = {}
        self.host_checks: dict[str, HostCheckConfig] = {}

    def members(self) -> list[Member]:
        return [m for p in self.pools.values() for m in p.members]
