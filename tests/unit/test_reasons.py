"""Member.why_not(): the one answer to "may this member take a new request, and if not, why"."""

from __future__ import annotations

import pytest

from croupier.balancing import make_policy
from croupier.model.state import Host, Member, Pool, Reason


def member() -> Member:
    pool = Pool("p", "round_robin", make_policy)
    m = Member(pool, "m", Host("h", "127.0.0.1"), "127.0.0.1", 9000, 1)
    m.health = "up"
    pool.members.append(m)
    m.host.members.append(m)
    return m


def set_(m: Member, change: str) -> None:
    """Apply one change named as in the table below."""
    if change == "maint":
        m.admin["api"] = "maint"
    elif change == "drain":
        m.admin["schedule"] = "drain"
    elif change == "host maint":
        m.host.admin["api"] = "maint"
    elif change == "host drain":
        m.host.admin["api"] = "drain"
    elif change == "host down":
        m.host.health = "down"
    elif change == "ejected":
        m.ejected_until = 1.0
    elif change == "down":
        m.health = "down"
    elif change == "unknown, initially down":
        m.health, m.initial_up = "unknown", False
    elif change == "unknown, initially up":
        m.health, m.initial_up = "unknown", True
    elif change == "weight 0":
        m.weight = 0
    else:
        raise AssertionError(change)


# (changes, the reason, the reason for a request whose session is bound to the member)
CASES = [
    ([], Reason.READY, Reason.READY),
    (["unknown, initially up"], Reason.READY, Reason.READY),
    (["unknown, initially down"], Reason.DOWN, Reason.DOWN),
    (["down"], Reason.DOWN, Reason.DOWN),
    (["weight 0"], Reason.WEIGHT_ZERO, Reason.WEIGHT_ZERO),
    (["ejected"], Reason.EJECTED, Reason.EJECTED),
    (["host down"], Reason.HOST_DOWN, Reason.HOST_DOWN),
    (["drain"], Reason.DRAINED, Reason.READY),          # a drained member keeps its sessions
    (["host drain"], Reason.HOST_DRAINED, Reason.READY),
    (["maint"], Reason.MAINT, Reason.MAINT),
    (["host maint"], Reason.HOST_MAINT, Reason.HOST_MAINT),
    (["drain", "down"], Reason.DRAINED, Reason.DOWN),    # the admin state is said first
    (["host drain", "maint"], Reason.MAINT, Reason.MAINT),
    (["host maint", "drain"], Reason.HOST_MAINT, Reason.HOST_MAINT),
    (["ejected", "down", "weight 0"], Reason.EJECTED, Reason.EJECTED),
]


@pytest.mark.parametrize(("changes", "reason", "sticky"), CASES,
                         ids=[", ".join(c[0]) or "nothing" for c in CASES])
def test_why_not_names_the_first_reason_and_the_pool_follows_it(changes, reason, sticky):
    m = member()
    for change in changes:
        set_(m, change)
    assert m.why_not() is reason
    assert m.why_not(sticky=True) is sticky
    assert m.may_take_request() is (reason is Reason.READY)
    m.pool.refresh()
    assert (m.pool.policy.pick() is m) is (reason is Reason.READY)
    if reason is not Reason.READY:
        assert m.pool.describe_unavailable() == f"1 members: 1 {reason.value}"


def test_a_member_is_named_by_one_key():
    m = member()
    assert m.key == "p/m"
