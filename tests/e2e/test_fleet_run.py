"""A fleet as a user runs it: three `croupier run` processes (one with two workers) sharing
one etcd, driven only through the CLI and their ports. A drain through one reaches all three
before it returns; an instance cut off while etcd restarted and compacted its history reads the
whole state again and takes the drain set meanwhile."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import CROUPIER, Etcd, Load, Running, free_port, wait_until, write_config

NAMES = ("lb-a", "lb-b", "lb-c")


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CROUPIER, *args, "-c", str(home / "croupier.toml")],
                          capture_output=True, text=True, timeout=60)


def admin_url(home: Path) -> str:
    admin = tomllib.loads((home / "croupier.toml").read_text())["admin"]["listen"]
    return f"http://{admin}"


def metric(home: Path, name: str) -> float:
    text = httpx.get(f"{admin_url(home)}/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)", text, re.M)
    assert found, name
    return float(found.group(1))


@pytest.fixture
def three(tmp_path: Path, backends) -> Iterator[tuple[Etcd, list[Running]]]:
    store = Etcd(tmp_path / "etcd")
    prefix = f"/test/{uuid.uuid4().hex}"
    started: list[Running] = []
    try:
        for name in NAMES:
            home = tmp_path / name
            home.mkdir()
            port = free_port()
            path = write_config(home, [b.address for b in backends[:2]], port=port,
                                top="workers = 2" if name == "lb-c" else "")
            path.write_text(path.read_text() + (
                f'\n[cluster]\netcd = ["{store.url}"]\nprefix = "{prefix}"\n'
                f'instance = "{name}"\ntimeout = "1s"\nlease_ttl = "2s"\n'))
            started.append(Running(path, port))
        wait_until(lambda: all(cli(tmp_path / n, "fleet").stdout.count("lb-") >= 3
                               for n in NAMES[:1]),
                   timeout=15, message="the three instances listed")
        yield store, started
    finally:
        for r in started:
            if r.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(r.proc.pid, signal.SIGCONT)
                code, out = r.stop()
                assert code == 0, out[-3000:]
        store.stop()


def test_a_drain_through_one_of_three_reaches_all_before_it_returns(three, backends,
                                                                      tmp_path: Path):
    _, running = three
    listing = cli(tmp_path / "lb-b", "fleet")
    assert listing.returncode == 0, listing.stderr
    assert all(n in listing.stdout for n in NAMES) and "differ" not in listing.stdout
    loads = [Load(r.url("/"), clients=3, limit=40) for r in running]
    try:
        wait_until(lambda: all(load.total() > 20 for load in loads), message="load on all")
        target = f"app/{backends[0].address}"
        r = cli(tmp_path / "lb-a", "drain", target, "--wait")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "applied on every instance of the fleet (3)" in r.stdout
        # From the moment it returns, no instance (nor worker) sends it a new request.
        served = backends[0].requests
        before = [load.total() for load in loads]
        wait_until(lambda: all(load.total() > n + 60
                               for load, n in zip(loads, before, strict=True)),
                   timeout=20, message="more load after the drain")
        assert backends[0].requests == served
        ready = cli(tmp_path / "lb-c", "ready", target)
        assert ready.returncode == 0 and "applied on every instance" in ready.stdout
        wait_until(lambda: backends[0].requests > served + 30, message="a served again")
        back = [load.bodies["a"] for load in loads]
        wait_until(lambda: all(load.bodies["a"] > n
                               for load, n in zip(loads, back, strict=True)),
                   message="a served again through every instance")
    finally:
        for load in loads:
            load.stop()
    assert all(not load.failed for load in loads), [load.failed[:3] for load in loads]
    # c's pools change (a member more): its config is flagged as differing.
    path = tmp_path / "lb-c" / "croupier.toml"
    path.write_text(path.read_text().replace(
        f'"{backends[1].address}"]', f'"{backends[1].address}", "{backends[2].address}"]'))
    assert cli(tmp_path / "lb-c", "reload").returncode == 0
    wait_until(lambda: "configs differ" in cli(tmp_path / "lb-a", "fleet").stdout,
               message="the differing config flagged")


def test_an_instance_cut_off_across_a_restart_and_compaction_resyncs_and_loses_nothing(
        three, backends, tmp_path: Path):
    store, running = three
    c = running[2]
    resyncs = metric(tmp_path / "lb-c", "croupier_fleet_resyncs_total")
    c.proc.send_signal(signal.SIGSTOP)          # its supervisor, which holds the watch
    try:
        store.stop()
        store.start()
        wait_until(lambda: metric(tmp_path / "lb-a", "croupier_fleet_connected") == 1.0,
                   timeout=15, message="a to reach etcd again")
        # c is named as lagging until its lease expires and it leaves the list.
        changes = [(tmp_path / "lb-a", "drain", backends[0]),
                   (tmp_path / "lb-a", "drain", backends[1]),
                   (tmp_path / "lb-b", "ready", backends[1])]
        for home, state, backend in changes:
            r = cli(home, state, f"app/{backend.address}", "--fleet-timeout", "0.5")
            assert r.returncode == 0 or "applied after 0.5s on: lb-c" in r.stderr, r.stderr
        store.compact()
    finally:
        c.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: metric(tmp_path / "lb-c", "croupier_fleet_resyncs_total") > resyncs,
               timeout=20, message="c to read the whole state again")
    states = {m["name"]: m["admin_state"] for m in httpx.get(
        f"{admin_url(tmp_path / 'lb-c')}/api/v1/pools/app", timeout=5).json()["members"]}
    assert states == {backends[0].address: "drain", backends[1].address: "ready"}
    with httpx.Client() as client:                # a drained, b ready: only b serves
        assert {client.get(c.url()).text for _ in range(8)} == {"b"}
