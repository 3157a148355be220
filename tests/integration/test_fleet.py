"""A fleet: two croupier instances sharing one etcd prefix share their admin state. A drain
through either reaches both, a window scheduled on one opens on the other, and with etcd
down both keep serving with the last state while changes are refused (503)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Croupier, Etcd, Load, wait_until, write_config


def cluster(url: str, prefix: str, name: str) -> str:
    return (f'\n[cluster]\netcd = ["{url}"]\nprefix = "{prefix}"\ninstance = "{name}"\n'
            f'timeout = "1s"\nlease_ttl = "2s"\n')


@pytest.fixture
def fleet(tmp_path: Path):
    started: list[Croupier] = []

    def start(url: str, members: list[str], names: tuple[str, ...] = ("lb-a", "lb-b"),
              prefix: str | None = None) -> list[tuple[Croupier, httpx.Client]]:
        prefix = prefix or f"/test/{uuid.uuid4().hex}"
        out = []
        for name in names:
            home = tmp_path / name
            home.mkdir()
            path = write_config(home, members)
            path.write_text(path.read_text() + cluster(url, prefix, name))
            c = Croupier.from_file(path)
            started.append(c)
            token = (home / "admin.token").read_text().strip()
            out.append((c, httpx.Client(base_url=f"http://127.0.0.1:{c.balancer.admin_port}",
                                        headers={"Authorization": f"Bearer {token}"},
                                        timeout=10)))
        for c, _ in out:
            wait_until(lambda c=c: c.state(lambda: c.balancer.fleet.connected),
                       message="the instance to reach etcd")
        return out
    yield start
    for c in started:
        c.close()


def admin(c: Croupier, index: int = 0) -> str:
    return c.state(lambda: c.member("app", index).admin_state)


def test_a_drain_on_one_instance_reaches_the_other_and_ready_on_that_one_restores_both(
        etcd: Etcd, backends, fleet):
    (a, api_a), (b, api_b) = fleet(etcd.url, [x.address for x in backends[:2]])
    target = f"/api/v1/targets/app/{backends[0].address}/state"
    r = api_a.put(target, json={"state": "drain", "reason": "kernel"})
    assert r.status_code == 200, r.text
    assert admin(a) == "drain"                  # applied here before the answer
    wait_until(lambda: admin(b) == "drain", timeout=2, message="the drain to reach b")
    assert {httpx.get(b.url("/")).text for _ in range(6)} == {"b"}
    history = b.state(lambda: [e.as_dict()["cause"] for e in b.member("app", 0).history])
    assert any("by the fleet" in cause for cause in history)

    assert api_b.put(target, json={"state": "ready"}).status_code == 200
    wait_until(lambda: admin(a) == admin(b) == "ready", timeout=2, message="ready on both")


def test_a_window_scheduled_on_one_instance_opens_and_closes_on_the_other(
        etcd: Etcd, backends, fleet):
    (a, _), (_, api_b) = fleet(etcd.url, [x.address for x in backends[:2]])
    now = time.time()
    r = api_b.post("/api/v1/schedules", json={"target": f"app/{backends[1].address}",
                                               "start": now + 0.5, "duration": "1s"})
    assert r.status_code == 201, r.text
    wait_until(lambda: admin(a, 1) == "maint", timeout=5, message="the window to open on a")
    wait_until(lambda: admin(a, 1) == "ready", timeout=5, message="the window to close on a")


def test_with_etcd_down_both_serve_the_last_state_and_changes_are_refused(
        tmp_path: Path, backends, fleet):
    store = Etcd(tmp_path / "etcd")
    try:
        (a, api_a), (b, api_b) = fleet(store.url, [x.address for x in backends[:2]])
        target = f"/api/v1/targets/app/{backends[0].address}/state"
        assert api_a.put(target, json={"state": "drain"}).status_code == 200
        wait_until(lambda: admin(b) == "drain", message="the drain on b")
        store.stop()
        for c in (a, b):
            wait_until(lambda c=c: not c.state(lambda: c.balancer.fleet.connected),
                       message="the instances to notice")
        r = api_b.put(target, json={"state": "ready"})
        assert r.status_code == 503 and "etcd" in r.json()["detail"]
        assert admin(a) == admin(b) == "drain"                   # nothing changed
        assert {httpx.get(a.url("/")).text for _ in range(4)} == {"b"}   # still serving
        store.start()
        for c in (a, b):
            wait_until(lambda c=c: c.state(lambda: c.balancer.fleet.connected), timeout=15,
                       message="the instances to reconnect")
        assert api_b.put(target, json={"state": "ready"}).status_code == 200
        wait_until(lambda: admin(a) == "ready", message="ready reaches a")
    finally:
        store.stop()


def test_conflicting_changes_at_once_end_identical_everywhere(etcd: Etcd, backends, fleet):
    import concurrent.futures
    (a, api_a), (b, api_b) = fleet(etcd.url, [x.address for x in backends[:2]])
    target = f"/api/v1/targets/app/{backends[0].address}/state"
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            codes: list[Any] = list(pool.map(lambda x: x[0].put(target, json={"state": x[1]}),
                                             [(api_a, "drain"), (api_b, "maint")]))
        assert {c.status_code for c in codes} <= {200, 409}
        wait_until(lambda: admin(a) == admin(b), timeout=3, message="one state on both")
        assert admin(a) in ("drain", "maint")
        api_a.put(target, json={"state": "ready"})
        wait_until(lambda: admin(a) == admin(b) == "ready", message="ready on both")


CROUPIER = str(Path(sys.executable).parent / "croupier")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CROUPIER, *args, "-c", str(home / "croupier.toml")],
                          capture_output=True, text=True, timeout=60)


def test_drain_under_load_returns_once_both_applied_it_and_no_request_fails(
        etcd: Etcd, backends, fleet, tmp_path: Path):
    (a, _), (b, _) = fleet(etcd.url, [x.address for x in backends[:2]])
    loads = [Load(c.url("/"), clients=4, limit=30) for c in (a, b)]
    try:
        wait_until(lambda: all(load.total() > 20 for load in loads), message="load on both")
        r = cli(tmp_path / "lb-a", "drain", f"app/{backends[0].address}", "--wait")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "applied on every instance of the fleet (2)" in r.stdout
        assert "is drained: safe to stop" in r.stdout
        # From the moment it returns, neither instance sends the member a new request.
        assert admin(a) == admin(b) == "drain"
        served = backends[0].requests
        wait_until(lambda: all(load.total() > 40 for load in loads), message="more load")
        before = [load.total() for load in loads]
        wait_until(lambda: all(load.total() > n + 40
                               for load, n in zip(loads, before, strict=True)),
                   message="more load after the drain")
        assert backends[0].requests == served
    finally:
        for load in loads:
            load.stop()
    assert all(not load.failed for load in loads), [load.failed[:3] for load in loads]
    ready = cli(tmp_path / "lb-b", "ready", f"app/{backends[0].address}")
    assert ready.returncode == 0 and "applied on every instance" in ready.stdout
    assert admin(a) == "ready"


def test_fleet_lists_the_instances_and_names_one_that_lags(etcd: Etcd, backends, fleet,
                                                           tmp_path: Path):
    _, (b, _) = fleet(etcd.url, [x.address for x in backends[:2]])
    r = cli(tmp_path / "lb-a", "fleet")
    assert r.returncode == 0, r.stderr
    assert "lb-a" in r.stdout and "lb-b" in r.stdout and "this is lb-a" in r.stdout
    b.lt.run(b.balancer.fleet.stop())           # b stays listed but applies nothing more
    lagging = cli(tmp_path / "lb-a", "drain", f"app/{backends[1].address}",
                  "--fleet-timeout", "1")
    assert lagging.returncode == 1 and "not applied after 1s on: lb-b" in lagging.stderr


def test_an_instance_started_while_etcd_is_down_serves_from_its_state_file(
        tmp_path: Path, backends, fleet):
    store = Etcd(tmp_path / "etcd")
    try:
        [(a, api_a)] = fleet(store.url, [x.address for x in backends[:2]], names=("lb-a",))
        target = f"/api/v1/targets/app/{backends[0].address}/state"
        assert api_a.put(target, json={"state": "drain"}).status_code == 200
        a.close()
        store.stop()
        again = Croupier.from_file(tmp_path / "lb-a" / "croupier.toml")
        try:
            assert admin(again) == "drain"                          # from the state file
            assert {httpx.get(again.url("/")).text for _ in range(4)} == {"b"}
            assert not again.state(lambda: again.balancer.fleet.connected)
            store.start()
            wait_until(lambda: again.state(lambda: again.balancer.fleet.connected),
                       timeout=15, message="the instance to reach etcd")
            assert admin(again) == "drain"                          # the fleet's, the same
        finally:
            again.close()
    finally:
        store.stop()


def test_metrics_say_whether_the_instance_reaches_etcd_and_what_it_applied(
        etcd: Etcd, backends, fleet):
    [(_, api_a)] = fleet(etcd.url, [backends[0].address], names=("lb-a",))
    target = f"/api/v1/targets/app/{backends[0].address}/state"
    revision = api_a.put(target, json={"state": "drain"}).json()["revision"]
    text = api_a.get("/metrics").text
    assert "croupier_fleet_connected 1.0" in text
    applied = float(re.search(r"^croupier_fleet_applied_revision (\S+)", text, re.M).group(1))
    assert applied >= revision
    assert "croupier_fleet_skipped_keys 0.0" in text


def test_a_local_drain_during_an_outage_stays_on_that_instance(tmp_path: Path, backends,
                                                               fleet):
    store = Etcd(tmp_path / "etcd")
    try:
        (a, _), (b, _) = fleet(store.url, [x.address for x in backends[:2]])
        store.stop()
        for c in (a, b):
            wait_until(lambda c=c: not c.state(lambda: c.balancer.fleet.connected),
                       message="the instances to notice")
        target = f"app/{backends[0].address}"
        refused = cli(tmp_path / "lb-a", "drain", target)
        assert refused.returncode == 1 and "503" in refused.stderr
        r = cli(tmp_path / "lb-a", "drain", target, "--local", "--reason", "disk")
        assert r.returncode == 0, r.stderr
        assert admin(a) == "drain" and admin(b) == "ready"
        origins = a.state(lambda: dict(a.member("app", 0).admin))
        assert origins == {"local": "drain"}                 # shown as such
        store.start()
        for c in (a, b):
            wait_until(lambda c=c: c.state(lambda: c.balancer.fleet.connected), timeout=15,
                       message="the instances to reconnect")
        assert cli(tmp_path / "lb-b", "maint", f"app/{backends[1].address}").returncode == 0
        wait_until(lambda: admin(a, 1) == "maint", message="the fleet's change on a")
        assert admin(a) == "drain" and admin(b) == "ready"    # the local one kept apart
        saved = json.loads((tmp_path / "lb-a" / "croupier.state.json").read_text())
        assert saved["local_member_admin"] == {target: "drain"}
        assert cli(tmp_path / "lb-a", "ready", target, "--local").returncode == 0
        assert admin(a) == "ready"
    finally:
        store.stop()
