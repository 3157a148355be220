"""Routes pick pools; redirect and lookup answer where to go instead of relaying."""

from __future__ import annotations

import socket

import httpx
from helpers import free_port, json_body, read_response

from croupier.admin import ops


def two_pool_config(backends, **listener):
    return {
        "listeners": [{"name": "web", "listen": f"127.0.0.1:{free_port()}", "pool": "classes",
                       "routes": [{"path_prefix": "/meetings", "pool": "meetings"},
                                  {"host": "*.meet.example", "pool": "meetings"},
                                  {"host": "api.example", "path_prefix": "/v2/",
                                   "pool": "meetings"}],
                       **listener}],
        "pools": [{"name": "classes", "members": [backends[0].address]},
                  {"name": "meetings", "members": [backends[1].address, backends[2].address]}],
    }


def test_routes_first_match_wins_by_path_prefix_and_host(backends, croupier):
    c = croupier(two_pool_config(backends))
    get = lambda path, host="x": httpx.get(c.url(path), headers={"Host": host}).text  # noqa: E731
    assert get("/meetings") in ("b", "c")
    assert get("/meetings/today?x=1") in ("b", "c")
    assert get("/meetings?x=1") in ("b", "c")
    assert get("/meetingsroom") == "a"            # a prefix matches on a segment boundary
    assert get("/", "room1.meet.example:8080") in ("b", "c")
    assert get("/", "meet.example") == "a"         # "*." needs a subdomain
    assert get("/v2/x", "API.example") in ("b", "c")
    assert get("/v1/x", "api.example") == "a"
    assert get("/anything") == "a"


def test_redirect_mode_answers_307_to_each_member_in_turn(backends, croupier):
    config = two_pool_config(backends, mode="redirect")
    config["pools"][0]["members"] = [b.address for b in backends]
    c = croupier(config)
    locations = []
    for _ in range(3):
        r = httpx.post(c.url("/path/x?q=%41+b"), content=b"body")
        assert r.status_code == 307
        assert r.headers["cache-control"] == "no-store"
        locations.append(r.headers["location"])
    assert locations == [f"http://{b.address}/path/x?q=%41+b" for b in backends]
    # Following the redirect reaches the member with method and body kept.
    with httpx.Client(follow_redirects=True) as client:
        r = client.post(c.url("/echo"), content=b"payload")
    got = json_body(r.content)
    assert got["method"] == "POST" and got["body_len"] == 7


def test_lookup_mode_names_the_chosen_member(backends, croupier):
    config = two_pool_config(backends, mode="lookup")
    c = croupier(config)
    answers = [httpx.get(c.url("/meetings/x")).json() for _ in range(4)]
    assert [a["member"] for a in answers] == [backends[1].address, backends[2].address] * 2
    first = answers[0]
    assert first["pool"] == "meetings" and first["address"] == "127.0.0.1"
    assert first["port"] == backends[1].port
    assert first["url"] == f"http://{backends[1].address}/meetings/x"
    assert backends[1].requests == 0                   # nothing was relayed


def test_answers_croupier_gives_itself_keep_the_connection(backends, croupier):
    """A 307, a lookup or a 503 to a request without a body leaves the connection open for
    the next one (it used to close every time); one with a body not read closes."""
    config = two_pool_config(backends, mode="redirect")
    c = croupier(config)
    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        buf = bytearray()
        locations = []
        for _ in range(3):
            s.sendall(b"GET /meetings/x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = read_response(s, buf)
            assert status == 307 and "connection" not in headers
            locations.append(headers["location"])
        assert locations == [f"http://{backends[i].address}/meetings/x" for i in (1, 2, 1)]
        c.state(lambda: ops.set_state(ops.resolve(c.balancer, backends[0].address), "maint",
                                      "api"))
        s.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\nGET /meetings/y HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert status == 503 and "connection" not in headers
        assert read_response(s, buf)[0] == 307
        s.sendall(b"POST /meetings/z HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        status, headers, _ = read_response(s, buf)
        assert status == 307 and headers["connection"] == "close"
