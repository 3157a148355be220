"""Every policy: distribution against weights, and its own promise."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from croupier.balancing import make_policy
from croupier.balancing.consistent_hash import ConsistentHash
from croupier.config import validate_config
from croupier.config.schema import ListenerConfig
from croupier.model.state import Host, Member, Pool
from croupier.proxy.context import ProxyContext
from croupier.proxy.exchange import Exchange
from croupier.proxy.listener import Listener


def pool_of(weights: list[int], algorithm: str = "round_robin", **pool_options) -> Pool:
    data = {"listeners": [{"name": "w", "listen": "127.0.0.1:1", "pool": "p"}],
            "pools": [{"name": "p", "algorithm": algorithm,
                       "members": [f"127.0.0.1:{9000 + i}" for i in range(len(weights))],
                       **pool_options}]}
    config = validate_config(data).config.pools[0]
    pool = Pool("p", algorithm, make_policy, config)
    host = Host("h", "127.0.0.1")
    for i, w in enumerate(weights):
        m = Member(pool, f"m{i}", host, "127.0.0.1", 9000 + i, w)
        m.health = "up"
        pool.members.append(m)
    pool.refresh()
    return pool


def _listener() -> Listener:
    """A listener for exchanges made by hand (no socket: they are only picked for)."""
    context = ProxyContext(asyncio.new_event_loop(), lambda member, why: None)
    config = ListenerConfig(name="web", listen="127.0.0.1:8080", pool="p")
    return Listener(context, config, {"p": Pool("p", "round_robin", make_policy)})


LISTENER = _listener()


def request(peer: bytes = b"127.0.0.1", headers=(), url: bytes = b"/") -> Exchange:
    req = Exchange(LISTENER, peer, 0)
    for name, value in headers:
        req.fields += b"%s: %s\r\n" % (name, value)
    req.url = url
    return req


@pytest.mark.parametrize("algorithm, n, tolerance", [
    ("round_robin", 6000, 0.0),          # exact
    ("least_conn", 6000, 0.0),           # nothing in flight: weighted rotation, exact
    ("random", 60000, 0.02),
    ("two_choices", 60000, 0.02),
])
def test_distribution_follows_weights(algorithm, n, tolerance):
    pool = pool_of([3, 2, 1], algorithm)
    counts = Counter(pool.policy.pick(request()).name for _ in range(n))
    for name, weight in (("m0", 3), ("m1", 2), ("m2", 1)):
        share = counts[name] / n
        if algorithm == "least_conn":
            # least_conn weighs in-flight requests; with none in flight it rotates evenly
            assert counts[name] == n // 3
        else:
            assert abs(share - weight / 6) <= tolerance, (name, share)


def test_least_conn_prefers_the_member_with_fewest_in_flight():
    pool = pool_of([1, 1, 1], "least_conn")
    pool.members[0].in_flight = 5
    pool.members[1].in_flight = 1
    pool.members[2].in_flight = 3
    assert pool.policy.pick(None).name == "m1"
    pool.members[1].in_flight = 9
    assert pool.policy.pick(None).name == "m2"


def test_least_conn_ties_rotate():
    pool = pool_of([1, 1, 1], "least_conn")
    assert [pool.policy.pick(None).name for _ in range(6)] == ["m0", "m1", "m2"] * 2


def test_two_choices_never_picks_the_busier_of_two():
    pool = pool_of([1, 1], "two_choices")
    pool.members[0].in_flight = 10
    assert {pool.policy.pick(None).name for _ in range(200)} == {"m1"}


def test_hash_same_key_same_member_over_10000_requests():
    pool = pool_of([1] * 5, "hash", hash_key="header:X-User")
    for user in (b"alice", b"bob", b"carol"):
        req = request(headers=[(b"X-User", user)])
        assert len({pool.policy.pick(req).name for _ in range(10000)}) == 1


def test_hash_removing_one_of_five_members_remaps_about_a_fifth_of_keys():
    pool = pool_of([1] * 5, "hash", hash_key="client_ip")
    keys = [b"10.0.%d.%d" % (i // 256, i % 256) for i in range(20000)]
    before = {k: pool.policy.pick(request(peer=k)).name for k in keys}
    pool.members[2].health = "down"
    pool.refresh()
    after = {k: pool.policy.pick(request(peer=k)).name for k in keys}
    moved = sum(before[k] != after[k] for k in keys) / len(keys)
    print(f"hash: removing 1 of 5 members remapped {moved:.1%} of 20000 keys")
    assert moved <= 0.25
    # Only the keys of the member that left moved; everyone else's stayed put.
    assert all(after[k] == before[k] for k in keys if before[k] != "m2")
    spread = Counter(before.values())
    assert min(spread.values()) > 0.12 * len(keys)       # and the ring is not lopsided


def test_hash_keys_from_path_cookie_and_fallback():
    pool = pool_of([1] * 4, "hash", hash_key="cookie:session")
    a = request(headers=[(b"Cookie", b"x=1; session=abc; y=2")])
    b = request(headers=[(b"Cookie", b"session=abc")])
    assert pool.policy.pick(a) is pool.policy.pick(b)
    keyless = [pool.policy.pick(request()).name for _ in range(8)]
    assert sorted(set(keyless)) == ["m0", "m1", "m2", "m3"]      # dealt round robin
    by_path = pool_of([1] * 4, "hash", hash_key="path")
    assert by_path.policy.pick(request(url=b"/x?a=1")) is by_path.policy.pick(
        request(url=b"/x?b=2"))


def test_hash_weights_take_their_share_of_the_ring():
    ring = ConsistentHash(pool_of([1, 1]).members, [300, 100], None)
    counts = Counter(ring.pick(request(peer=b"k%d" % i)).name for i in range(20000))
    assert 0.68 < counts["m0"] / 20000 < 0.82


def test_sticky_sessions_keep_a_drained_member_but_not_a_maintained_one():
    pool = pool_of([1, 1, 1], "round_robin", sticky={"cookie": "lb"})
    first = request()
    member = pool.policy.pick(first)
    cookie = first.set_cookie.split(b";")[0]                 # b"lb=<id>"
    assert cookie.startswith(b"lb=")
    again = [pool.policy.pick(request(headers=[(b"Cookie", cookie)])) for _ in range(6)]
    assert set(again) == {member}
    member.admin["api"] = "drain"
    pool.refresh()
    assert pool.policy.pick(request(headers=[(b"Cookie", cookie)])) is member
    assert member not in [pool.policy.pick(request()) for _ in range(6)]   # no new sessions
    member.admin["api"] = "maint"
    pool.refresh()
    moved = request(headers=[(b"Cookie", cookie)])
    other = pool.policy.pick(moved)
    assert other is not member and moved.set_cookie is not None


def test_slow_start_ramps_a_returning_member(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    pool = pool_of([1, 1], "round_robin", slow_start="10s")
    m1 = pool.members[1]
    m1.health = "down"
    pool.refresh()
    m1.health = "up"
    pool.refresh()                                  # back: ramps from 5%
    shares = []
    for _ in range(4):
        picks = Counter(pool.policy.pick(None).name for _ in range(2000))
        shares.append(picks["m1"] / 2000)
        clock[0] += 3.0
        pool.refresh()
    assert shares[0] < 0.1 and shares[0] < shares[1] < shares[2] < shares[3]
    clock[0] += 10
    pool.refresh()
    assert not pool.ramping
    assert Counter(pool.policy.pick(None).name for _ in range(10)) == {"m0": 5, "m1": 5}


def test_make_policy_knows_every_algorithm():
    for algorithm in ("round_robin", "least_conn", "random", "two_choices", "hash"):
        assert make_policy(algorithm, []).pick(None) is None
