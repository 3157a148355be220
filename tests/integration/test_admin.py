"""Planned maintenance through the admin API and the CLI: drain, maint, schedules, runtime
changes, reload, metrics. croupier runs in-process from a config file; the CLI is the real
`croupier` command, run as a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import Backend, Croupier, Load, wait_until, write_config

from croupier import __version__

CROUPIER = str(Path(sys.executable).parent / "croupier")


@pytest.fixture
def admin_croupier(tmp_path: Path):
    started: list[Croupier] = []

    def start(members: list[str], hosts: str = "", extra: str = "") -> tuple[Croupier, Path]:
        path = write_config(tmp_path, members, hosts=hosts, pool_extra=extra)
        c = Croupier.from_file(path)
        started.append(c)
        return c, path
    yield start
    for c in started:
        c.close()


def cli(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([CROUPIER, *args, "-c", str(path)], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def api(c: Croupier, path: Path) -> httpx.Client:
    token = (path.parent / "admin.token").read_text().strip()
    return httpx.Client(base_url=f"http://127.0.0.1:{c.balancer.admin_port}",
                        headers={"Authorization": f"Bearer {token}"})


def test_admin_binds_loopback_and_changes_need_the_token(backends, admin_croupier):
    c, path = admin_croupier([b.address for b in backends])
    token_file = path.parent / "admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600          # created, private
    url = f"http://127.0.0.1:{c.balancer.admin_port}"
    assert c.loaded.config.admin.listen.startswith("127.0.0.1:")
    r = httpx.get(f"{url}/api/v1/status")                        # reading needs no token
    assert r.status_code == 200 and len(r.json()["pools"][0]["members"]) == 3
    target = f"{url}/api/v1/targets/app/{backends[0].address}/state"
    assert httpx.put(target, json={"state": "drain"}).status_code == 401
    assert httpx.put(target, json={"state": "drain"},
                     headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.state(lambda: c.member("app", 0).admin_state) == "ready"   # nothing changed
    with api(c, path) as client:
        assert client.put(target.removeprefix(url), json={"state": "drain"}).status_code == 200
    assert c.state(lambda: c.member("app", 0).admin_state) == "drain"
    assert "/api/v1/targets/{target}/state" in httpx.get(f"{url}/openapi.json").json()["paths"]


def test_drain_under_load_fails_nothing_and_wait_returns_when_done(backends, admin_croupier):
    c, path = admin_croupier([b.address for b in backends])
    member = c.member("app", 1)
    load = Load(c.url("/slow?delay=0.3"), clients=12, limit=30)
    try:
        wait_until(lambda: c.state(lambda: member.in_flight) > 0, message="requests in flight")
        with api(c, path) as client:
            r = client.put(f"/api/v1/targets/app/{backends[1].address}/state",
                           json={"state": "drain", "reason": "deploy"})
        at_drain = r.json()["members"][0]
        assert at_drain["admin_state"] == "drain" and at_drain["in_flight"] > 0
        out = cli(path, "drain", f"app/{backends[1].address}", "--wait")
        assert "is drained: safe to stop" in out.stdout
        assert "in flight" in out.stdout                  # it showed progress while waiting
        assert c.state(lambda: member.in_flight) == 0
        # From the moment of the drain, the member got no new request.
        assert c.state(lambda: member.requests) == at_drain["requests"]
        served = load.total()
        wait_until(lambda: load.total() > served + 30, message="load goes on without it")
        assert c.state(lambda: member.requests) == at_drain["requests"]
    finally:
        load.stop()
    assert load.failed == [], load.failed[:3]
    history = c.state(lambda: [e.as_dict() for e in member.history])
    assert history[-1]["cause"] == "drain by api: deploy"


def test_maint_host_takes_all_its_members_out_and_ready_brings_them_back(backends,
                                                                       admin_croupier):
    hosts = ('[[hosts]]\nname = "rack1"\naddress = "127.0.0.1"\n'
             '[[hosts]]\nname = "rack2"\naddress = "127.0.0.1"\n')
    c, path = admin_croupier([f"rack1:{backends[0].port}", f"rack1:{backends[1].port}",
                              f"rack2:{backends[2].port}"], hosts=hosts)
    out = cli(path, "maint", "host:rack1")
    assert out.stdout.count(": maint") == 2
    with httpx.Client() as client:
        assert {client.get(c.url()).text for _ in range(6)} == {"c"}
    status = cli(path, "status").stdout
    assert "host rack1: health up, admin maint" in status
    cli(path, "ready", "host:rack1")
    with httpx.Client() as client:
        assert [client.get(c.url()).text for _ in range(6)] == list("abcabc")


def test_scheduled_window_drains_then_maintains_then_restores_on_time(backends,
                                                                    admin_croupier):
    c, path = admin_croupier([b.address for b in backends])
    target = f"app/{backends[0].address}"
    lead, length = 1.0, 1.5
    start = time.time() + 2.0
    out = cli(path, "schedule", target, "--start", str(start), "--duration", f"{length}s",
              "--lead", f"{lead}s", "--reason", "kernel")
    assert "window w1" in out.stdout and "(upcoming)" in out.stdout
    assert "w1 " + target in cli(path, "schedules").stdout
    member = c.member("app", 0)
    seen: list[tuple[str, float]] = [("ready", time.time())]

    def record() -> bool:
        state = c.state(lambda: member.admin_state)
        if state != seen[-1][0]:
            seen.append((state, time.time()))
        return len(seen) == 4
    wait_until(record, timeout=15, interval=0.02, message="drain, maint, ready")
    assert [s for s, _ in seen] == ["ready", "drain", "maint", "ready"]
    planned = [start - lead, start, start + length]
    for (_, at), want in zip(seen[1:], planned, strict=True):
        assert abs(at - want) < 0.6, f"changed at {at - want:+.2f}s from plan"
    assert cli(path, "schedules").stdout.strip() == ""       # an ended window is gone


def test_an_ending_window_does_not_undo_an_operators_drain(backends, admin_croupier):
    c, path = admin_croupier([b.address for b in backends])
    target = f"app/{backends[0].address}"
    cli(path, "schedule", target, "--start", "+0s", "--duration", "1s")
    cli(path, "drain", target)
    member = c.member("app", 0)
    wait_until(lambda: c.state(lambda: member.admin) == {"api": "drain"}, timeout=10,
               message="the window to end")
    assert c.state(lambda: member.admin_state) == "drain"


def test_members_add_remove_and_weight_from_the_cli(backend_loop, backends, admin_croupier):
    c, path = admin_croupier([backends[0].address, backends[1].address])
    out = cli(path, "members", "add", "app", backends[2].address, "--weight", "2")
    assert f"added app/{backends[2].address}" in out.stdout
    with httpx.Client() as client:
        seen = "".join(client.get(c.url()).text for _ in range(40))
    assert seen.count("c") == 20 and seen.count("a") == 10
    cli(path, "weight", f"app/{backends[2].address}", "1")
    cli(path, "members", "remove", f"app/{backends[0].address}")
    with httpx.Client() as client:
        assert {client.get(c.url()).text for _ in range(10)} == {"b", "c"}
    bad = cli(path, "members", "remove", "app/127.0.0.1:1", check=False)
    assert bad.returncode != 0 and "404" in bad.stderr


def test_reload_under_load_drops_nothing_and_the_new_member_takes_its_share(
        backend_loop, admin_croupier):
    backends = [Backend(backend_loop, n) for n in ("a", "b", "c", "d")]
    c, path = admin_croupier([b.address for b in backends[:3]])
    load = Load(c.url("/"), clients=10, limit=30)
    try:
        wait_until(lambda: load.total() > 200, message="steady load")
        path.write_text(path.read_text().replace(
            f'"{backends[2].address}"]', f'"{backends[2].address}", "{backends[3].address}"]'))
        out = cli(path, "reload")
        assert "1 listener(s), 1 pool(s), 4 member(s)" in out.stdout
        served = load.total()
        wait_until(lambda: load.total() > served + 400, message="load after the reload")
    finally:
        load.stop()
    assert load.failed == [], load.failed[:3]
    share = {n: load.bodies[n] for n in "abcd"}
    assert share["d"] > 0
    after = sum(b.requests for b in backends) - served
    assert backends[3].requests > after / 4 * 0.7, share


def test_reload_with_a_bad_config_changes_nothing(backends, admin_croupier):
    c, path = admin_croupier([b.address for b in backends])
    path.write_text(path.read_text().replace('pool = "app"', 'pool = "nope"'))
    r = cli(path, "reload", check=False)
    assert r.returncode == 1
    assert "no pool named 'nope'" in r.stderr
    with httpx.Client() as client:
        assert [client.get(c.url()).text for _ in range(3)] == list("abc")


def test_a_reload_says_which_changed_sections_wait_for_a_restart(backends, admin_croupier):
    c, path = admin_croupier([b.address for b in backends])
    path.write_text(path.read_text().replace(
        "[admin]\n", '[admin]\nallowed_hosts = ["lb-1.example.com"]\n', 1))
    r = cli(path, "reload")
    assert "until a restart: [admin]" in r.stderr
    # The admin listener runs as it started: the new name is not answered yet.
    port = c.balancer.admin_port
    refused = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"Host": "lb-1.example.com"})
    assert refused.status_code == 400
    unchanged = cli(path, "reload")
    assert "restart" in unchanged.stderr            # still differs from what runs


def test_a_reload_whose_access_log_cannot_be_opened_changes_nothing(backends, admin_croupier,
                                                                   tmp_path):
    c, path = admin_croupier([b.address for b in backends])
    fifo = tmp_path / "nobody-reads"
    os.mkfifo(fifo)          # writable, but opening it for writing finds no reader: ENXIO
    path.write_text(f'[access_log]\npath = "{fifo}"\n' + path.read_text())
    r = cli(path, "reload", check=False)
    assert r.returncode == 1
    assert f"access_log.path {fifo}: No such device or address" in r.stderr, r.stderr
    assert c.state(lambda: [lst.access_log for lst in c.balancer.listeners]) == [None]
    with httpx.Client() as client:
        assert [client.get(c.url()).text for _ in range(3)] == list("abc")


def test_metrics_count_each_exchange_by_status_class_termination_and_duration(
        backends, admin_croupier):
    c, _path = admin_croupier([backends[0].address], extra='outlier = { enabled = false }')
    with httpx.Client() as client:
        for path in ("/", "/", "/status/404", "/status/500", "/status/500", "/status/503"):
            client.get(c.url(path))
        c.state(lambda: c.member("app", 0).admin.update(api="maint") or
                c.member("app", 0).pool.refresh())
        assert client.get(c.url()).status_code == 503        # no member: the pool's own

    def metric(name: str, **labels: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{c.balancer.admin_port}/metrics").text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        m = re.search(rf"^{name}{{{re.escape(want)}}} (\S+)$", text, re.M)
        assert m, (name, want)
        return float(m.group(1))
    member = backends[0].address
    assert metric("croupier_responses_total", pool="app", member=member, code="2xx") == 2
    assert metric("croupier_responses_total", pool="app", member=member, code="4xx") == 1
    assert metric("croupier_responses_total", pool="app", member=member, code="5xx") == 3
    assert metric("croupier_responses_total", pool="app", member="", code="5xx") == 1
    assert metric("croupier_exchange_ends_total", pool="app", member="",
                  termination="PQ") == 1
    assert metric("croupier_exchange_duration_seconds_count", pool="app", member=member) == 6
    assert metric("croupier_exchange_duration_seconds_bucket", pool="app", member=member,
                  le="+Inf") == 6
    assert metric("croupier_bytes_out_total", pool="app", member=member) > 6 * 50
    assert metric("croupier_bytes_in_total", pool="app", member=member) > 6 * 30


def test_metrics_in_prometheus_format(backends, admin_croupier):
    c, _path = admin_croupier([b.address for b in backends])
    with httpx.Client() as client:
        for _ in range(6):
            client.get(c.url())
    text = httpx.get(f"http://127.0.0.1:{c.balancer.admin_port}/metrics").text
    line = (f'croupier_member_requests_total{{host="127.0.0.1",member="{backends[0].address}",'
            f'pool="app"}} 2.0')
    assert line in text
    assert "# TYPE croupier_member_response_seconds summary" in text
    assert 'croupier_member_admin_state{' in text and 'state="ready"} 1.0' in text
    c.state(lambda: c.member("app", 1).host.__setattr__("health", "down"))
    c.state(lambda: c.balancer.pools["app"].refresh())
    text = httpx.get(f"http://127.0.0.1:{c.balancer.admin_port}/metrics").text
    for member in backends:             # all on one host, 127.0.0.1
        for why, value in (("host-down", "1.0"), ("ready", "0.0")):
            assert (f'croupier_member_reason{{host="127.0.0.1",member="{member.address}",'
                    f'pool="app",reason="{why}"}} {value}') in text
    view = httpx.get(f"http://127.0.0.1:{c.balancer.admin_port}/api/v1/pools/app").json()
    assert [m["reason"] for m in view["members"]] == ["host-down"] * 3   # one host for all
    build = "interpreted" if os.environ.get("CROUPIER_PURE") == "1" else "compiled"
    assert f'croupier_build_info{{data_plane="{build}",version="{__version__}"}} 1.0' in text
