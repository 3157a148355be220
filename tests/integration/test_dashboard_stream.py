"""The dashboard's stream (/api/v1/events) over real sockets: one frame a tick, built once
whoever watches, carrying each member's rate, status shares and percentiles."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import Croupier, wait_until, write_config


@pytest.fixture
def lb(tmp_path: Path, backends):
    c = Croupier.from_file(write_config(tmp_path, [b.address for b in backends[:2]]))
    yield c
    c.close()


class Viewer(threading.Thread):
    """A page's stream, read on a thread: the events as they come."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[tuple[str, str]] = []
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        with httpx.stream("GET", self.url, timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = ""
            for line in r.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.events.append((kind, line[6:]))

    def frames(self) -> list[dict[str, Any]]:
        return [json.loads(d) for k, d in list(self.events) if k == "frame"]


def admin(c: Croupier) -> str:
    return f"http://127.0.0.1:{c.balancer.admin_port}"


def test_ten_viewers_get_the_same_frames_built_once_a_tick(lb):
    viewers = [Viewer(admin(lb) + "/api/v1/events") for _ in range(10)]
    try:
        wait_until(lambda: all(len(v.frames()) >= 2 for v in viewers), timeout=10,
                   message="every viewer's frames")
        assert all(v.events[0][0] == "hello" for v in viewers)
        dashboard = lb.balancer._dashboard
        built = lb.state(lambda: dashboard.frames)
        wait_until(lambda: all(len(v.frames()) >= 5 for v in viewers), timeout=10,
                   message="three more frames")
        more = lb.state(lambda: dashboard.frames) - built
        assert 3 <= more <= 9       # once a tick: once a viewer would be 30 or more
        assert lb.state(lambda: dashboard.viewers) == 10
        # The frames of one tick are one string, sent to all.
        stamps = [{f["time"] for f in v.frames()} for v in viewers]
        assert len(set.intersection(*stamps)) >= 3
    finally:
        for v in viewers:
            v.stop.set()
    wait_until(lambda: lb.state(lambda: lb.balancer._dashboard.viewers) == 0, timeout=15,
               message="the viewers gone")


def test_frames_carry_each_member_s_rate_status_shares_and_percentiles(lb, backends):
    with httpx.Client() as client:
        for _ in range(40):
            client.get(lb.url("/"))
        for _ in range(20):
            client.get(lb.url("/status/503"))
    viewer = Viewer(admin(lb) + "/api/v1/events")
    try:
        def figures() -> list[dict[str, Any]]:
            frames = viewer.frames()
            return frames[-1]["pools"][0]["members"] if frames else []
        wait_until(lambda: any(m["rps"] > 0 for m in figures()), timeout=10,
                   message="a rate in a frame")
        members = figures()
        assert {m["name"] for m in members} == {b.address for b in backends[:2]}
        for m in members:
            assert m["p50_ms"] is not None and m["p99_ms"] >= m["p50_ms"]
            assert m["key"] == f"app/{m['name']}" and "history" not in m
        # 20 of the 60 answered 503 (how they split between the two depends on ejections).
        share = sum(m["rps"] * m["errors"].get("5xx", 0) for m in members) / sum(
            m["rps"] for m in members)
        assert abs(share - 1 / 3) < 0.01, members
        hello = json.loads(viewer.events[0][1])
        assert hello["spark_seconds"] == 300 and set(hello["history"]) == {
            m["key"] for m in members} | {"app/"}          # and the pool's own answers
    finally:
        viewer.stop.set()


def test_a_pool_answering_with_no_member_shows_it(lb, backends, tmp_path: Path):
    token = (tmp_path / "admin.token").read_text().strip()
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}) as api:
        for b in backends[:2]:
            r = api.put(f"{admin(lb)}/api/v1/targets/app/{b.address}/state",
                        json={"state": "maint"})
            assert r.status_code == 200, r.text
    with httpx.Client() as client:
        assert {client.get(lb.url("/")).status_code for _ in range(30)} == {503}
    viewer = Viewer(admin(lb) + "/api/v1/events")
    try:
        def unserved() -> dict[str, Any]:
            frames = viewer.frames()
            return frames[-1]["pools"][0]["unserved"] if frames else {"rps": 0}
        wait_until(lambda: unserved()["rps"] > 0, timeout=10, message="the pool's 503s")
        assert unserved()["errors"] == {"5xx": 1.0}
    finally:
        viewer.stop.set()
