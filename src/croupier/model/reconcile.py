"""One reconcile: the members the sources want -> the model, keeping what stays.

Membership comes from sources (croupier.sources: the config file, the admin API; etcd later),
stacked so that the top one's answer is what is wanted. Whatever asked (a start, a reload, an
API call, a worker told of a change), the model is changed here and only here:

- hosts and pools are the config's; one that stays keeps its object;
- a member that stays (same pool, name, address and port) keeps its object, so its health,
  admin state, counters, requests in flight and pooled connections carry over; only its
  weight follows what is wanted;
- a member whose address or port changed is a new member (its health is that of a new
  endpoint), and the old one is retired;
- a retired member takes no new request; those in flight finish on their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from croupier.model.state import Host, Member, Pool

if TYPE_CHECKING:
    from croupier.config.load import MemberSpec
    from croupier.config.schema import Config, PoolConfig
    from croupier.model.policy import PolicyFactory

# pool name -> member name -> what that member should be
Wanted = dict[str, dict[str, "MemberSpec"]]


class Attach(Protocol):
    """What the composition root adds to a member that the model does not hold: its
    connections (the data plane's upstream side)."""

    def attach(self, member: Member, config: PoolConfig) -> None:
        """Give `member` its upstream, or apply `config` to the one it has."""
        ...

    def retire(self, member: Member) -> None:
        """`member` left the model: stop what watches it, let its idle connections go."""
        ...


@dataclass
class Changes:
    added: list[Member] = field(default_factory=list)
    retired: list[Member] = field(default_factory=list)


def reconcile(hosts: dict[str, Host], pools: dict[str, Pool], config: Config, wanted: Wanted,
              make_policy: PolicyFactory, side: Attach, at_start: bool = False,
              on_refresh: Callable[[], None] | None = None) -> Changes:
    """Make `hosts` and `pools` (changed in place) hold what `config` and `wanted` say.
    `at_start`: the process is starting, so a new member serves at once (a restart must
    not black out a pool); a member added later waits for its first check. `on_refresh`:
    told whenever a pool's eligible members are computed again (Pool.on_refresh)."""
    changes = Changes()
    for hc in config.hosts:
        host = hosts.get(hc.name)
        if host is None:
            hosts[hc.name] = Host(hc.name, hc.address)
        else:
            host.address = hc.address
    kept: dict[str, Pool] = {}
    for pc in config.pools:
        pool = pools.get(pc.name) or Pool(pc.name, pc.algorithm, make_policy, pc)
        pool.configure(pc)
        pool.on_refresh = on_refresh
        pool.algorithm = pc.algorithm
        old = {m.name: m for m in pool.members}
        members = []
        for spec in wanted.get(pc.name, {}).values():
            member = old.pop(spec.name, None)
            if member is not None and (member.address, member.port) != (spec.address,
                                                                        spec.port):
                changes.retired.append(member)
                member = None
            if member is None:
                member = _new_member(hosts, pool, pc, spec, at_start)
                changes.added.append(member)
            else:
                member.weight = spec.weight
                member.public_url = spec.public_url
            side.attach(member, pc)
            members.append(member)
        changes.retired.extend(old.values())
        pool.members = members
        kept[pc.name] = pool
    for name, pool in pools.items():
        if name not in kept:
            changes.retired.extend(pool.members)
    pools.clear()
    pools.update(kept)
    for host in hosts.values():
        host.members = []
    for pool in pools.values():
        for m in pool.members:
            m.host.members.append(m)
    in_config = {hc.name for hc in config.hosts}
    for name in [n for n, h in hosts.items() if not h.members and n not in in_config]:
        del hosts[name]
    for member in changes.retired:
        side.retire(member)
        member.record("removed", f"{member.in_flight} request(s) in flight finish")
    for pool in pools.values():
        pool.refresh()
    return changes


def _new_member(hosts: dict[str, Host], pool: Pool, pc: PoolConfig, spec: MemberSpec,
                at_start: bool) -> Member:
    host = hosts.get(spec.host)
    if host is None:     # a member named by address gets a host of that name
        host = hosts[spec.host] = Host(spec.host, spec.address)
    member = Member(pool, spec.name, host, spec.address, spec.port, spec.weight)
    member.public_url = spec.public_url
    if pc.health is None:
        member.health = "up"        # nothing checks it: it is up until it fails
    elif pc.health.initial is not None:
        member.initial_up = pc.health.initial == "up"
    else:
        member.initial_up = at_start
    return member
