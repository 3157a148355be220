"""An overlay (what operators set at run time: the state file's content, and what a fleet will
share) applied to a running balancer: the differences change, the rest records nothing."""

from __future__ import annotations

import time
from typing import Any

import httpx
from helpers import proxy_config, wait_until


def overlay(**parts: Any) -> dict[str, Any]:
    return {"member_admin": {}, "host_admin": {}, "added": [], "removed": [], "weights": {},
            "windows": [], **parts}


def test_an_overlay_sets_what_differs_and_records_nothing_for_what_is_held(backends, croupier):
    c = croupier(proxy_config([b.address for b in backends[:2]]))
    first = c.member("app", 0).key
    apply = c.balancer.apply_overlay
    drained = overlay(member_admin={first: "drain"})

    c.state(lambda: apply(drained, "by lb-2"))
    member = c.member("app", 0)
    assert c.state(lambda: (member.admin_state, member.admin.get("api"))) == ("drain", "drain")
    records = c.state(lambda: len(member.history))
    assert "drain by api: by lb-2" in c.state(lambda: member.history[-1].as_dict()["cause"])
    c.state(lambda: apply(drained, "again"))          # held already: nothing recorded
    assert c.state(lambda: len(member.history)) == records
    answers = {httpx.get(c.url("/")).text for _ in range(6)}
    assert answers == {"b"}                           # the drained member takes no request

    c.state(lambda: apply(overlay(host_admin={"127.0.0.1": "maint"}), "host work"))
    assert c.state(lambda: [m.admin_state for m in c.balancer.pools["app"].members]) == [
        "maint", "maint"]                              # the member's drain cleared, host maint
    c.state(lambda: apply(overlay(), "done"))
    assert c.state(lambda: [m.admin_state for m in c.balancer.pools["app"].members]) == [
        "ready", "ready"]


def test_an_overlay_changes_membership_weights_and_windows(backends, croupier):
    c = croupier(proxy_config([backends[0].address]))
    third = backends[2]
    added = {"pool": "app", "name": third.address, "host": "127.0.0.1",
             "address": "127.0.0.1", "port": int(third.address.rsplit(":", 1)[1]),
             "weight": 3}
    start = time.time() + 3600
    window = {"id": "w-fleet", "target": f"app/{backends[0].address}", "start": start,
              "end": start + 600, "lead": 0.0, "reason": "kernel"}
    c.state(lambda: c.balancer.apply_overlay(overlay(added=[added], windows=[window],
                                                     member_admin={"app/gone:1": "drain"})))
    names = c.state(lambda: [(m.name, m.weight) for m in c.balancer.pools["app"].members])
    assert names == [(backends[0].address, 1), (third.address, 3)]
    wait_until(lambda: "c" in {httpx.get(c.url("/")).text for _ in range(4)},
               message="the added member to serve")
    assert c.state(lambda: [w.id for w in c.balancer.scheduler.windows]) == ["w-fleet"]

    moved = dict(window, start=start + 60, end=start + 660)
    c.state(lambda: c.balancer.apply_overlay(overlay(added=[added], windows=[moved],
                                                     weights={f"app/{third.address}": 1})))
    assert c.state(lambda: [(w.id, w.start) for w in c.balancer.scheduler.windows]) == [
        ("w-fleet", start + 60)]                      # replaced, not doubled
    assert c.state(lambda: c.balancer.pools["app"].members[1].weight) == 1

    c.state(lambda: c.balancer.apply_overlay(overlay()))
    assert c.state(lambda: [m.name for m in c.balancer.pools["app"].members]) == [
        backends[0].address]
    assert c.state(lambda: c.balancer.scheduler.windows) == []
