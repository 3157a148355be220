"""A bad config names the file, the key and the reason; a good one loads whole."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from croupier.config import ConfigError, load_config, parse_duration, parse_size, validate_config

GOOD = {
    "listeners": [{"name": "web", "listen": "127.0.0.1:8080", "pool": "classes",
                   "routes": [{"path_prefix": "/meetings", "pool": "meetings"}]}],
    "hosts": [{"name": "rack1-a", "address": "127.0.0.1"}],
    "pools": [
        {"name": "classes", "members": ["rack1-a:9001", "127.0.0.1:9002",
                                        {"host": "rack1-a", "port": 9003, "weight": 2}],
         "health": {"path": "/healthz", "interval": "2s", "timeout": "1s"}},
        {"name": "meetings", "members": ["rack1-a:9101"]},
    ],
}


def problems(mutate) -> list[tuple[str, str]]:
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(ConfigError) as e:
        validate_config(data, "test.toml")
    return e.value.problems


def test_good_config_resolves_members_and_hosts():
    loaded = validate_config(copy.deepcopy(GOOD))
    members = loaded.members["classes"]
    assert [(m.name, m.host, m.address, m.port, m.weight) for m in members] == [
        ("rack1-a:9001", "rack1-a", "127.0.0.1", 9001, 1),
        ("127.0.0.1:9002", "rack1-a", "127.0.0.1", 9002, 1),   # same address: same host
        ("rack1-a:9003", "rack1-a", "127.0.0.1", 9003, 2),
    ]
    assert loaded.config.pools[0].health.interval == 2.0


@pytest.mark.parametrize("mutate, key, reason", [
    (lambda d: d["listeners"][0].update(colour="red"), "listeners[0] (web).colour",
     "unknown key"),
    (lambda d: d["listeners"][0]["routes"][0].update(pool="nope"),
     "listeners[0] (web).routes[0].pool", "no pool named 'nope'"),
    (lambda d: d["listeners"][0].update(pool="nope"), "listeners[0] (web).pool",
     "no pool named 'nope'"),
    (lambda d: d["pools"][0]["members"].append("rack9:9001"),
     "pools[0] (classes).members[3]", "neither a host"),
    (lambda d: d["pools"][0]["members"].append({"host": "rack9", "port": 1}),
     "pools[0] (classes).members[3]", "no host named 'rack9'"),
    (lambda d: d["pools"][0]["members"].append("127.0.0.1:70000"),
     "pools[0] (classes).members[3]", "out of range"),
    (lambda d: d["pools"][0]["members"].append({"address": "127.0.0.1", "port": 0}),
     "pools[0] (classes).members[3].port", "greater than or equal to 1"),
    (lambda d: d["listeners"].append({"name": "two", "listen": "127.0.0.1:8080",
                                      "pool": "classes"}),
     "listeners[1] (two).listen", "already used by listener 'web'"),
    (lambda d: d["pools"][0]["health"].update(interval="2"),
     "pools[0] (classes).health.interval", "bad duration '2'"),
    (lambda d: d["pools"][0]["health"].update(interval="fast"),
     "pools[0] (classes).health.interval", "bad duration"),
    (lambda d: d["listeners"][0].update(mode="teleport"), "listeners[0] (web).mode",
     "'proxy', 'redirect' or 'lookup'"),
    (lambda d: d["listeners"][0].update(listen="localhost"), "listeners[0] (web).listen",
     "address:port"),
    (lambda d: d["pools"][1].update(name="classes"), "pools[1] (classes).name",
     "already defined"),
    (lambda d: d["pools"][0]["members"].append("127.0.0.1:9002"),
     "pools[0] (classes).members[3]", "listed twice"),
    (lambda d: d["listeners"][0].update(max_header_size="lots"),
     "listeners[0] (web).max_header_size", "bad size"),
])
def test_bad_config_names_key_and_reason(mutate, key, reason):
    found = problems(mutate)
    assert any(k == key and reason in r for k, r in found), found


def test_errors_name_the_file_and_every_problem(tmp_path: Path):
    path = tmp_path / "croupier.toml"
    path.write_text('[[listeners]]\nname = "web"\nlisten = "127.0.0.1:1"\npool = "x"\n'
                    'typo = 1\nheader_timeout = "soon"\n'
                    '[[pools]]\nname = "y"\nmembers = ["127.0.0.1:9"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = e.value.render()
    assert f"{path}: listeners[0] (web).typo: unknown key" in text
    assert f"{path}: listeners[0] (web).header_timeout: bad duration 'soon'" in text
    assert text.count(str(path)) == len(e.value.problems) >= 2


def test_toml_syntax_error_is_reported_with_the_file(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[[listeners]\nname=")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(path) in e.value.render() and "(syntax)" in e.value.render()


def test_missing_file_is_reported(tmp_path: Path):
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.toml")
    assert "No such file" in e.value.render()


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("2s", 2), ("5m", 300),
                                           ("1h", 3600), ("1.5s", 1.5)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2", 2, "2 weeks", "", "-1s", "s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


def test_sizes():
    assert parse_size(100) == 100
    assert parse_size("16KiB") == 16384
    assert parse_size("1MiB") == 1048576
    with pytest.raises(ValueError):
        parse_size("-1")


def _cluster(**keys):
    return lambda d: d.update(cluster={"etcd": ["http://127.0.0.1:2379"], **keys})


@pytest.mark.parametrize("mutate, key, reason", [
    (_cluster(etcd=["ftp://10.0.0.1:2379"]), "cluster.etcd", "is not http(s)://HOST:PORT"),
    (_cluster(etcd=[]), "cluster.etcd", "at least 1"),
    (_cluster(prefix="croupier"), "cluster.prefix", "must start with \"/\""),
    (_cluster(prefix="/a b"), "cluster.prefix", "must start with \"/\""),
    (_cluster(instance="lb 1"), "cluster.instance", "letters, digits"),
    (_cluster(cert="c.pem"), "cluster", "needs both cert and key"),
    (_cluster(username="croupier"), "cluster", "needs both username and password_file"),
    (_cluster(ca="nowhere-ca.pem"), "cluster.ca", "no such file"),
    (_cluster(colour="red"), "cluster.colour", "unknown key"),
])
def test_a_bad_cluster_section_names_key_and_reason(mutate, key, reason):
    found = problems(mutate)
    assert any(k == key and reason in r for k, r in found), found


def test_a_cluster_section_is_read_with_its_defaults():
    data = copy.deepcopy(GOOD)
    data["cluster"] = {"etcd": ["http://127.0.0.1:2379", "https://etcd-2.internal:2379"],
                       "prefix": "/croupier/prod/"}
    cluster = validate_config(data).config.cluster
    assert cluster is not None
    assert cluster.prefix == "/croupier/prod"          # one spelling, whatever the trailing /
    assert (cluster.instance, cluster.timeout, cluster.lease_ttl) == (None, 2.0, 5.0)


def test_admin_allowed_hosts_take_names_addresses_and_domain_wildcards():
    data = copy.deepcopy(GOOD)
    good = ["LB-1.example.com", "*.lb.example.com", "10.0.0.5", "[2001:db8::5]"]
    data["admin"] = {"allowed_hosts": good}
    assert validate_config(data).config.admin.allowed_hosts == [n.lower() for n in good]


@pytest.mark.parametrize("bad", ["*.*.example.com", "lb*.example.com", "2001:db8::5",
                                 "[not-an-address]", "lb-1/admin", "lb-1:9900", ""])
def test_admin_allowed_hosts_refuse_what_no_host_header_names(bad):
    found = problems(lambda d: d.update(admin={"allowed_hosts": [bad]}))
    assert any(k.startswith("admin.allowed_hosts") for k, _ in found), found


def test_the_fleet_digest_covers_pools_hosts_and_windows_not_an_instance_s_own():
    def digests(mutate=lambda d: None) -> tuple[str, str]:
        data = copy.deepcopy(GOOD)
        mutate(data)
        loaded = validate_config(data)
        return loaded.digest, loaded.fleet_digest
    digest, fleet = digests()
    own = digests(lambda d: d.update(workers=3, admin={"listen": "127.0.0.1:9999"}))
    assert own[0] != digest and own[1] == fleet
    shared = digests(lambda d: d["pools"][1]["members"].append("rack1-a:9102"))
    assert shared[1] != fleet
