"""The access log of `croupier run` with two workers: whole lines, one a request, none lost
across a logrotate, and a reader that does not keep up costs lines, never traffic."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import httpx
from helpers import CROUPIER, Backend, Load, Running, free_port, wait_until, write_config


def _start(tmp_path: Path, members: list[str], log: str) -> tuple[Path, int, Running]:
    port, admin = free_port(), free_port()
    path = write_config(tmp_path, members, port=port, admin_port=admin,
                        top=f'workers = 2\n[access_log]\npath = "{log}"\nformat = "json"\n')
    return path, admin, Running(path, port)


def _lines(*files: Path) -> list[str]:
    return [line for f in files if f.exists() for line in f.read_text().splitlines()]


def _metric(admin: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, name
    return float(m.group(1))


def test_two_workers_write_whole_lines_and_a_logrotate_loses_none(backend_loop, tmp_path):
    backends = [Backend(backend_loop, n) for n in ("a", "b")]
    log = tmp_path / "access.log"
    path, admin, running = _start(tmp_path, [b.address for b in backends], str(log))
    try:
        load = Load(running.url("/x"), clients=8, limit=30)
        wait_until(lambda: load.total() > 600, timeout=30, message="load")
        # logrotate: move the file, then tell croupier (the CLI; SIGUSR1 does the same)
        os.rename(log, tmp_path / "access.log.1")
        r = subprocess.run([CROUPIER, "reopen-logs", "-c", str(path)], capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0 and "1 file(s)" in r.stdout, r.stdout + r.stderr
        wait_until(log.exists, message="a new access log")
        served = load.total()
        wait_until(lambda: load.total() > served + 600, timeout=30, message="more load")
        load.stop()
        assert not load.failed, load.failed[:3]
        files = (tmp_path / "access.log.1", log)
        wait_until(lambda: len(_lines(*files)) >= load.ok, message="every line flushed")
        lines = [json.loads(line) for line in _lines(*files)]    # each parses: none torn
        assert len(lines) == load.ok
        assert {line["target"] for line in lines} == {"/x"}
        assert {line["member"] for line in lines} == {b.address for b in backends}
        assert len(_lines(tmp_path / "access.log.1")) > 0 and len(_lines(log)) > 0
        wait_until(lambda: _metric(admin, "croupier_access_log_lines_total") == load.ok,
                   message="the workers' counts summed")

        def answered_2xx() -> float:
            text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=10).text
            return sum(float(v) for v in re.findall(
                r'^croupier_responses_total\{code="2xx",[^}]*\} (\S+)$', text, re.M))
        wait_until(lambda: answered_2xx() == load.ok, message="2xx summed over the workers")
    finally:
        running.stop()


def test_a_stdout_pipe_nobody_reads_drops_lines_not_traffic(backend_loop, tmp_path):
    backend = Backend(backend_loop, "a")
    # croupier's stdout is a pipe this test does not read until croupier stops: it fills.
    _, admin, running = _start(tmp_path, [backend.address], "-")
    try:
        load = Load(running.url("/x"), clients=8, limit=30)
        wait_until(lambda: _metric(admin, "croupier_access_log_dropped_total") > 0,
                   timeout=30, message="lines dropped")
        served = load.total()
        wait_until(lambda: load.total() > served + 300, timeout=30,
                   message="traffic going on while lines are dropped")
        load.stop()
        assert not load.failed, load.failed[:3]
    finally:
        code, out = running.stop()
    assert code == 0
    logged = [line for line in out.splitlines() if line.startswith('{"time"')]
    assert all(json.loads(line)["target"] == "/x" for line in logged)   # whole lines only
    assert 0 < len(logged) < load.ok
