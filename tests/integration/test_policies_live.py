"""The policies and modes against real backends."""

from __future__ import annotations

import shutil
import subprocess
import threading

import httpx
import pytest
from helpers import free_port, json_body, wait_until


def config(backends, **pool):
    mode = pool.pop("mode", "proxy")
    return {"listeners": [{"name": "web", "listen": f"127.0.0.1:{free_port()}", "pool": "app",
                           "mode": mode}],
            "pools": [{"name": "app", "members": [b.address for b in backends], **pool}]}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_follows_redirects_to_each_member_in_turn_with_post_body(backends, croupier):
    c = croupier(config(backends, mode="redirect"))
    names = []
    for _ in range(3):
        out = subprocess.run(["curl", "-sL", c.url("/")], capture_output=True, text=True,
                             timeout=20).stdout
        names.append(out)
    assert names == ["a", "b", "c"]
    out = subprocess.run(["curl", "-sL", "-X", "POST", "--data-binary", "hello body",
                          c.url("/echo")], capture_output=True, timeout=20).stdout
    got = json_body(out)
    assert got["method"] == "POST" and got["body_len"] == len(b"hello body")


def test_lookup_never_names_a_drained_or_down_member(backends, croupier):
    c = croupier(config(backends, mode="lookup"))

    def out():
        c.member("app", 0).admin["api"] = "drain"
        c.member("app", 2).health = "down"
        c.balancer.pools["app"].refresh()
    c.state(out)
    with httpx.Client() as client:
        named = {client.get(c.url()).json()["member"] for _ in range(10)}
    assert named == {backends[1].address}


def test_public_url_is_what_redirect_and_lookup_name(backends, croupier):
    cfg = config(backends, mode="redirect")
    cfg["pools"][0]["members"] = [{"address": "127.0.0.1", "port": backends[0].port,
                                   "public_url": "https://shop-1.example.com"}]
    c = croupier(cfg)
    r = httpx.get(c.url("/a/b?x=%20y"))
    assert r.status_code == 307
    assert r.headers["location"] == "https://shop-1.example.com/a/b?x=%20y"


def test_least_conn_sends_fewer_requests_to_a_slow_member(backends, croupier):
    c = croupier(config(backends, algorithm="least_conn"))
    counts = {"a": 0, "b": 0, "c": 0}
    lock = threading.Lock()

    def client(path_for):
        with httpx.Client(timeout=10) as http:
            for _ in range(15):
                name = http.get(c.url(path_for)).text
                with lock:
                    counts[name] += 1
    # Member a answers slowly (0.2 s), b and c at once: with 6 clients, least_conn sees
    # a's requests in flight and sends the next ones elsewhere.
    backends[0].delay = 0.2
    threads = [threading.Thread(target=client, args=("/",)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    total = sum(counts.values())
    assert total == 90
    print(f"least_conn with member a slow: {counts}")
    assert counts["a"] < counts["b"] / 2 and counts["a"] < counts["c"] / 2, counts


@pytest.mark.parametrize("field", ["X-User", "X-Forwarded-For"])
def test_hash_on_a_header_keeps_each_user_on_one_member(backends, croupier, field):
    # X-Forwarded-For is a field croupier rewrites: the key is the value the client sent.
    c = croupier(config(backends, algorithm="hash", hash_key=f"header:{field}"))
    with httpx.Client() as client:
        where = {}
        # Twenty users: the ring follows the members' ephemeral ports, and five users all
        # landed on one member about once a hundred runs.
        for user in [f"user-{i}" for i in range(20)]:
            seen = {client.get(c.url(), headers={field: user}).text for _ in range(15)}
            assert len(seen) == 1, (user, seen)
            where[user] = seen.pop()
    assert len(set(where.values())) >= 2          # users are spread, not all on one member


def test_sticky_cookie_keeps_a_client_on_its_member_through_drain_not_maint(backends,
                                                                         croupier):
    c = croupier(config(backends, sticky={"cookie": "lb"}))
    with httpx.Client() as client:
        first = client.get(c.url())
        assert "lb=" in first.headers["set-cookie"]
        member_name = first.text
        assert {client.get(c.url()).text for _ in range(10)} == {member_name}
        index = "abc".index(member_name)
        member = c.member("app", index)

        def set_admin(state):
            member.admin["api"] = state
            member.pool.refresh()
        c.state(lambda: set_admin("drain"))
        assert {client.get(c.url()).text for _ in range(5)} == {member_name}
        with httpx.Client() as stranger:                 # no cookie: not sent to it
            assert member_name not in {stranger.get(c.url()).text for _ in range(6)}
        c.state(lambda: set_admin("maint"))
        moved = client.get(c.url())
        assert moved.text != member_name and "lb=" in moved.headers["set-cookie"]
        assert {client.get(c.url()).text for _ in range(5)} == {moved.text}
    wait_until(lambda: c.state(lambda: member.in_flight) == 0)
