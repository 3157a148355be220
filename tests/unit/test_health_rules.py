"""The rise/fall rules of active checks, and the config of checks, ejection and retries."""

from __future__ import annotations

import copy

import pytest

from croupier.config import ConfigError, validate_config
from croupier.health.checks import Streak, next_health


def run(start: str, counts_as_up: bool, results: str, rise: int = 2, fall: int = 3) -> list[str]:
    """Feed check results ("+" pass, "-" fail) and collect the health after each."""
    streak, health, seen = Streak(), start, []
    for r in results:
        streak.add(r == "+")
        health = next_health(health, counts_as_up, streak, rise, fall)
        seen.append(health)
    return seen


def test_up_member_goes_down_after_fall_failures_in_a_row():
    assert run("up", True, "--+---") == ["up", "up", "up", "up", "up", "down"]


def test_down_member_comes_back_after_rise_passes_in_a_row():
    assert run("down", True, "+-++") == ["down", "down", "down", "up"]


def test_unknown_counted_as_up_needs_fall_failures():
    assert run("unknown", True, "---") == ["unknown", "unknown", "down"]


def test_unknown_counted_as_down_is_down_at_first_failure_and_up_at_first_pass():
    assert run("unknown", False, "-") == ["down"]
    assert run("unknown", False, "+") == ["up"]


BASE = {"listeners": [{"name": "web", "listen": "127.0.0.1:8080", "pool": "p"}],
        "pools": [{"name": "p", "members": ["127.0.0.1:9001"]}]}


def problems(**pool) -> list[tuple[str, str]]:
    data = copy.deepcopy(BASE)
    data["pools"][0].update(pool)
    with pytest.raises(ConfigError) as e:
        validate_config(data)
    return e.value.problems


def test_health_config_defaults_and_status_ranges():
    data = copy.deepcopy(BASE)
    data["pools"][0]["health"] = {"expect_status": ["200-204", 302], "initial": "down"}
    cfg = validate_config(data).config.pools[0]
    assert cfg.health.expect_status == frozenset({200, 201, 202, 203, 204, 302})
    assert cfg.health.initial == "down"
    assert cfg.outlier.enabled and cfg.outlier.max_ejected_percent == 50
    assert cfg.retries == 2 and cfg.retry_body_limit == 65536


@pytest.mark.parametrize("pool, key, reason", [
    ({"health": {"expect_status": "2xx"}}, "pools[0] (p).health.expect_status", "bad status"),
    ({"health": {"body_regex": "("}}, "pools[0] (p).health.body_regex", "bad regular"),
    ({"health": {"path": "healthz"}}, "pools[0] (p).health.path", "must start with"),
    ({"health": {"initial": "maybe"}}, "pools[0] (p).health.initial", "'up' or 'down'"),
    ({"outlier": {"max_ejected_percent": 150}}, "pools[0] (p).outlier.max_ejected_percent",
     "less than or equal to 100"),
    ({"retries": -1}, "pools[0] (p).retries", "greater than or equal to 0"),
])
def test_bad_health_and_retry_config(pool, key, reason):
    found = problems(**pool)
    assert any(k == key and reason in r for k, r in found), found


def test_host_check_needs_its_target():
    data = copy.deepcopy(BASE)
    data["hosts"] = [{"name": "h", "address": "127.0.0.1", "check": {"type": "tcp"}}]
    with pytest.raises(ConfigError) as e:
        validate_config(data)
    assert any(k == "hosts[0] (h).check" and "needs port" in r for k, r in e.value.problems)
