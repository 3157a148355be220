"""Round robin: exact rotation for equal weights, smooth interleaving for unequal ones."""

from __future__ import annotations

from collections import Counter

from croupier.balancing import make_policy
from croupier.model.state import Host, Member, Pool


def pool_of(weights: list[int]) -> Pool:
    pool = Pool("p", "round_robin", make_policy)
    host = Host("h", "127.0.0.1")
    for i, w in enumerate(weights):
        pool.members.append(Member(pool, f"m{i}", host, "127.0.0.1", 9000 + i, w))
    pool.refresh()
    return pool


def picks(pool: Pool, n: int) -> list[str]:
    return [pool.policy.pick().name for _ in range(n)]  # type: ignore[union-attr]


def test_equal_weights_rotate_exactly():
    assert picks(pool_of([1, 1, 1]), 9) == ["m0", "m1", "m2"] * 3


def test_3000_picks_over_three_members_is_exactly_even():
    assert Counter(picks(pool_of([1, 1, 1]), 3000)) == {"m0": 1000, "m1": 1000, "m2": 1000}


def test_weights_5_1_interleave_never_five_in_a_row():
    seq = picks(pool_of([5, 1]), 6)
    assert Counter(seq) == {"m0": 5, "m1": 1}
    assert seq == ["m0", "m0", "m0", "m1", "m0", "m0"]


def test_smooth_weights_match_ratio_over_many_rounds():
    c = Counter(picks(pool_of([3, 2, 1]), 6000))
    assert c == {"m0": 3000, "m1": 2000, "m2": 1000}


def test_ineligible_members_are_never_seen_by_the_policy():
    pool = pool_of([1, 1, 1])
    pool.members[1].health = "down"
    pool.members[2].admin["api"] = "drain"
    pool.refresh()
    assert set(picks(pool, 10)) == {"m0"}


def test_host_state_is_inherited():
    pool = pool_of([1, 1])
    pool.members[0].host.admin["api"] = "maint"
    pool.refresh()
    assert pool.policy.pick() is None
    assert "2 host-maint" in pool.describe_unavailable()


def test_weight_zero_takes_no_requests():
    pool = pool_of([0, 1])
    assert set(picks(pool, 5)) == {"m1"}


def test_admin_origins_are_kept_apart():
    pool = pool_of([1])
    m = pool.members[0]
    m.admin["api"] = "drain"
    m.admin["schedule"] = "maint"
    assert m.admin_state == "maint"
    del m.admin["schedule"]          # the window ends; the operator's drain stays
    assert m.admin_state == "drain"


def test_the_docstrings_sequence_is_the_one_dealt():
    from pathlib import Path
    dealt = " ".join(picks(pool_of([5, 1]), 6)).replace("m0", "a").replace("m1", "b")
    source = Path(__file__).parents[2] / "src/croupier/balancing/round_robin.py"
    assert dealt == "a a a b a a" and f"give {dealt}," in source.read_text()  # the docstring
