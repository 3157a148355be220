"""Health and failover: a member that dies or hangs costs clients nothing.

The members are real processes (`croupier demo-app`), so they can be SIGKILLed, SIGSTOPped
and restarted; croupier runs in-process so the tests can read member state as it changes.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time

import httpx
import pytest
from helpers import Load, ProcBackend, RawBackend, free_port, wait_until

INTERVAL = 0.5
TIMEOUT = 0.5
FALL = 2
RISE = 2


@pytest.fixture
def members():
    procs = [ProcBackend(f"m{i}") for i in range(3)]
    yield procs
    for p in procs:
        p.close()


def checked_config(addresses: list[str], **pool) -> dict:
    return {
        "listeners": [{"name": "web", "listen": f"127.0.0.1:{free_port()}", "pool": "app"}],
        "pools": [{"name": "app", "members": addresses, "response_timeout": "1s",
                   "connect_timeout": "1s",
                   "health": {"path": "/healthz", "interval": f"{INTERVAL}s",
                              "timeout": f"{TIMEOUT}s", "rise": RISE, "fall": FALL},
                   **pool}],
    }


def health(c, i: int) -> str:
    return c.state(lambda: c.member("app", i).health)


def eligible(c) -> list[str]:
    return c.state(lambda: [m.name for m in c.balancer.pools["app"].eligible])


# The longest a dead member may stay up: `fall` checks at most `interval` (+ jitter) apart, each
# taking at most `timeout`, plus the sweep and scheduling slack of a busy two-core machine.
DOWN_WITHIN = FALL * INTERVAL * 1.1 + TIMEOUT + 1.0


def fail_under_load(c, fail, index: int, label: str) -> tuple[Load, float]:
    """20 clients send GETs; `fail()` breaks member `index` mid-load. Returns the load (for
    its failures) and how long croupier took to mark the member down."""
    wait_until(lambda: all(health(c, i) == "up" for i in range(3)), message="all up")
    load = Load(c.url("/get-classes"), clients=20, limit=30)
    try:
        wait_until(lambda: load.total() > 300, message="steady load")
        fail()
        failed_at = time.monotonic()
        wait_until(lambda: health(c, index) == "down", timeout=10, message="member down")
        took = time.monotonic() - failed_at
        served_after = load.total()
        wait_until(lambda: load.total() > served_after + 300, message="load after the failure")
    finally:
        load.stop()
    print(f"{label}: {load.total()} requests, {len(load.failed)} failed, "
          f"marked down after {took:.2f}s (bound {DOWN_WITHIN:.2f}s)")
    return load, took


def test_sigkill_under_load_fails_no_request_and_member_goes_down_in_time(members, croupier):
    c = croupier(checked_config([m.address for m in members]))
    load, took = fail_under_load(c, members[1].kill, 1, "SIGKILL")
    assert load.failed == [], load.failed[:5]
    assert took <= DOWN_WITHIN, f"marked down after {took:.2f}s"
    history = c.state(lambda: [e.as_dict() for e in c.member("app", 1).history])
    assert any(e["change"] == "up -> down" and "check failed" in e["cause"] for e in history)


def test_sigstop_hang_fails_no_request_and_member_goes_down_in_time(members, croupier):
    c = croupier(checked_config([m.address for m in members]))
    try:
        load, took = fail_under_load(c, lambda: members[2].signal(signal.SIGSTOP), 2,
                                     "SIGSTOP")
    finally:
        members[2].signal(signal.SIGCONT)
    # A hung member accepted requests and never answered: they were retried elsewhere after
    # response_timeout, as GETs may be. None had a response begun, so none may fail.
    assert load.failed == [], load.failed[:5]
    assert took <= DOWN_WITHIN, f"marked down after {took:.2f}s"


def test_member_that_comes_back_rejoins_after_rise_passes_and_gets_its_share(members, croupier):
    c = croupier(checked_config([m.address for m in members]))
    wait_until(lambda: all(health(c, i) == "up" for i in range(3)), message="all up")
    members[0].kill()
    wait_until(lambda: health(c, 0) == "down", timeout=10, message="member down")
    assert eligible(c) == [members[1].address, members[2].address]
    members[0].restart()
    wait_until(lambda: health(c, 0) == "up", timeout=10, message="member back up")
    history = c.state(lambda: [e.as_dict() for e in c.member("app", 0).history])
    assert history[-1]["change"] == "down -> up"
    assert history[-1]["cause"] == f"{RISE} check(s) passed"
    with httpx.Client() as client:
        seen = [client.get(c.url()).text.strip() for _ in range(30)]
    assert {name: seen.count(f"classes from {name}") for name in ("m0", "m1", "m2")} == {
        "m0": 10, "m1": 10, "m2": 10}


def test_post_fully_sent_to_a_member_that_dies_is_not_replayed(backend_loop, croupier, caplog):
    posts: list[bytes] = []

    async def die_after_reading(head, writer):
        posts.append(head)
        await asyncio.sleep(0.05)      # the whole request is in; then the member dies
        writer.transport.abort()
    dying = RawBackend(backend_loop, die_after_reading)
    spare = RawBackend(backend_loop, die_after_reading)
    c = croupier(checked_config([dying.address, spare.address], health=None))
    with caplog.at_level(logging.WARNING, logger="croupier.proxy"):
        r = httpx.post(c.url("/order"), content=b"pay once")
    assert r.status_code == 502
    assert [h.split(b" ")[0] for h in posts] == [b"POST"]   # sent once, never to the spare
    assert "not retried: POST is not idempotent" in caplog.text


def test_get_to_a_member_that_resets_is_retried_on_another(backend_loop, croupier):
    async def reset(head, writer):
        writer.transport.abort()

    async def fine(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine")
        await writer.drain()
    bad = RawBackend(backend_loop, reset)
    good = RawBackend(backend_loop, fine)
    c = croupier(checked_config([bad.address, good.address], health=None))
    with httpx.Client() as client:
        assert [client.get(c.url()).text for _ in range(4)] == ["fine"] * 4
    # The retry's pick advances the rotation too, so each request meets the bad member first.
    assert c.state(lambda: c.member("app", 0).failures) == 4
    assert c.state(lambda: c.member("app", 1).retries) == 4


def test_stale_kept_alive_connection_never_becomes_a_client_error(backend_loop, croupier):
    """The member closes a kept-alive connection just as croupier reuses it."""
    served: list[int] = []

    async def once_per_connection(head, writer):
        n = len(served)
        if getattr(writer, "used", False):
            writer.transport.abort()           # "closed while idle", seen only on reuse
            return
        writer.used = True  # type: ignore[attr-defined]
        served.append(n)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    raw = RawBackend(backend_loop, once_per_connection)
    c = croupier(checked_config([raw.address], health=None, retries=0))
    with httpx.Client() as client:
        assert [client.get(c.url()).status_code for _ in range(5)] == [200] * 5
    assert c.state(lambda: c.member("app", 0).failures) == 0     # not the member's fault


def test_host_check_takes_all_its_members_out_together_and_back(croupier):
    agent = socket.socket()
    agent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    agent.bind(("127.0.0.1", 0))
    agent.listen(16)
    agent_port = agent.getsockname()[1]
    procs = [ProcBackend(f"m{i}") for i in range(3)]
    try:
        config = checked_config([], health=None)
        config["hosts"] = [
            {"name": "rack1", "address": "127.0.0.1",
             "check": {"type": "tcp", "port": agent_port, "interval": "300ms",
                       "timeout": "300ms", "rise": 2, "fall": 2}},
            {"name": "rack2", "address": "127.0.0.1"},
        ]
        config["pools"][0]["members"] = [f"rack1:{procs[0].port}", f"rack1:{procs[1].port}",
                                         f"rack2:{procs[2].port}"]
        c = croupier(config)
        assert len(eligible(c)) == 3
        agent.close()                                   # the host's check now fails
        wait_until(lambda: eligible(c) == [f"rack2:{procs[2].port}"], timeout=10,
                   message="rack1's members out")
        with httpx.Client() as client:
            assert {client.get(c.url()).text.strip() for _ in range(6)} == {"classes from m2"}
        host_history = c.state(lambda: [e.as_dict() for e in c.balancer.hosts["rack1"].history])
        assert "2 member(s) out" in host_history[-1]["cause"]
        agent = socket.socket()
        agent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        agent.bind(("127.0.0.1", agent_port))
        agent.listen(16)
        wait_until(lambda: len(eligible(c)) == 3, timeout=10, message="rack1's members back")
    finally:
        agent.close()
        for p in procs:
            p.close()


def test_all_members_down_gives_503_at_once_without_trying_them(members, croupier):
    c = croupier(checked_config([m.address for m in members]))
    for m in members:
        m.signal(signal.SIGSTOP)            # hung: any attempt would wait for a timeout
    try:
        wait_until(lambda: eligible(c) == [], timeout=15, message="all members down")
        requests_before = c.state(lambda: [c.member("app", i).requests for i in range(3)])
        r = httpx.get(c.url())
        assert r.status_code == 503
        assert r.headers["retry-after"] == "1"
        assert "3 down" in r.text
        # No attempt was made: the answer did not wait on any member.
        assert c.state(lambda: [c.member("app", i).requests for i in range(3)]) == \
            requests_before
    finally:
        for m in members:
            m.signal(signal.SIGCONT)


def test_passive_ejection_takes_out_a_failing_member_but_never_more_than_half(backend_loop,
                                                                             croupier):
    async def error(head, writer):
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 3\r\n\r\nbad")
        await writer.drain()
    bad1, bad2 = RawBackend(backend_loop, error), RawBackend(backend_loop, error)
    c = croupier(checked_config([bad1.address, bad2.address], health=None,
                                outlier={"consecutive_failures": 3, "base_ejection": "30s"}))
    with httpx.Client() as client:
        statuses = [client.get(c.url()).status_code for _ in range(12)]
    assert set(statuses) == {500}                      # 5xx answers pass through, unretried
    ejected = c.state(lambda: [m.ejected for m in c.balancer.pools["app"].members])
    assert sorted(ejected) == [False, True]            # one of two: the 50% ceiling holds
    member = c.member("app", ejected.index(True))
    history = c.state(lambda: [e.as_dict() for e in member.history])
    assert history[-1]["change"] == "ejected"
    assert history[-1]["cause"] == "3 consecutive failures, last: status 500; out for 30s"


def test_ejection_ends_and_backoff_grows(backend_loop, croupier):
    async def reset(head, writer):
        writer.transport.abort()

    async def fine(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    bad, good = RawBackend(backend_loop, reset), RawBackend(backend_loop, fine)
    c = croupier(checked_config([bad.address, good.address], health=None,
                                outlier={"consecutive_failures": 2, "base_ejection": "300ms"}))
    member = c.member("app", 0)
    with httpx.Client() as client:
        wait_until(lambda: client.get(c.url()).text == "ok" and
                   c.state(lambda: member.ejected), message="first ejection")
        wait_until(lambda: not c.state(lambda: member.ejected), message="ejection over")
        wait_until(lambda: client.get(c.url()).text == "ok" and
                   c.state(lambda: member.ejected), message="second ejection")
    causes = c.state(lambda: [e.cause for e in member.history if e.change == "ejected"])
    assert causes[0].endswith("out for 0.3s") and causes[1].endswith("out for 0.6s")


def _refusing_then_good(croupier, backend_loop, burst: int):
    """A member that refuses every connection and one that answers, ejection off, a retry
    budget of 0% past `burst`: 40 requests, their statuses."""
    async def fine(head, writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    good = RawBackend(backend_loop, fine)
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        c = croupier(checked_config([f"127.0.0.1:{dead.getsockname()[1]}", good.address],
                                    health=None, retry_budget_percent=0, retry_burst=burst,
                                    outlier={"enabled": False}))
        with httpx.Client() as client:
            return c, [client.get(c.url()).status_code for _ in range(40)]


def test_retry_budget_stops_retries_from_multiplying_an_outage(croupier, backend_loop):
    c, statuses = _refusing_then_good(croupier, backend_loop, burst=3)
    # With a budget of 0% only the burst of 3 retries is allowed; after that the requests
    # that meet the dead member first fail with 502 instead of being retried.
    dead_first = c.state(lambda: c.member("app", 0).failures)
    assert statuses[:3] == [200] * 3
    assert c.state(lambda: c.member("app", 1).retries) == 3
    assert statuses.count(502) == dead_first - 3 > 10


def test_a_retry_the_budget_refuses_does_not_move_the_rotation_on(croupier, backend_loop):
    """The budget spent: the refusing member meets one request in two, as the rotation
    says (it met three in four: the pick for the refused retry moved the rotation past the
    good member)."""
    _, statuses = _refusing_then_good(croupier, backend_loop, burst=0)
    assert statuses.count(502) == 20 and statuses.count(200) == 20
