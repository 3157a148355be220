"""Request IDs and trusted forwarding: what a member learns of the client, and what a client
cannot make it believe. Real sockets, real members; the log is a real file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import proxy_config

ID = re.compile(r"[0-9a-f]{12}-\d+")


def _start(croupier: Any, tmp_path: Path, member: str, **listener: Any) -> tuple[Any, Path]:
    config = proxy_config([member], **listener)
    log = tmp_path / "access.log"
    config["access_log"] = {"path": str(log), "format": "json"}
    return croupier(config), log


def _echo(c: Any, headers: dict[str, Any]) -> tuple[httpx.Response, dict[str, str]]:
    r = httpx.get(c.url("/echo"), headers=headers)
    assert r.status_code == 200
    return r, {k.lower(): v for k, v in r.json()["headers"]}


def _logged(c: Any, log: Path, n: int) -> list[dict[str, Any]]:
    c.lt.call(lambda: [lg.flush() for lg in c.balancer.access_logs.values()])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == n
    return lines


def test_every_request_gets_an_id_the_member_the_client_and_the_log_share(backends, croupier,
                                                                         tmp_path):
    c, log = _start(croupier, tmp_path, backends[0].address)
    ids = []
    for _ in range(3):
        r, seen = _echo(c, {})
        assert ID.fullmatch(seen["x-request-id"])
        assert r.headers["x-request-id"] == seen["x-request-id"]
        ids.append(seen["x-request-id"])
    assert len(set(ids)) == 3
    assert [line["request_id"] for line in _logged(c, log, 3)] == ids
    # croupier's own answers carry it too
    c.state(lambda: c.member("app", 0).admin.update(api="maint") or
            c.member("app", 0).pool.refresh())
    r = httpx.get(c.url("/"))
    assert r.status_code == 503 and ID.fullmatch(r.headers["x-request-id"])


def test_an_untrusted_client_cannot_forge_forwarding_fields_nor_its_id(backends, croupier,
                                                                      tmp_path):
    c, log = _start(croupier, tmp_path, backends[0].address)
    r, seen = _echo(c, {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
                        "X-Forwarded-Host": "bank.example", "X-Request-ID": "mine-1",
                        "Host": "shop.example"})
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "shop.example"
    assert ID.fullmatch(seen["x-request-id"]) and r.headers["x-request-id"] != "mine-1"
    line = _logged(c, log, 1)[0]
    assert line["client"] == "127.0.0.1" and line["request_id"] == seen["x-request-id"]


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["127.0.0.0/8", "10.0.0.0/8"]])
def test_a_trusted_proxy_is_believed(backends, croupier, tmp_path, trusted):
    c, log = _start(croupier, tmp_path, backends[0].address, trusted_proxies=trusted)
    # A chain: the client 203.0.113.9, then a proxy 10.0.0.7 (trusted only in the second
    # case), then 127.0.0.1 (trusted in both), which connects to croupier.
    r, seen = _echo(c, {"X-Forwarded-For": "203.0.113.9, 10.0.0.7",
                        "X-Forwarded-Proto": "https", "X-Forwarded-Host": "shop.example",
                        "X-Request-ID": "edge-42.a:b"})
    assert seen["x-forwarded-for"] == "203.0.113.9, 10.0.0.7, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-host"] == "shop.example"
    assert seen["x-request-id"] == "edge-42.a:b" == r.headers["x-request-id"]
    line = _logged(c, log, 1)[0]
    assert line["client"] == ("203.0.113.9" if "10.0.0.0/8" in trusted else "10.0.0.7")
    assert line["request_id"] == "edge-42.a:b"


def test_a_malformed_id_from_a_trusted_proxy_is_replaced(backends, croupier, tmp_path):
    c, _ = _start(croupier, tmp_path, backends[0].address, trusted_proxies=["127.0.0.1"])
    for bad in ("a b", "x" * 201, "<script>", "é"):
        _, seen = _echo(c, {"X-Request-ID": bad.encode()})
        assert ID.fullmatch(seen["x-request-id"]), bad


def test_the_client_ip_hash_uses_the_client_behind_a_trusted_proxy(backends, croupier,
                                                                   tmp_path):
    config = proxy_config([b.address for b in backends], trusted_proxies=["127.0.0.1"],
                          pool_options={"algorithm": "hash", "hash_key": "client_ip"})
    c = croupier(config)
    with httpx.Client() as client:
        where = {}
        for i in range(20):
            seen = {client.get(c.url(), headers={"X-Forwarded-For": f"198.51.100.{i}"}).text
                    for _ in range(5)}
            assert len(seen) == 1
            where[i] = seen.pop()
    assert len(set(where.values())) >= 2      # spread by the forwarded client, not the peer
