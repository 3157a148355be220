"""The admin API against bad and oversized input: each bad field gets a 422 that names it,
bodies over 64 KiB get 413, and nothing invalid reaches the model or the state file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import Croupier, write_config

MEMBER = "app/127.0.0.1:9"
STATE = f"/api/v1/targets/{MEMBER}/state"
MEMBERS = "/api/v1/pools/app/members"
WEIGHT = f"/api/v1/pools/{MEMBER.replace('app/', 'app/members/')}/weight"
SCHEDULES = "/api/v1/schedules"
WINDOW = '"target": "app/127.0.0.1:9", "start": 4102444800'


def window(extra: str = ', "duration": "1h"') -> str:
    """A window's JSON: a valid one, but for `extra`."""
    return "{" + WINDOW + extra + "}"


# (method, path, the JSON body as written, the field the 422 must name)
BAD = [
    ("PUT", STATE, '{"state": "drain", "reason": NaN}', "reason"),
    ("PUT", STATE, '{"state": "drain", "reason": "split\\r\\nX-Injected: 1"}', "reason"),
    ("PUT", STATE, '{"state": "drain", "reason": "%s"}' % ("r" * 10_000), "reason"),
    ("PUT", STATE, '{"state": NaN}', "state"),
    ("PUT", STATE, '{"state": "drained"}', "state"),
    ("POST", MEMBERS, '{"address": "127.0.0.1\\r\\nX: y", "port": 9001}', "address"),
    ("POST", MEMBERS, '{"address": "%s", "port": 9001}' % ("1" * 60_000), "address"),
    ("POST", MEMBERS, '{"address": "not-an-ip", "port": 9001}', "address"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": -1}', "port"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": 0}', "port"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": 1e400}', "port"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": 99999999999999999999999}', "port"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": NaN}', "port"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": 9001, "weight": -1}', "weight"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": 9001, "weight": Infinity}', "weight"),
    ("POST", MEMBERS, '{"address": "127.0.0.1", "port": 9001, "weight": 1e12}', "weight"),
    ("POST", MEMBERS, '{"host": "rack\\r\\n1", "port": 9001}', "host"),
    ("POST", MEMBERS, '{"host": "%s", "port": 9001}' % ("h" * 1000), "host"),
    ("PUT", WEIGHT, '{"weight": NaN}', "weight"),
    ("PUT", WEIGHT, '{"weight": -Infinity}', "weight"),
    ("PUT", WEIGHT, '{"weight": 1001}', "weight"),
    ("POST", SCHEDULES, '{"target": "app/127.0.0.1:9", "start": "nan", "duration": "1h"}',
     "start"),
    ("POST", SCHEDULES, '{"target": "app/127.0.0.1:9", "start": NaN, "duration": "1h"}', "start"),
    ("POST", SCHEDULES, '{"target": "app/127.0.0.1:9", "start": "inf", "duration": "1h"}',
     "start"),
    ("POST", SCHEDULES, '{"target": "app/127.0.0.1:9", "start": 1e300, "duration": "1h"}',
     "start"),
    ("POST", SCHEDULES, '{"target": "app/127.0.0.1:9", "start": -5, "duration": "1h"}', "start"),
    ("POST", SCHEDULES, window(', "end": Infinity'), "end"),
    ("POST", SCHEDULES, window(', "duration": "99999999h"'), "duration"),
    ("POST", SCHEDULES, window(', "duration": "1h", "lead": "-1s"'), "lead"),
    ("POST", SCHEDULES, window(', "duration": "1h", "lead": "NaNs"'), "lead"),
    ("POST", SCHEDULES, window(', "duration": "1h", "reason": "a\\u0000b"'), "reason"),
    ("POST", SCHEDULES, window(', "duration": "1h", "id": "../w1"'), "id"),
    ("POST", SCHEDULES, window().replace('"app/127.0.0.1:9"', '"app\\r\\n"'), "target"),
]


@pytest.fixture
def admin(tmp_path: Path) -> Iterator[tuple[Croupier, httpx.Client, Path]]:
    path = write_config(tmp_path, ["127.0.0.1:9"])
    c = Croupier.from_file(path)
    token = (tmp_path / "admin.token").read_text().strip()
    client = httpx.Client(base_url=f"http://127.0.0.1:{c.balancer.admin_port}",
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"}, timeout=30)
    # One valid change, so that a state file exists to stay unchanged.
    assert client.put(STATE, json={"state": "drain", "reason": "kept"}).status_code == 200
    yield c, client, tmp_path / "croupier.state.json"
    client.close()
    c.close()


def test_every_bad_admin_input_gets_422_naming_its_field_and_changes_nothing(admin):
    c, client, state_file = admin
    saved = state_file.read_bytes()
    before = client.get("/api/v1/status").json()
    failures = []
    for method, path, body, field in BAD:
        r = client.request(method, path, content=body.encode())
        detail = r.json().get("detail") if r.status_code == 422 else r.text[:200]
        named = isinstance(detail, list) and any(field in map(str, d["loc"]) for d in detail)
        if r.status_code != 422 or not named:
            failures.append(f"{method} {path} {body[:80]}: {r.status_code} {detail}")
    assert not failures, "\n".join(failures)
    assert state_file.read_bytes() == saved
    after = client.get("/api/v1/status").json()
    assert after["pools"] == before["pools"] and after["schedules"] == before["schedules"]
    assert c.state(lambda: len(c.balancer.pools["app"].members)) == 1


def test_a_body_over_64_kib_gets_413_however_it_comes_and_whoever_sends_it(admin):
    c, client, state_file = admin
    saved = state_file.read_bytes()
    big = json.dumps({"address": "127.0.0.1", "port": 9001, "pad": "x" * 100_000}).encode()
    assert client.post(MEMBERS, content=big).status_code == 413       # Content-Length

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 8192):
            yield big[i:i + 8192]
    r = client.post(MEMBERS, content=chunks())                          # chunked, no length
    assert r.status_code == 413 and "65536" in r.json()["detail"]
    # Reading needs no token, and a reader's body is held to the same limit.
    r = httpx.request("GET", f"{client.base_url}/api/v1/status", content=big)
    assert r.status_code == 413
    # Just under the limit, the body is read and judged on its fields.
    r = client.post(MEMBERS, content=json.dumps({"address": "1" * 60_000, "port": 9}).encode())
    assert r.status_code == 422
    assert state_file.read_bytes() == saved
    assert c.state(lambda: len(c.balancer.pools["app"].members)) == 1


def test_changes_without_the_token_get_401_from_their_headers(admin):
    _, client, _ = admin
    base = str(client.base_url)
    for method, path in (("PUT", STATE), ("POST", MEMBERS), ("DELETE", f"{SCHEDULES}/w1"),
                         ("POST", "/api/v1/reload"), ("PATCH", STATE)):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            r = httpx.request(method, base + path, headers=headers, content=b"{}")
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
