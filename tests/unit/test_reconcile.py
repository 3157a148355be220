"""Member sources and the one reconcile: what stays keeps its object and state, what goes is
retired once, and what names something gone is dropped with a warning, never an error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from croupier.balancing import make_policy
from croupier.config.load import LoadedConfig, MemberSpec, load_text
from croupier.config.schema import PoolConfig
from croupier.model.reconcile import reconcile
from croupier.model.state import Host, Member, Pool
from croupier.sources import stack
from croupier.sources.admin_api import AdminApi, ApiMembers
from croupier.sources.config_file import ConfigFile


def loaded(members: str, hosts: str = "127.0.0.1", health: bool = False,
           pools: str = "") -> LoadedConfig:
    check = '\n  [pools.health]\n  path = "/health"' if health else ""
    return load_text(f"""
[[listeners]]
name = "web"
listen = "127.0.0.1:8080"
pool = "app"

[[hosts]]
name = "h1"
address = "{hosts}"

[[pools]]
name = "app"
members = [{members}]{check}
{pools}
""", Path("/etc/croupier/croupier.toml"))


class Side:
    """The composition root's part, recorded: which members got an upstream, which left."""

    def __init__(self) -> None:
        self.attached: list[str] = []
        self.retired: list[str] = []

    def attach(self, member: Member, config: PoolConfig) -> None:
        self.attached.append(member.key)

    def retire(self, member: Member) -> None:
        self.retired.append(member.key)


class Model:
    def __init__(self, config: LoadedConfig, api: ApiMembers | None = None) -> None:
        self.hosts: dict[str, Host] = {}
        self.pools: dict[str, Pool] = {}
        self.side = Side()
        self.config_file = ConfigFile(config)
        self.api = AdminApi(api)
        self.apply(at_start=True)

    def apply(self, config: LoadedConfig | None = None, at_start: bool = False):
        if config is not None:
            self.config_file = ConfigFile(config)
        return reconcile(self.hosts, self.pools, self.config_file.loaded.config,
                         stack([self.config_file, self.api]), make_policy, self.side, at_start)

    def member(self, name: str) -> Member:
        return next(m for m in self.pools["app"].members if m.name == name)


def test_a_reload_keeps_the_objects_and_state_of_members_that_stay():
    model = Model(loaded('"h1:9001", "h1:9002"'))
    kept = model.member("h1:9001")
    kept.admin["api"] = "drain"
    kept.requests, kept.in_flight = 41, 2
    changes = model.apply(loaded('{ host = "h1", port = 9001, weight = 5 }, "h1:9003"'))
    assert model.member("h1:9001") is kept
    assert (kept.admin, kept.requests, kept.in_flight, kept.weight) == ({"api": "drain"}, 41, 2,
                                                                        5)
    assert [m.name for m in changes.added] == ["h1:9003"]
    assert [m.name for m in changes.retired] == ["h1:9002"]
    assert model.side.retired == ["app/h1:9002"]
    assert [m.name for m in model.hosts["h1"].members] == ["h1:9001", "h1:9003"]
    assert model.pools["app"].eligible == [model.member("h1:9003")]   # the drained one: not


def test_a_member_whose_address_changed_is_a_new_member():
    model = Model(loaded('"h1:9001"', hosts="127.0.0.1"))
    old = model.member("h1:9001")
    old.health = "down"
    changes = model.apply(loaded('"h1:9001"', hosts="127.0.0.2"))
    new = model.member("h1:9001")
    assert new is not old and new.address == "127.0.0.2"
    assert changes.retired == [old] and changes.added == [new]
    assert new.health == "up" and model.hosts["h1"].address == "127.0.0.2"


def test_members_added_after_start_wait_for_their_first_check():
    model = Model(loaded('"h1:9001"', health=True))
    assert model.member("h1:9001").initial_up        # present at start: serves at once
    model.apply(loaded('"h1:9001", "h1:9002"', health=True))
    assert not model.member("h1:9002").initial_up


def test_the_api_source_adds_removes_and_weighs_on_top_of_the_config():
    config = loaded('"h1:9001", "h1:9002"')
    model = Model(config)
    below = model.config_file.want({})
    model.api.add(MemberSpec("app", "127.0.0.9:80", "127.0.0.9", "127.0.0.9", 80, 3), below)
    model.api.remove("app", "h1:9002", below)
    model.api.set_weight("app", "h1:9001", 7)
    model.apply()
    assert [(m.name, m.weight) for m in model.pools["app"].members] == [
        ("h1:9001", 7), ("127.0.0.9:80", 3)]
    assert model.api.changes.removed == ["app/h1:9002"]
    # A reload keeps what the API changed; the member it added gets a host of its own.
    model.apply(config)
    assert [m.name for m in model.pools["app"].members] == ["h1:9001", "127.0.0.9:80"]
    assert model.hosts["127.0.0.9"].members == [model.member("127.0.0.9:80")]
    # Added back through the API: no longer removed; removed again: gone, and its host too.
    model.api.add(MemberSpec("app", "h1:9002", "h1", "127.0.0.1", 9002, 1), below)
    model.api.remove("app", "127.0.0.9:80", below)
    model.apply()
    assert [m.name for m in model.pools["app"].members] == ["h1:9001", "h1:9002"]
    assert model.api.changes.removed == [] and model.api.changes.added == []
    assert "127.0.0.9" not in model.hosts


def test_what_names_a_gone_pool_or_member_is_dropped_with_a_warning(caplog):
    api = ApiMembers.model_validate({
        "added": [{"pool": "gone", "name": "10.0.0.1:80", "host": "10.0.0.1",
                   "address": "10.0.0.1", "port": 80, "weight": 1}],
        "removed": ["app/h1:9999"],
        "weights": {"app/h1:9999": 4, "app/h1:9001": 2}})
    with caplog.at_level(logging.WARNING, logger="croupier.sources"):
        model = Model(loaded('"h1:9001"'), api)
    assert [(m.name, m.weight) for m in model.pools["app"].members] == [("h1:9001", 2)]
    assert model.api.changes.added == [] and model.api.changes.weights == {"app/h1:9001": 2}
    text = caplog.text
    assert "pool gone dropped" in text and "app/h1:9999 dropped" in text
    caplog.clear()
    model.apply()                                    # forgotten: said once, not again
    assert caplog.text == ""


@pytest.mark.parametrize("second_pool", [True, False])
def test_a_pool_that_goes_retires_its_members(second_pool):
    extra = '[[pools]]\nname = "other"\nmembers = ["h1:7000"]'
    model = Model(loaded('"h1:9001"', pools=extra))
    other = model.pools["other"].members[0]
    model.apply(loaded('"h1:9001"', pools=extra if second_pool else ""))
    assert ("other" in model.pools) is second_pool
    assert (other.key in model.side.retired) is not second_pool
