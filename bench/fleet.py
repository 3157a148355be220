"""A fleet's figures (issue 21): how long a drain set on one instance takes to reach the others,
and what a [cluster] costs the data plane.

    .venv/bin/python bench/fleet.py [--changes 100] [--rounds 3] [--duration 5]

It starts a real etcd (Debian's etcd-server) and three `croupier run` instances (one process
each, `workers = 1`) sharing one prefix, in front of one small HTTP member, all on 127.0.0.1.
1. Propagation: `--changes` times, a drain (then a ready) is PUT on instance A's admin API and
   instances B and C are polled (their own admin API, each on a thread of its own) until they
   show it: the time from the PUT sent to each seeing it, p50 and p99, and from A's answer.
2. Cost: the `small` case of `make bench` (wrk, 50 keep-alive connections, GET /) against one
   instance with [cluster] and one without, in alternation, `--rounds` rounds each: req/s and
   CPU per request (user + kernel), side by side.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import cpu_seconds as cpu
from common import free_port, wait_for

HERE = Path(__file__).parent
CROUPIER = str(Path(sys.executable).parent / "croupier")





class Instance:
    def __init__(self, home: Path, name: str, member_port: int, etcd: str | None,
                 prefix: str) -> None:
        home.mkdir()
        self.port, self.admin_port = free_port(), free_port()
        cluster = (f'\n[cluster]\netcd = ["{etcd}"]\nprefix = "{prefix}"\ninstance = "{name}"\n'
                   if etcd else "")
        (home / "croupier.toml").write_text(f"""workers = 1
[admin]
listen = "127.0.0.1:{self.admin_port}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{self.port}"
pool = "app"
keepalive_timeout = "300s"
[[pools]]
name = "app"
members = ["127.0.0.1:{member_port}"]
{cluster}""")
        self.member = f"app/127.0.0.1:{member_port}"
        self.proc = subprocess.Popen([CROUPIER, "run", "-c", str(home / "croupier.toml"),
                                      "--log-level", "error"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: (home / "admin.token").exists(), what=f"{name}'s token")
        token = (home / "admin.token").read_text().strip()
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.admin_port}",
                                headers={"Authorization": f"Bearer {token}"}, timeout=10)
        wait_for(lambda: self.api.get("/healthz").status_code == 200, what=f"{name}")
        if etcd:
            wait_for(lambda: self.api.get("/api/v1/fleet").json()["connected"],
                     what=f"{name} to reach etcd")

    def admin_state(self) -> str:
        return str(self.api.get(f"/api/v1/targets/{self.member}").json()
                   ["members"][0]["admin_state"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()



def small(instance: Instance, duration: float) -> tuple[float, float]:
    """req/s and CPU microseconds a request of `instance` under wrk."""
    before = cpu(instance.proc.pid)
    out = subprocess.run(["wrk", "-t1", "-c50", f"-d{duration:g}s",
                          f"http://127.0.0.1:{instance.port}/"],
                         capture_output=True, text=True, check=True).stdout
    used = cpu(instance.proc.pid) - before
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))         # type: ignore[union-attr]
    return rps, used / total * 1e6


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--changes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5)
    args = ap.parse_args()
    for tool in ("etcd", "wrk"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed: bash tests/install.sh and "
                             f"bash bench/install.sh")
    tmp = Path(tempfile.mkdtemp(prefix="croupier-fleet-"))
    procs: list[subprocess.Popen[bytes]] = []
    instances: list[Instance] = []
    try:
        client_port, peer_port = free_port(), free_port()
        etcd = f"http://127.0.0.1:{client_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        procs.append(subprocess.Popen(
            ["etcd", "--name", "bench", "--data-dir", str(tmp / "etcd"),
             "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"bench={peer}", "--log-level", "error"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: httpx.get(etcd + "/health").json()["health"] == "true", what="etcd")
        member_port = free_port()
        procs.append(subprocess.Popen([sys.executable, str(HERE / "member.py"), str(member_port)],
                                      stdout=subprocess.DEVNULL))
        wait_for(lambda: socket.create_connection(("127.0.0.1", member_port), 0.2).close()
                 is None, what="the member")
        a, b, c = (Instance(tmp / n, n, member_port, etcd, "/bench")
                   for n in ("lb-a", "lb-b", "lb-c"))
        instances += [a, b, c]

        from_put: list[float] = []
        from_answer: list[float] = []
        for i in range(args.changes):
            state = "drain" if i % 2 == 0 else "ready"
            seen: dict[str, float] = {}

            def watch(inst: Instance, name: str, state: str = state,
                      seen: dict[str, float] = seen) -> None:
                while inst.admin_state() != state:
                    pass
                seen[name] = time.perf_counter()
            threads = [threading.Thread(target=watch, args=(x, n)) for x, n in
                       ((b, "b"), (c, "c"))]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            r = a.api.put(f"/api/v1/targets/{a.member}/state", json={"state": state})
            answered = time.perf_counter()
            assert r.status_code == 200, r.text
            for t in threads:
                t.join(30)
            for name in ("b", "c"):
                from_put.append((seen[name] - t0) * 1000)
                from_answer.append((seen[name] - answered) * 1000)
        print(f"propagation over {args.changes} changes x 2 instances (ms): from the PUT on A "
              f"to B and C showing it: p50 {pct(from_put, 0.5):.1f}, p99 "
              f"{pct(from_put, 0.99):.1f}, max {max(from_put):.1f}; from A's answer: p50 "
              f"{pct(from_answer, 0.5):.1f}, p99 {pct(from_answer, 0.99):.1f} (negative: "
              f"before A answered)")

        alone = Instance(tmp / "alone", "alone", member_port, None, "")
        instances.append(alone)
        results: dict[str, list[tuple[float, float]]] = {"with": [], "without": []}
        for _ in range(args.rounds):
            results["with"].append(small(a, args.duration))
            results["without"].append(small(alone, args.duration))
        for key, rows in results.items():
            rps = statistics.median(r for r, _ in rows)
            us = statistics.median(u for _, u in rows)
            print(f"small, {key} [cluster]: {rps:,.0f} req/s, {us:.2f} us CPU a request "
                  f"(rounds: " + ", ".join(f"{r:,.0f}" for r, _ in rows) + ")")
        ratio = statistics.median(w[0] / wo[0] for w, wo in
                                  zip(results["with"], results["without"], strict=True))
        print(f"with / without, by round: {ratio:.3f}x")
    finally:
        for inst in instances:
            inst.stop()
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
