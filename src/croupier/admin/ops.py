"""What an operator can do to a running balancer, in one place: the admin API, the CLI (through
the API), maintenance windows and the state file all go through these functions.

Targets are named as people name them: "pool/member", a member's "address:port" (every pool
it serves in), or "host:NAME".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from croupier.config.load import names_member
from croupier.model.state import Host, Member, Reason, strongest

if TYPE_CHECKING:
    from croupier.model.state import Pool

STATES = ("ready", "drain", "maint")


class OpError(Exception):
    """A request an operator made that cannot be done; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Model(Protocol):
    """The pools and hosts an operator's targets name (a running instance has them)."""

    pools: dict[str, Pool]
    hosts: dict[str, Host]


@dataclass(frozen=True)
class Target:
    text: str
    members: tuple[Member, ...] = ()
    host: Host | None = None


def resolve(model: Model, text: str) -> Target:
    if text.startswith("host:"):
        name = text[5:]
        host = model.hosts.get(name)
        if host is None:
            raise OpError(404, f"no host named {name!r}")
        return Target(text, host=host)
    if "/" in text:
        pool_name, _, member_name = text.partition("/")
        pool = model.pools.get(pool_name)
        if pool is None:
            raise OpError(404, f"no pool named {pool_name!r}")
        for m in pool.members:
            if names_member(text, pool.name, m.name, m.address, m.port):
                return Target(text, members=(m,))
        raise OpError(404, f"pool {pool_name!r} has no member {member_name!r}")
    found = tuple(m for p in model.pools.values() for m in p.members
                  if names_member(text, p.name, m.name, m.address, m.port))
    if not found:
        raise OpError(404, f"no member {text!r} in any pool (use pool/member or host:NAME)")
    return Target(text, members=found)


def set_state(target: Target, state: str, origin: str, cause: str = "") -> None:
    """Set (or, with "ready", clear) the admin state that `origin` holds on a target."""
    if state not in STATES:
        raise OpError(422, f"state must be one of {', '.join(STATES)}")
    objects: list[Member | Host] = [target.host] if target.host else list(target.members)
    pools = set()
    for obj in objects:
        before = obj.admin_state
        held = obj.admin.get(origin, "ready")
        if state == "ready":
            obj.admin.pop(origin, None)
        else:
            obj.admin[origin] = state
        after = obj.admin_state
        if held != state:        # asking again for what an origin already holds records nothing
            obj.record(f"admin {before} -> {after}" if after != before else f"admin {after}",
                       f"{state} by {origin}" + (f": {cause}" if cause else ""))
        members = obj.members if isinstance(obj, Host) else [obj]
        for m in members:
            pools.add(m.pool)
            if m.admin_state != "ready" and m.upstream is not None:
                m.upstream.close_idle()     # drain and maint: no kept-alive connection waits
    for pool in pools:
        pool.refresh()


def drained(member: Member) -> bool:
    """Safe to stop: no new requests come, and none (nor any tunnel) is in flight."""
    return member.admin_state != "ready" and member.in_flight == 0


def member_view(member: Member) -> dict[str, Any]:
    requests = member.requests
    why = member.why_not()
    return {
        "pool": member.pool.name,
        "name": member.name,
        "host": member.host.name,
        "address": member.address,
        "port": member.port,
        "weight": member.weight,
        "health": member.health,
        "admin_state": member.admin_state,
        "admin_origins": dict(member.admin) | (
            {"host": member.host.admin_state} if member.host.admin_state != "ready" else {}),
        "host_health": member.host.health,
        "ejected": member.ejected,
        "reason": why.value,
        "eligible": why is Reason.READY,
        "drained": drained(member),
        "in_flight": member.in_flight,
        "requests": requests,
        "failures": member.failures,
        "retries": member.retries,
        "mean_response_ms": round(member.latency_total / member.answered * 1000, 3)
        if member.answered else None,
        "history": [e.as_dict() for e in member.history],
    }


def host_view(host: Host) -> dict[str, Any]:
    return {
        "name": host.name,
        "address": host.address,
        "health": host.health,
        "admin_state": host.admin_state,
        "admin_origins": dict(host.admin),
        "members": [m.key for m in host.members],
        "history": [e.as_dict() for e in host.history],
    }


__all__ = ["STATES", "Model", "OpError", "Target", "drained", "host_view", "member_view",
           "resolve", "set_state", "strongest"]
