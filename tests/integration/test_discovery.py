"""Members that register themselves in etcd (`[pools.discovery]`, `croupier register`) against
a real etcd: they take traffic from their first passing check, leave when their registrant
dies (lease) or stops (drained first, no request lost), and only from allowed networks."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from helpers import FAST_HEALTH, Croupier, Etcd, Load, wait_until, write_config

from croupier.cluster.etcd import EtcdClient

CROUPIER = str(Path(sys.executable).parent / "croupier")


@pytest.fixture
def discovering(tmp_path: Path, etcd: Etcd, backends):
    prefix = f"/test/{uuid.uuid4().hex}"
    path = write_config(tmp_path, [backends[0].address], pool_extra='''
allowed_networks = ["127.0.0.0/8"]
  [pools.discovery]
  etcd = "apps/app"
''' + FAST_HEALTH)
    path.write_text(path.read_text() + f'\n[cluster]\netcd = ["{etcd.url}"]\n'
                    f'prefix = "{prefix}"\ninstance = "lb-a"\nlease_ttl = "2s"\n')
    c = Croupier.from_file(path)
    wait_until(lambda: c.state(lambda: c.balancer.fleet.connected), message="etcd")
    yield c, path, prefix
    c.close()


def names(c: Croupier) -> list[str]:
    return c.state(lambda: [m.name for m in c.balancer.pools["app"].members])


def register(path: Path, address: str, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([CROUPIER, "register", "--pool", "app", "--address", address,
                             "-c", str(path), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_registered_member_serves_from_its_first_check_and_leaves_when_killed(
        discovering, backends):
    c, path, _ = discovering
    third = backends[2].address
    proc = register(path, third, "--ttl", "2s")
    try:
        wait_until(lambda: third in names(c), timeout=5, message="the member to be known")
        known = time.monotonic()
        wait_until(lambda: "c" in {httpx.get(c.url("/")).text for _ in range(4)}, timeout=5,
                   message="the member to take traffic")
        assert time.monotonic() - known < 1.5       # its first check (200 ms), and it serves
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = time.monotonic()
        wait_until(lambda: third not in names(c), timeout=10, message="the member to leave")
        assert time.monotonic() - killed <= 2 + 1.0  # within its TTL (2 s), and a margin
    finally:
        proc.kill()
        proc.wait()


def test_a_clean_deregistration_drains_first_and_loses_no_request(discovering, backends):
    c, path, _ = discovering
    second = backends[1].address
    proc = register(path, second, "--ttl", "5s")
    load = None
    try:
        wait_until(lambda: "b" in {httpx.get(c.url("/")).text for _ in range(4)}, timeout=5,
                   message="the member to take traffic")
        load = Load(c.url("/"), clients=4, limit=30)
        wait_until(lambda: load.total() > 50, message="load")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "draining app/" in err and "deregistered" in err
        assert second not in names(c)
        before = load.total()
        wait_until(lambda: load.total() > before + 50, message="load after it left")
    finally:
        if load is not None:
            load.stop()
        proc.kill()
        proc.wait()
    assert load is not None and not load.failed, load.failed[:3]


def test_only_addresses_inside_allowed_networks_are_taken(discovering, etcd: Etcd):
    c, _, prefix = discovering

    async def put() -> None:
        client = EtcdClient([etcd.url])
        await client.put(f"{prefix}/apps/app/10.9.9.9:80",
                         json.dumps({"address": "10.9.9.9", "port": 80}).encode())
        await client.put(f"{prefix}/apps/app/127.0.0.1:1", b"{not json")
        await client.close()
    asyncio.run(put())
    refused = wait_until(lambda: len(c.state(
        lambda: c.balancer.discovery.pools[0].refused)) == 2 and c.state(
        lambda: c.balancer.discovery.pools[0].refused), message="the keys to be refused")
    assert any("outside the pool's allowed_networks" in r for r in refused)
    assert "10.9.9.9:80" not in names(c) and len(names(c)) == 1
    fleet = c.lt.run(c.balancer.fleet_view())           # what `croupier fleet` prints
    assert sorted(fleet["skipped_keys"]) == sorted(refused)
