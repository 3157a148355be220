"""The dashboard's percentiles from the duration histogram's buckets (admin/dashboard.py)."""

from __future__ import annotations

import pytest

from croupier.admin.dashboard import quantile
from croupier.model.state import DURATION_BOUNDS


def buckets(**at: int) -> list[int]:
    counts = [0] * (len(DURATION_BOUNDS) + 1)
    for index, n in at.items():
        counts[int(index[1:])] = n
    return counts


def test_nothing_counted_has_no_percentile():
    assert quantile(0.5, buckets()) is None


def test_percentiles_are_interpolated_within_their_bucket():
    # 100 under 1 ms: the median is taken halfway up the first bucket.
    assert quantile(0.5, buckets(b0=100)) == pytest.approx(0.0005)
    assert quantile(0.99, buckets(b0=100)) == pytest.approx(0.00099)
    # 50 under 1 ms, 50 between 1 and 2.5 ms.
    assert quantile(0.5, buckets(b0=50, b1=50)) == pytest.approx(0.001)
    assert quantile(0.99, buckets(b0=50, b1=50)) == pytest.approx(0.001 + 0.0015 * 49 / 50)


def test_the_last_bucket_says_no_more_than_its_lower_bound():
    past = len(DURATION_BOUNDS)
    assert quantile(0.99, buckets(**{f"b{past}": 10})) == DURATION_BOUNDS[-1]
